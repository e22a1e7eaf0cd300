"""mPLUG-Owl stage 1 (pre-training, mPLUG-Owl paper §3.2; docs/design.md §5.4) on LLaMA-7B: the vision model
(ViT-L/14, 224 px, initialised from CLIP) AND the visual abstractor train on image–text pairs, the LLM is frozen.

  lav2 convert meta --ckpt-dir /ckpt/llama/7B --out /ckpt/llama-7b
  lav2 convert clip --clip /ckpt/ViT-L-14.pt --layout owl --out /ckpt/owl-vit
  lav2 train --config configs/owl_stage1_7b.py --workdir DIR --config.model.base_checkpoint=/ckpt/llama-7b \
      --config.model.vision_checkpoint=/ckpt/owl-vit --config.data.tokenizer=/ckpt/llama-7b/tokenizer \
      --config.data.caption.path=/data/captions

Published: AdamW, lr 1e-4, 50k steps, ~2.1M tokens per batch (~104B tokens). The paper gives the batch in tokens:
8192 rows × 256 positions (65 visual tokens + caption) = 2.1M token slots. Not published, our choices: warm-up
1000 steps, then the project's cosine decay; weight decay 0.05; betas (0.9, 0.999). Vision weights are stored in
bf16 and trained through float32 master copies.
"""

from lav2_jax.train.defaults import group, pod_config
from lav2_jax.systems.owl.train_config import add_owl_fields


def get_config():
    c = pod_config("llama1-7b", "none", "vit-l-14", "owl-stage1", "pretrain", 50000)
    add_owl_fields(c)
    c.batch.caption = 8192
    c.optim.caption = group(1e-4, 0.05, warmup_steps=1000, scale_lr_by_batch=False)
    c.optim.caption.b2 = 0.999
    c.optim.accum_steps = 16  # on 16 chips: 32 rows of 256 per chip and micro-batch (fits a v5e's 16 GiB)
    c.data.caption.max_len = 256
    return c
