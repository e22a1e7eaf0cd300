"""LLaVA (LLaVA paper §4.2, LLaVA-1.5) on the demo's task, for `lav2 demo --systems lav2,llava,owl`: its two
stages over the demo's frozen parts (the prior LLaMA of `demo_out/prior`, the contrastive CLIP tower of
`demo_out/base`), the same data as `configs/demo.py`.

  stage1  llava-stage1: the mlp2x_gelu projector alone, on the caption data (`plain` template: image, caption)
  stage2  llava-stage2: projector + every LLM weight (full fine-tune), on the instruction data (visual questions
          and text-only instructions, `vicuna_v1` template); starts from stage 1's export

`lav2 demo --systems ...` writes `demo_out/systems/llava/init` (prior LLaMA + the demo's CLIP tower, projector at
its seeded init) and runs both stages; by hand, after a demo:

  lav2 train --config configs/demo_llava.py:stage1 --workdir demo_out/systems/llava/stage1/train

The LLaVA-1.5 optimizer (AdamW β (0.9, 0.999), no weight decay, warm-up 3 % then cosine, the patch tokens of
CLIP's penultimate block); the learning rates are the demo's scale, not the published 1e-3 / 2e-5 (those are for
pre-trained 7B weights and ~5k steps: they move a tiny model nowhere in a few hundred steps). Steps and batches
are set by `lav2 demo --systems` to the LLaMA-Adapter V2 run's (the same data budget).
"""

from lav2_jax.demo.systems import stage_base_config
from lav2_jax.systems.llava.train_config import add_llava_fields, llava_group

IMAGE_TOKEN_ID = -200  # the original repo's IMAGE_TOKEN_INDEX: a placeholder outside any vocabulary
STEPS = 300
LR = {"stage1": (1e-2, 1e-2), "stage2": (1e-2, 1e-3)}  # (projector, language model)


def get_config(stage: str = "stage2"):
    c = stage_base_config("llava", stage, STEPS)
    first = stage == "stage1"
    add_llava_fields(c, image_token_id=IMAGE_TOKEN_ID, template="plain" if first else "vicuna_v1",
                     image_aspect="pad")
    c.param_recipe, c.recipe = ("llava-stage1", "pretrain") if first else ("llava-stage2", "full")
    c.optim.caption = llava_group(LR[stage][0], STEPS)
    c.optim.instruction = llava_group(LR[stage][1], STEPS)
    return c
