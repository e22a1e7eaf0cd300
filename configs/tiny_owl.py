"""mPLUG-Owl on the tiny test model with synthetic data (5 visual tokens per 32 px image: 4 abstractor queries +
vit_eos, spliced in place); stage 1 by default (vision model + abstractor train, LLM frozen); runs in seconds on
a CPU.

`lav2 train --config configs/tiny_owl.py --workdir /tmp/tiny_owl`

Stage 2 (LoRA on wq/wv): `--config.param_recipe=owl-stage2 --config.recipe=full --config.model.lora.rank=4
--config.model.lora.alpha=16` (add the abstractor with `owl-stage2-abstractor`).
"""

from lav2_jax.train.defaults import base_config, group
from lav2_jax.systems.owl.train_config import add_owl_fields


def get_config():
    c = base_config()
    c.model.update(preset="tiny", vision="tiny", output_scale=25.0)
    add_owl_fields(c, num_queries=4, layers=2, heads=4, mlp_dim=48, image_token_id=-1)
    c.param_recipe, c.recipe = "owl-stage1", "full"
    c.total_steps = 40
    c.batch.update(train=8)
    c.optim.caption = group(1e-2, 0.0, warmup_steps=2, scale_lr_by_batch=False)
    c.optim.instruction = group(1e-2, 0.0, warmup_steps=2, scale_lr_by_batch=False)
    c.optim.clip_norm = 1.0
    c.loss.vocab_chunk = 64
    c.data.update(source="synthetic", seq_len=64, num_examples=8, answer_vocab=8)
    c.checkpoint.update(every_steps=10, keep=2)
    c.log.update(every_steps=5, peak_flops=-1.0)
    return c
