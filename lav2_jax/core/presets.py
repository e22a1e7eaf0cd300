"""Named model, adapter and vision presets (docs/design.md §2–3, §9).

`get_model("llama1-7b")`, `get_adapter("paper")`, `get_vision("vit-l-14")`; `MODEL_PRESETS`, `VISION_PRESETS` and
`adapter_presets()` list the names. Adapter presets: the language-only `none` and `lora` here, every other one in
its system (`systems/<name>/presets.py`, `System.adapter_presets`).
"""

from __future__ import annotations

from lav2_jax.core import registry
from lav2_jax.core.config import AdapterConfig, ModelConfig, VisionConfig

MODEL_PRESETS: dict[str, ModelConfig] = {
    "llama1-7b": ModelConfig(dim=4096, n_layers=32, n_heads=32, norm_eps=1e-6),
    "llama1-13b": ModelConfig(dim=5120, n_layers=40, n_heads=40, norm_eps=1e-6),
    "llama1-33b": ModelConfig(dim=6656, n_layers=60, n_heads=52, norm_eps=1e-6),
    "llama1-65b": ModelConfig(dim=8192, n_layers=80, n_heads=64, norm_eps=1e-6),
    "llama2-7b": ModelConfig(dim=4096, n_layers=32, n_heads=32, norm_eps=1e-5, max_seq_len=4096),
    "llama2-13b": ModelConfig(dim=5120, n_layers=40, n_heads=40, norm_eps=1e-5, max_seq_len=4096),
    "llama2-70b": ModelConfig(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096,
                              ffn_dim_multiplier=1.3, norm_eps=1e-5, max_seq_len=4096),
    "llama3-8b": ModelConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, multiple_of=1024,
                             ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, max_seq_len=8192),
    "llama3-70b": ModelConfig(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=128256, multiple_of=4096,
                              ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, max_seq_len=8192),
    # docs/design.md §9 benchmark configurations.
    "bench-s": ModelConfig(dim=768, n_layers=12, n_heads=12, ffn_hidden_dim=2048, norm_eps=1e-6, max_seq_len=512),
    "bench-m": ModelConfig(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn_hidden_dim=5632, norm_eps=1e-6,
                           max_seq_len=512),
    # Tests: GQA (4 query heads share 2 kv heads), float32 everywhere.
    "tiny": ModelConfig(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=16, norm_eps=1e-6,
                        max_seq_len=128, weight_dtype="float32", dtype="float32"),
}

# Language-only adapters of any decoder (no visual path); the systems' own presets are `System.adapter_presets`
# (`systems/<name>/presets.py`), found by `get_adapter` through the registry.
GENERIC_ADAPTER_PRESETS: dict[str, AdapterConfig] = {
    "lora": AdapterConfig(linear_kind="none", norm_tuning=False, lora_rank=8, prompt_len=0, prompt_layers=0,
                          visual_fusion="none"),
    "none": AdapterConfig(linear_kind="none", norm_tuning=False, prompt_len=0, prompt_layers=0, visual_fusion="none"),
}

VISION_PRESETS: dict[str, VisionConfig] = {
    "vit-l-14": VisionConfig(image_size=224, patch_size=14, width=1024, layers=24, heads=16, output_dim=768),
    "vit-l-14-336": VisionConfig(image_size=336, patch_size=14, width=1024, layers=24, heads=16, output_dim=768),
    "owl-vit-l-14": VisionConfig(image_size=224, patch_size=14, width=1024, layers=24, heads=16, output_dim=1024,
                                 layer_norm_eps=1e-6),  # mPLUG-Owl's vision model: no proj, eps 1e-6
    "vit-b-16": VisionConfig(image_size=224, patch_size=16, width=768, layers=12, heads=12, output_dim=512),
    # Hugging Face CLIPVisionModel towers (no projection) for LLaVA: openai/clip-vit-large-patch14(-336).
    "clip-l-14-hf": VisionConfig(image_size=224, patch_size=14, width=1024, layers=24, heads=16, output_dim=0),
    "clip-l-14-336-hf": VisionConfig(image_size=336, patch_size=14, width=1024, layers=24, heads=16, output_dim=0),
    "tiny": VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=4, output_dim=24,
                         weight_dtype="float32", dtype="float32"),
}


def _get(table: dict, kind: str, name: str):
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} preset {name!r}; known: {', '.join(sorted(table))}") from None


def get_model(name: str) -> ModelConfig:
    return _get(MODEL_PRESETS, "model", name)


def adapter_presets() -> dict[str, AdapterConfig]:
    """Every adapter preset by name: the generic ones, then each system's (`System.adapter_presets`, in registry
    order); a name two systems define is a ValueError."""
    out = dict(GENERIC_ADAPTER_PRESETS)
    owner = {n: "core" for n in out}
    for system in registry.all_systems():
        for name, adapter in system.adapter_presets.items():
            if name in out:
                raise ValueError(f"adapter preset {name!r} is defined by both {owner[name]!r} and {system.name!r}")
            out[name], owner[name] = adapter, system.name
    return out


def get_adapter(name: str) -> AdapterConfig:
    if name in GENERIC_ADAPTER_PRESETS:
        return GENERIC_ADAPTER_PRESETS[name]
    return _get(adapter_presets(), "adapter", name)


def default_vision(adapter_name: str) -> str:
    """The vision preset adapter preset `adapter_name` is built with: its system's `preset_visions` entry, else
    `vit-l-14` (LLaMA-Adapter V2's CLIP)."""
    return registry.of(get_adapter(adapter_name)).preset_visions.get(adapter_name, "vit-l-14")


def get_vision(name: str) -> VisionConfig:
    return _get(VISION_PRESETS, "vision", name)


def tiny_adapter(name: str, model: ModelConfig = MODEL_PRESETS["tiny"], vision: VisionConfig = VISION_PRESETS["tiny"]
                 ) -> AdapterConfig:
    """An adapter preset shrunk to fit a small model: prompt/early layers within n_layers, connector sized to CLIP."""
    a = get_adapter(name)
    kw = dict(v_width=vision.output_dim, v_num_heads=4, v_depth=min(a.v_depth, 2))
    if a.has_prompts:
        kw["prompt_layers"] = model.n_layers - 1
        kw["prompt_len"] = 3
    if a.visual_fusion == "official":
        kw["query_len"] = kw.get("prompt_len", a.prompt_len)
    elif a.visual_fusion == "early":
        kw["query_len"] = 5
    if a.lora_rank:
        kw["lora_rank"] = 4
    return a.replace(**kw)
