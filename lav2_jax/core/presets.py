"""Named model, adapter and vision presets (DESIGN.md §1, §7).

`get_model("llama1-7b")`, `get_adapter("paper")`, `get_vision("vit-l-14")`; `*_PRESETS` list the names.
"""

from __future__ import annotations

from lav2_jax.core.config import AbstractorConfig, AdapterConfig, ModelConfig, SpliceConfig, VisionConfig

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
    # DESIGN.md §7 benchmark configurations.
    "bench-s": ModelConfig(dim=768, n_layers=12, n_heads=12, ffn_hidden_dim=2048, norm_eps=1e-6, max_seq_len=512),
    "bench-m": ModelConfig(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn_hidden_dim=5632, norm_eps=1e-6,
                           max_seq_len=512),
    # Tests: GQA (4 query heads share 2 kv heads), float32 everywhere.
    "tiny": ModelConfig(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=16, norm_eps=1e-6,
                        max_seq_len=128, weight_dtype="float32", dtype="float32"),
}

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
    "lora": AdapterConfig(linear_kind="none", norm_tuning=False, lora_rank=8, prompt_len=0, prompt_layers=0,
                          visual_fusion="none"),
    "none": AdapterConfig(linear_kind="none", norm_tuning=False, prompt_len=0, prompt_layers=0, visual_fusion="none"),
    # mPLUG-Owl (SEED_SYSTEMS.md §3): the abstractor's 64 queries + vit_eos spliced in place at `<image>` (ids -1);
    # `owl-lora` adds the released stage-2 LoRA (r 8, alpha 32, dropout 0.05 on wq/wv).
    "owl": AdapterConfig(linear_kind="none", norm_tuning=False, prompt_len=0, prompt_layers=0, visual_fusion="none",
                         splice=SpliceConfig(system="owl", image_token_id=-1, select="all", projector="none",
                                             n_tokens=65, abstractor=AbstractorConfig())),
}
ADAPTER_PRESETS["owl-lora"] = ADAPTER_PRESETS["owl"].replace(lora_rank=8, lora_alpha=32.0, lora_dropout=0.05,
                                                             lora_targets=("wq", "wv"))
# LLaVA (SEED_SYSTEMS.md §1): CLIP layer −2 patch features through the projector, spliced at `<image>` (id 32000).
# `llava` = v1 (224 px, 256 tokens, linear), `llava15` = 1.5 (336 px, 576 tokens, mlp2x_gelu, pad), `llava15-lora`
# adds the 1.5 LoRA (r 128, alpha 256, dropout 0.05 on all seven linears).
ADAPTER_PRESETS["llava"] = ADAPTER_PRESETS["none"].replace(
    splice=SpliceConfig(system="llava", projector="linear", n_tokens=256))
ADAPTER_PRESETS["llava15"] = ADAPTER_PRESETS["none"].replace(
    splice=SpliceConfig(system="llava", projector="mlp2x_gelu", n_tokens=576, image_aspect_ratio="pad"))
ADAPTER_PRESETS["llava15-lora"] = ADAPTER_PRESETS["llava15"].replace(lora_rank=128, lora_alpha=256.0,
                                                                     lora_dropout=0.05)

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


def get_adapter(name: str) -> AdapterConfig:
    return _get(ADAPTER_PRESETS, "adapter", name)


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
