"""mPLUG-Owl (mPLUG-Owl paper §3.2; docs/design.md §5.4) on the demo's task, for `lav2 demo --systems
lav2,llava,owl`: its two stages over the demo's frozen parts, the same data as `configs/demo.py`.

  stage1  owl-stage1: the vision model (initialised from the demo's contrastive CLIP tower, its q|k|v rows
          re-ordered per head) AND the visual abstractor train on the caption data; the LLM (`demo_out/prior`)
          is frozen
  stage2  owl-stage2: LoRA r 8, alpha 32, dropout 0.05 on the LLM's wq/wv (the released script), vision model
          and abstractor frozen, on the instruction data (visual questions and text-only instructions mixed in
          one stream, as the release mixes its text-only data); starts from stage 1's export

`lav2 demo --systems ...` writes `demo_out/systems/owl/init` (prior LLaMA + the converted vision model +
a seeded abstractor) and runs both stages; by hand, after a demo:

  lav2 train --config configs/demo_owl.py:stage1 --workdir demo_out/systems/owl/stage1/train

The release's optimizer shape (AdamW β (0.9, 0.999), warm-up, clip 1.0; stage 2 weight decay 1e-4 and the
released script's linear decay; stage 1, whose code is unreleased, the project's cosine); the abstractor
is shrunk to the tiny vision width (8 queries, 2 layers, 4 heads), and the learning rates are the demo's scale,
not the published 1e-4 / 2e-5 (see configs/demo_llava.py). The release's training augmentation (random resized
crop, scale 0.5–1, and a horizontal flip; `data.augment`, on in configs/owl_stage*_7b.py) is turned OFF here: the
demo's captions and position questions name the half the shapes are in ("two red circles on the left"), which a
flip makes wrong half of the time, and a crop can cut a counted shape out of the picture; so Owl trains on the
evaluation resize (LLaVA trains without augmentation too; LLaMA-Adapter V2 with a 0.9–1 crop, no flip). Steps
and batches are set by
`lav2 demo --systems` to the LLaMA-Adapter V2 run's (the same data budget).
"""

from lav2_jax.demo.systems import stage_base_config
from lav2_jax.train.defaults import group
from lav2_jax.systems.owl.train_config import add_owl_fields

STEPS = 300
WARMUP = 10
LR = {"stage1": 5e-3, "stage2": 1e-2}
WEIGHT_DECAY = {"stage1": 0.0, "stage2": 1e-4}


def get_config(stage: str = "stage2"):
    c = stage_base_config("owl", stage, STEPS)
    first = stage == "stage1"
    add_owl_fields(c, num_queries=8, layers=2, heads=4, mlp_dim=64,
                   **({} if first else dict(lora_rank=8, lora_alpha=32.0, lora_dropout=0.05,
                                            lora_targets=("wq", "wv"))))
    c.data.augment = False  # the demo's left/right labels do not survive a horizontal flip (module docstring)
    c.param_recipe, c.recipe = ("owl-stage1", "pretrain") if first else ("owl-stage2", "full")
    for g in ("caption", "instruction"):
        c.optim[g] = group(LR[stage], WEIGHT_DECAY[stage], warmup_steps=WARMUP, scale_lr_by_batch=False)
        c.optim[g].b2 = 0.999
        c.optim[g].decay = "cosine" if first else "linear"  # stage 2: the released script's linear decay
    return c
