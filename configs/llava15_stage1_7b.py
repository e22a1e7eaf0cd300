"""LLaVA-1.5 stage 1 (feature alignment, LLaVA paper §4.2; `scripts/v1_5/pretrain.sh`): LCS-558K image–caption
pairs with the `plain` template, only the `mlp2x_gelu` projector trains; Vicuna-7B v1.5 and CLIP ViT-L/14-336
(576 visual tokens per image, hidden state −2, CLS dropped) stay frozen.

The base is Vicuna-7B v1.5 and the separately stored CLIP, combined into one checkpoint (hard links, no copy of
the weights); it holds no projector, so the run initialises a fresh one (like `nn.Linear`), and reads the splice
(projector, feature layer, `patch`, placeholder id) from this config and the token count from the tower:

  lav2 convert hf --hf-dir vicuna-7b-v1.5 --out ckpt/vicuna-7b
  lav2 convert clip --clip clip-vit-large-patch14-336 --out ckpt/clip-336
  lav2 convert llava-base --llm ckpt/vicuna-7b --clip ckpt/clip-336 --out ckpt/vicuna-7b-clip336
  lav2 data build --kind conversation --src blip_laion_cc_sbu_558k.json --image-root LCS-558K/images \
      --out data/lcs558k
  lav2 train --config configs/llava15_stage1_7b.py --workdir runs/llava15_stage1 \
      --config.model.base_checkpoint=ckpt/vicuna-7b-clip336 --config.data.tokenizer=ckpt/vicuna-7b-clip336/tokenizer \
      --config.data.train.path=data/lcs558k
  lav2 export trained --workdir runs/llava15_stage1 --out ckpt/llava15-stage1   # projector only, over the base

Published hyper-parameters (docs/design.md §4.4): global batch 256, lr 1e-3, 1 epoch (558,128 samples → 2180
steps), warm-up ratio 0.03 (⌈0.03 · 2180⌉ = 66 steps), cosine to 0, weight decay 0, max length 2048 (image tokens
included), AdamW with the Hugging Face Trainer's defaults (β 0.9/0.999, ε 1e-8, clip 1.0), bf16, gradient
checkpointing; stage 1 uses the plain CLIP preprocessing (`square`). ZeRO-2 is replaced by FSDP; every sample has
an image, so there is no modality grouping (stage 2 has it).
"""

from lav2_jax.train.defaults import pod_config
from lav2_jax.systems.llava.train_config import add_llava_fields, llava_group

SAMPLES, BATCH = 558128, 256


def get_config():
    steps = SAMPLES // BATCH
    c = pod_config("llama2-7b", "none", "vit-l-14-336", "llava-stage1", "full", steps)
    add_llava_fields(c, projector="mlp2x_gelu", template="plain", image_aspect="square")
    c.batch.train = BATCH
    c.optim.caption = llava_group(1e-3, steps)       # the projector
    c.optim.instruction = llava_group(1e-3, steps)   # (no trainable leaf in stage 1)
    c.optim.clip_norm = 1.0
    c.data.train.max_len = 2048
    c.log.every_steps = 10
    return c
