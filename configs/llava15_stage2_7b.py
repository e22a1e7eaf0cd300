"""LLaVA-1.5 stage 2 (visual instruction tuning, LLaVA paper §4.2; `scripts/v1_5/finetune.sh`): full fine-tune of
the projector and every Vicuna-7B weight on llava_v1_5_mix665k (text-only ShareGPT samples mixed in), `vicuna_v1`
template, `pad` images; CLIP frozen. Starts from the stage-1 export (which holds the trained projector).

  lav2 data build --kind conversation --src llava_v1_5_mix665k.json --image-root playground/data --out data/mix665k
  lav2 train --config configs/llava15_stage2_7b.py --workdir runs/llava15_stage2 \
      --config.model.base_checkpoint=ckpt/llava15-stage1 --config.data.tokenizer=ckpt/llava15-stage1/tokenizer \
      --config.data.train.path=data/mix665k

Published hyper-parameters (docs/design.md §4.4): global batch 128, lr 2e-5 for projector and LLM, 1 epoch
(665,298 samples → 5197 steps), warm-up ratio 0.03 (⌈0.03 · 5197⌉ = 156 steps), cosine to 0, weight decay 0,
max length 2048, AdamW β 0.9/0.999, ε 1e-8, clip 1.0, bf16, gradient checkpointing. The trainable base weights keep
float32 master copies and AdamW moments, FSDP-sharded like the weights (the original used ZeRO-3).
`group_by_modality_length` (`scripts/v1_5/finetune.sh`): each global batch of 128 is all-image or all-text-only
(ShareGPT), spread over the hosts by length (`lav2_jax.data.modality_groups`).
"""

from lav2_jax.train.defaults import pod_config
from lav2_jax.systems.llava.train_config import add_llava_fields, llava_group

SAMPLES, BATCH = 665298, 128


def get_config():
    steps = SAMPLES // BATCH
    c = pod_config("llama2-7b", "none", "vit-l-14-336", "llava-stage2", "full", steps)
    add_llava_fields(c, projector="mlp2x_gelu", template="vicuna_v1", image_aspect="pad",
                     group_by_modality_length=True)
    c.batch.train = BATCH
    c.optim.caption = llava_group(2e-5, steps)       # the projector
    c.optim.instruction = llava_group(2e-5, steps)   # every LLM weight
    c.optim.clip_norm = 1.0
    c.data.train.max_len = 2048
    c.log.every_steps = 10
    return c
