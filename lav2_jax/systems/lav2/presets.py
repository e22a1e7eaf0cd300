"""LLaMA-Adapter V2's adapter presets (paper §4.1–4.3 and the released checkpoints); `lav2_jax.core.presets.
get_adapter(name)` finds them through the registry (`System.adapter_presets`)."""

from __future__ import annotations

from lav2_jax.core.config import AdapterConfig

ADAPTER_PRESETS: dict[str, AdapterConfig] = {
    # Paper §4.1-4.3: output-side bias+scale on all linears, norms, 10 adapter prompts in the last 31 layers,
    # 20 visual prompts gated into the first layer (early fusion), a one-block connector (~15.1 M trainable at 7B).
    "paper": AdapterConfig(linear_kind="output", norm_tuning=True, prompt_len=10, prompt_layers=31,
                           visual_fusion="early", early_layers=1, query_len=20, v_depth=1),
    # Released BIAS-7B: bias on wq wo w1 w2 w3, norms, prompts in 31 layers with visual tokens added to them.
    "release-bias": AdapterConfig(linear_kind="bias_qo_ffn", norm_tuning=True, prompt_len=10, prompt_layers=31,
                                  visual_fusion="official", query_len=10, v_depth=8),
    # Released LORA-BIAS-7B: as above plus LoRA (rank 16, factor 1) on all seven linears and the scalar new_gate.
    "release-lora-bias": AdapterConfig(linear_kind="bias_qo_ffn", norm_tuning=True, lora_rank=16, new_gate=True,
                                       prompt_len=10, prompt_layers=31, visual_fusion="official", query_len=10,
                                       v_depth=8),
    # Released 65B chat model: input-side scale + bias on all linears and the norms; no prompts, no vision.
    "chat65b": AdapterConfig(linear_kind="input", norm_tuning=True, prompt_len=0, prompt_layers=0,
                             visual_fusion="none"),
}

# `lav2 info`: the recipes counted on each preset (the vision preset of every visual one is `vit-l-14`).
PRESET_RECIPES = {
    "paper": ("paper-joint",),
    "release-bias": ("release-pretrain", "release-finetune"),
    "release-lora-bias": ("release-pretrain", "release-finetune"),
    "chat65b": ("chat65b",),
}
