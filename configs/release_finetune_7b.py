"""The released stage 2 ("finetune", docs/design.md §6, §3.3) on LLaMA-7B with the released BIAS adapter: instruction data
trains the LLaMA norms and biases. blr 1e-3, weight decay 0.02, max 512 tokens, batch 32, lr = blr · batch / 256.

  lav2 train --config configs/release_finetune_7b.py --workdir DIR --config.model.base_checkpoint=/ckpt/stage1 \
      --config.data.tokenizer=/ckpt/llama-7b/tokenizer --config.data.instruction.path=/data/alpaca

`base_checkpoint` should hold the stage-1 adapter (a `save_pretrained` / `save_adapter` checkpoint whose `base` is
LLaMA-7B): every leaf it has is loaded, the rest start at identity. Warm-up is in steps (the release counts epochs).
"""

from lav2_jax.train.defaults import group, pod_config


def get_config():
    c = pod_config("llama1-7b", "release-bias", "vit-l-14", "release-finetune", "finetune", 20000)
    c.batch.instruction = 32
    c.optim.instruction = group(1e-3, 0.02, warmup_steps=1000)
    c.data.instruction.max_len = 512
    c.data.packing = True  # several samples per row, attention and loss kept per sample (lav2_jax.data.packing)
    return c
