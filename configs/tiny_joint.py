"""Paper joint training (§4.2) on the tiny test model with synthetic data: runs in about a minute on a laptop CPU.

`lav2 train --config configs/tiny_joint.py --workdir /tmp/tiny_joint`
"""

from lav2_jax.train.defaults import base_config, group


def get_config():
    c = base_config()
    c.model.update(preset="tiny", adapter="paper", vision="tiny", tiny_adapter=True, output_scale=25.0)
    c.param_recipe, c.recipe = "paper-joint", "joint"
    c.total_steps = 40
    c.batch.update(caption=8, instruction=8)
    c.optim.caption = group(0.1, 0.02, warmup_steps=2, scale_lr_by_batch=False)
    c.optim.instruction = group(0.1, 0.02, warmup_steps=2, scale_lr_by_batch=False)
    c.loss.vocab_chunk = 64
    c.data.update(source="synthetic", seq_len=32, num_examples=8, answer_vocab=8)
    c.checkpoint.update(every_steps=10, keep=2)
    c.log.update(every_steps=5, peak_flops=-1.0)
    return c
