"""LLaVA stage 2 (full fine-tune: projector + every LLM weight, CLIP frozen) on the tiny test model with synthetic
data (16 visual tokens per 32 px image spliced at the front of each prompt); runs in seconds on a CPU.

`lav2 train --config configs/tiny_llava.py --workdir /tmp/tiny_llava`

Other recipes of the same model: `--config.param_recipe=llava-stage1` (projector only), or LoRA:
`--config.param_recipe=llava-lora --config.model.lora.rank=4 --config.model.lora.alpha=8`.
"""

from lav2_jax.train.defaults import base_config, group
from lav2_jax.systems.llava.train_config import add_llava_fields


def get_config():
    c = base_config()
    c.model.update(preset="tiny", vision="tiny", output_scale=25.0)
    add_llava_fields(c, image_token_id=256, template="vicuna_v1", image_aspect="pad")  # 256: outside the vocab
    c.param_recipe, c.recipe = "llava-stage2", "full"
    c.total_steps = 40
    c.batch.update(train=8)
    c.optim.caption = group(1e-2, 0.0, warmup_steps=2, scale_lr_by_batch=False)
    c.optim.instruction = group(1e-2, 0.0, warmup_steps=2, scale_lr_by_batch=False)
    for g in (c.optim.caption, c.optim.instruction):
        g.b2 = 0.999
    c.optim.clip_norm = 1.0
    c.loss.vocab_chunk = 64
    c.data.update(source="synthetic", seq_len=64, num_examples=8, answer_vocab=8)
    c.checkpoint.update(every_steps=10, keep=2)
    c.log.update(every_steps=5, peak_flops=-1.0)
    return c
