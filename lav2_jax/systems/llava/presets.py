"""LLaVA's adapter presets (LLaVA paper §4; LLaVA-1.5): CLIP layer −2 patch features through the projector,
spliced at `<image>` (id 32000), over the language-only `none` adapter (`lav2_jax.core.presets`).

  llava          v1: 224 px, 256 tokens, `linear` projector
  llava15        1.5: 336 px, 576 tokens, `mlp2x_gelu`, mean-colour square pad
  llava15-lora   1.5 with LoRA (r 128, alpha 256, dropout 0.05 on all seven linears)
"""

from __future__ import annotations

from lav2_jax.core.config import AdapterConfig, SpliceConfig
from lav2_jax.core.presets import GENERIC_ADAPTER_PRESETS

_NONE = GENERIC_ADAPTER_PRESETS["none"]
ADAPTER_PRESETS: dict[str, AdapterConfig] = {
    "llava": _NONE.replace(splice=SpliceConfig(system="llava", projector="linear", n_tokens=256)),
    "llava15": _NONE.replace(splice=SpliceConfig(system="llava", projector="mlp2x_gelu", n_tokens=576,
                                                 image_aspect_ratio="pad")),
}
ADAPTER_PRESETS["llava15-lora"] = ADAPTER_PRESETS["llava15"].replace(lora_rank=128, lora_alpha=256.0,
                                                                     lora_dropout=0.05)

# `lav2 info`: the Hugging Face CLIPVisionModel tower of each preset, and the recipes counted on it.
# LLaVA-1.5 first: `lav2 info --system llava` reports the base counts of the first preset.
PRESET_VISIONS = {"llava15": "clip-l-14-336-hf", "llava15-lora": "clip-l-14-336-hf", "llava": "clip-l-14-hf"}
PRESET_RECIPES = {
    "llava15": ("llava-stage1", "llava-stage2"),
    "llava15-lora": ("llava-lora",),
    "llava": ("llava-stage1", "llava-stage2"),
}
