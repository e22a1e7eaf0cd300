"""LLaVA-1.5 stage 2 with LoRA (`scripts/v1_5/finetune_lora.sh`): LoRA r 128, alpha 256 (scale 2), dropout 0.05 on
all seven Vicuna-7B linears (q k v o gate up down; not the head) at lr 2e-4, the projector fully trainable at its own
`mm_projector_lr` 2e-5; base weights and CLIP frozen. Data, template and images as stage 2.

  lav2 train --config configs/llava15_lora_7b.py --workdir runs/llava15_lora \
      --config.model.base_checkpoint=ckpt/llava15-stage1 --config.data.tokenizer=ckpt/llava15-stage1/tokenizer \
      --config.data.train.path=data/mix665k

Published hyper-parameters (docs/design.md §4.4): global batch 128, 1 epoch (5197 steps), warm-up ratio 0.03,
cosine, weight decay 0, max length 2048, AdamW β 0.9/0.999, clip 1.0, bf16; `group_by_modality_length` as in stage 2
(each global batch all-image or all-text, `lav2_jax.data.modality_groups`).
"""

from lav2_jax.train.defaults import pod_config
from lav2_jax.systems.llava.train_config import add_llava_fields, llava_group

SAMPLES, BATCH = 665298, 128


def get_config():
    steps = SAMPLES // BATCH
    c = pod_config("llama2-7b", "none", "vit-l-14-336", "llava-lora", "full", steps)
    add_llava_fields(c, projector="mlp2x_gelu", template="vicuna_v1", image_aspect="pad", lora_rank=128,
                     lora_alpha=256.0, lora_dropout=0.05, group_by_modality_length=True)
    c.batch.train = BATCH
    c.optim.caption = llava_group(2e-5, steps)       # the projector (mm_projector_lr)
    c.optim.instruction = llava_group(2e-4, steps)   # LoRA
    c.optim.clip_norm = 1.0
    c.data.train.max_len = 2048
    c.log.every_steps = 10
    return c
