"""mPLUG-Owl's training recipes (mPLUG-Owl paper §3.2 "Training Scheme"; `lav2_jax.systems.owl.visual`) as named
rules (`lav2_jax.core.registry.Recipe`: ordered `(regex, group)`, first match wins, unmatched paths frozen):

  owl-stage1             caption: the vision model `owl_vision/...` AND the abstractor `abstractor/...` (the vision
                         tower trains here); the LLM frozen
  owl-stage2             instruction: LoRA on the LLM (the released script: r 8, alpha 32, q/v by default, the
                         adapter config's `lora_targets`); vision model and abstractor frozen
  owl-stage2-abstractor  as owl-stage2, plus caption: the abstractor (the paper's stage 2)
"""

from __future__ import annotations

from lav2_jax.core.param_groups import C, I, LORA_PATTERN
from lav2_jax.core.recipe import Recipe

VISION = r"^owl_vision/"
ABSTRACTOR = r"^abstractor/"

RECIPES = (
    Recipe("owl-stage1", "owl", ((VISION, C), (ABSTRACTOR, C)), "stage 1: the vision model and the abstractor"),
    Recipe("owl-stage2", "owl", ((LORA_PATTERN, I),), "stage 2 (released script): LoRA on the language model"),
    Recipe("owl-stage2-abstractor", "owl", ((ABSTRACTOR, C), (LORA_PATTERN, I)),
           "stage 2 (paper): the abstractor and LoRA on the language model"),
)
