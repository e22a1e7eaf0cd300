"""LLaVA's training recipes (LLaVA paper §4.2 "two-stage instruction-tuning", LLaVA-1.5) as named rules
(`lav2_jax.core.registry.Recipe`: ordered `(regex, group)`, first match wins, unmatched paths frozen).

The projector `mm_projector/...` is the `caption` group (the stage-1 group), the language model the `instruction`
group, so the two keep separate learning rates; the CLIP tower is always frozen:

  llava-stage1   caption: the projector only; every LLM weight frozen
  llava-stage2   caption: the projector; instruction: every LLM weight (embeddings, all kernels, norms, head: a
                 full fine-tune, its optimizer state FSDP-sharded like the weights; `full_finetune=True`)
  llava-lora     caption: the projector; instruction: LoRA on the seven LLM linears; base weights frozen
"""

from __future__ import annotations

from lav2_jax.core.param_groups import C, F, I, LLM_PATTERN, LORA_PATTERN, PROMPT_GATE_PATTERN
from lav2_jax.core.recipe import Recipe

PROJECTOR = r"^mm_projector/"

RECIPES = (
    Recipe("llava-stage1", "llava", ((PROJECTOR, C),), "stage 1 (feature alignment): the projector"),
    Recipe("llava-stage2", "llava", (
        (PROJECTOR, C),
        (PROMPT_GATE_PATTERN, F),  # LLaMA-Adapter's prompt gates are no LLaMA weight
        (LLM_PATTERN, I)),
           "stage 2 (instruction tuning): the projector and the whole language model", full_finetune=True),
    Recipe("llava-lora", "llava", ((PROJECTOR, C), (LORA_PATTERN, I)),
           "LLaVA-1.5 LoRA: the projector and LoRA on the language model"),
)
