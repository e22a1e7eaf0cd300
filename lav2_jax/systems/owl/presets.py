"""mPLUG-Owl's adapter presets (mPLUG-Owl paper §3): the abstractor's 64 queries + vit_eos spliced in place at
`<image>` (ids −1), over the language-only `none` adapter (`lav2_jax.core.presets`); `owl-lora` adds the released
stage-2 LoRA (r 8, alpha 32, dropout 0.05 on wq/wv)."""

from __future__ import annotations

from lav2_jax.core.config import AbstractorConfig, AdapterConfig, SpliceConfig
from lav2_jax.core.presets import GENERIC_ADAPTER_PRESETS

ADAPTER_PRESETS: dict[str, AdapterConfig] = {
    "owl": GENERIC_ADAPTER_PRESETS["none"].replace(
        splice=SpliceConfig(system="owl", image_token_id=-1, select="all", projector="none", n_tokens=65,
                            abstractor=AbstractorConfig())),
}
ADAPTER_PRESETS["owl-lora"] = ADAPTER_PRESETS["owl"].replace(lora_rank=8, lora_alpha=32.0, lora_dropout=0.05,
                                                             lora_targets=("wq", "wv"))

# `lav2 info`: mPLUG-Owl's vision model for each preset, and the recipes counted on it.
PRESET_VISIONS = {"owl": "owl-vit-l-14", "owl-lora": "owl-vit-l-14"}
PRESET_RECIPES = {"owl": ("owl-stage1",), "owl-lora": ("owl-stage2", "owl-stage2-abstractor")}
