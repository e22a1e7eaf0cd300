"""LLaMA-Adapter V2's training recipes (paper §4.2: disjoint parameter groups) as named rules.

Each recipe is an ordered `(regex, group)` list over `/`-joined parameter paths; the first match decides and an
unmatched path is frozen (`lav2_jax.core.registry.Recipe`, engine in `lav2_jax.core.param_groups`). The norms of
these recipes are "norm tuning" (`norm_tuning=True`): frozen when the adapter sets `norm_tuning=False`.

  paper-joint       caption: connector + early visual gates; instruction: adapter prompts and their gates, norms,
                    linear biases/scales, LoRA (paper §4.2)
  release-pretrain  caption: connector (incl. visual_query), adapter prompts, all gates (released stage 1)
  release-finetune  instruction: LLaMA norms, biases (and scales), LoRA (released stage 2)
  chat65b           instruction: norms, biases, scales (released 65B chat model)
  all-adapters      instruction: every parameter that is not a frozen base weight (the CLIP / mPLUG-Owl vision
                    towers and the LLaMA kernels stay frozen): the language model's adapters here, and each
                    registered system's own modules (`System.adapter_modules`: this system's connector, LLaVA's
                    projector, mPLUG-Owl's abstractor); what a checkpoint's `adapter` item holds
                    (`lav2_jax.checkpoint.layout.ADAPTER_RECIPE`), for every system's models
"""

from __future__ import annotations

from lav2_jax.core.param_groups import C, I, LINEAR_ADAPTER_PATTERN, LORA_PATTERN, NORM_PATTERN, PROMPT_GATE_PATTERN
from lav2_jax.core.recipe import Recipe

CONNECTOR = r"^connector/"  # clip_proj, visual_query, visual blocks, visual_proj
VISUAL_GATE = r"^visual_gate$"  # early-fusion visual-prompt gates
ADAPTER_QUERY = r"^adapter_query$"  # adapter prompts

LANGUAGE_ADAPTERS = ((LORA_PATTERN, I), (NORM_PATTERN, I), (LINEAR_ADAPTER_PATTERN, I))

RECIPES = (
    Recipe("paper-joint", "lav2", ((CONNECTOR, C), (VISUAL_GATE, C), (ADAPTER_QUERY, I), (PROMPT_GATE_PATTERN, I))
           + LANGUAGE_ADAPTERS, "paper §4.2: visual parts caption, language adapters instruction", norm_tuning=True),
    Recipe("release-pretrain", "lav2", ((CONNECTOR, C), (VISUAL_GATE, C), (ADAPTER_QUERY, C),
                                        (PROMPT_GATE_PATTERN, C)),
           "released stage 1: connector, adapter prompts and all gates", norm_tuning=True),
    Recipe("release-finetune", "lav2", LANGUAGE_ADAPTERS,
           "released stage 2: norms, biases, scales, LoRA", norm_tuning=True),
    Recipe("chat65b", "lav2", ((NORM_PATTERN, I), (LINEAR_ADAPTER_PATTERN, I)),
           "released 65B chat model: norms, biases, scales", norm_tuning=True),
    Recipe("all-adapters", "lav2", ((VISUAL_GATE, I), (ADAPTER_QUERY, I), (PROMPT_GATE_PATTERN, I)) + LANGUAGE_ADAPTERS,
           "every parameter that is not a frozen base weight (an adapter checkpoint's leaves)", norm_tuning=True,
           system_modules=True),  # + each system's `adapter_modules`: LLaMA-Adapter's connector, LLaVA's projector, ...
)
