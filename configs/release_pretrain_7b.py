"""The released stage 1 ("pretrain", docs/design.md §6, §3.3) on LLaMA-7B with the released BIAS adapter: image–text pairs
train the connector, visual query, adapter prompts and all gates. blr 1e-4, weight decay 0.05, max 96 tokens,
batch 32, lr = blr · batch / 256, per-step warm-up then half-cycle cosine.

  lav2 train --config configs/release_pretrain_7b.py --workdir DIR --config.model.base_checkpoint=/ckpt/llama-7b \
      --config.data.tokenizer=/ckpt/llama-7b/tokenizer --config.data.caption.path=/data/captions

Warm-up is in steps here (the release counts epochs): adjust it to your data.
"""

from lav2_jax.train.defaults import group, pod_config


def get_config():
    c = pod_config("llama1-7b", "release-bias", "vit-l-14", "release-pretrain", "pretrain", 20000)
    c.batch.caption = 32
    c.optim.caption = group(1e-4, 0.05, warmup_steps=1000)
    c.data.caption.max_len = 96
    c.data.packing = True  # several samples per row, attention and loss kept per sample (lav2_jax.data.packing)
    return c
