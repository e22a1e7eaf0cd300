"""Frozen dataclass configs for the language model, its adapters and the visual branch.

`ModelConfig` describes the frozen LLaMA (docs/design.md §2), `AdapterConfig` every trainable addition of
LLaMA-Adapter V2 (§3.1–3.2, paper §4.1–4.3), `VisionConfig` the frozen CLIP tower (§3.2.1). Named presets live in
`lav2_jax.core.presets`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from lav2_jax.core import registry

LINEAR_KINDS = ("output", "input", "bias_qo_ffn", "none")
FUSION_MODES = ("early", "official", "none")
SPLICE_SELECTS = ("patch", "cls_patch", "all")
PROJECTORS = ("linear", "mlp2x_gelu", "none")
LINEAR_NAMES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_qkv_out", "save_attn_ffn_out")
ATTENTION_IMPLS = ("xla", "flash", "blocked")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The frozen LLaMA decoder.

    `ffn_hidden_dim` overrides the LLaMA rule `multiple_of * ceil(int(mult * int(8 * dim / 3)) / multiple_of)` when set.
    `weight_dtype` is the storage dtype of frozen weights, `dtype` the compute dtype of activations.
    `scan_layers`: run the layers as one `nn.scan` over parameters stacked as `layers/...` [L, ...] (training, TPU,
    AOT: compile time independent of depth), or as a Python loop over `layers_0 … layers_{L-1}` (single-device CPU
    decoding, where matmuls on per-layer slices of stacked weights run at half the memory bandwidth; see
    `lav2_jax.model.factory.unstack_layers`).
    """

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: Optional[int] = None
    vocab_size: int = 32000
    multiple_of: int = 256
    ffn_dim_multiplier: Optional[float] = None
    ffn_hidden_dim: Optional[int] = None
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    weight_dtype: str = "bfloat16"
    dtype: str = "bfloat16"
    remat_policy: str = "none"
    scan_layers: bool = True
    attention: str = "xla"  # "xla" | "flash": Pallas TPU splash kernel for training / prefill (lav2_jax.model.flash)
    # | "blocked": XLA attention in causal query blocks without a cache (CPU training; model.blocked_attention)

    def __post_init__(self):
        if self.dim % self.n_heads:
            raise ValueError(f"ModelConfig.dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"ModelConfig.n_heads={self.n_heads} is not divisible by n_kv_heads={self.kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig head_dim={self.head_dim} must be even for RoPE")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"ModelConfig.remat_policy={self.remat_policy!r} not in {REMAT_POLICIES}")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"ModelConfig.attention={self.attention!r} not in {ATTENTION_IMPLS}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """Every trainable addition of LLaMA-Adapter V2.

    linear_kind: `output` y = s*(Wx+b) on all seven linears (paper §4.1); `input` y = W(s*x)+b (released 65B chat);
      `bias_qo_ffn` y = Wx+b on wq, wo, w1, w2, w3 (released multimodal 7B); `none`.
    norm_tuning: RMSNorm weights are trainable.
    lora_rank: 0 disables LoRA; `lora_alpha` defaults to the rank (factor 1, the released form); `lora_dropout`
      drops LoRA inputs in training (PEFT's `lora_dropout`; active only when a `dropout` rng is given).
    prompt_len, prompt_layers: `prompt_len` adapter prompt tokens in each of the last `prompt_layers` (L) layers.
    new_gate: the extra scalar gate of the released LoRA checkpoints (init 1).
    visual_fusion: `early` (paper §4.3, visual prompts gated in the first `early_layers` K layers), `official`
      (released: visual tokens added to the adapter prompts), or `none` (language-only).
    query_len: number of visual tokens the connector emits.
    v_depth, v_width, v_num_heads, v_mlp_ratio: the connector's transformer blocks (docs/design.md §3.2.2).
    """

    linear_kind: str = "output"
    norm_tuning: bool = True
    lora_rank: int = 0
    lora_alpha: Optional[float] = None
    lora_dropout: float = 0.0
    lora_targets: tuple = LINEAR_NAMES
    new_gate: bool = False
    prompt_len: int = 10
    prompt_layers: int = 31
    visual_fusion: str = "early"
    early_layers: int = 1
    query_len: int = 20
    v_depth: int = 1
    v_width: int = 768
    v_num_heads: int = 16
    v_mlp_ratio: float = 4.0
    splice: Optional["SpliceConfig"] = None

    def __post_init__(self):
        if isinstance(self.splice, dict):  # from config.json
            object.__setattr__(self, "splice", SpliceConfig(**self.splice))
        if self.splice is not None and self.visual_fusion != "none":
            raise ValueError("AdapterConfig: a spliced visual path (LLaVA, mPLUG-Owl) replaces LLaMA-Adapter's "
                             f"visual prompts, so visual_fusion must be 'none', got {self.visual_fusion!r}")
        if self.linear_kind not in LINEAR_KINDS:
            raise ValueError(f"AdapterConfig.linear_kind={self.linear_kind!r} not in {LINEAR_KINDS}")
        if self.visual_fusion not in FUSION_MODES:
            raise ValueError(f"AdapterConfig.visual_fusion={self.visual_fusion!r} not in {FUSION_MODES}")
        bad = set(self.lora_targets) - set(LINEAR_NAMES)
        if bad:
            raise ValueError(f"AdapterConfig.lora_targets has unknown linears {sorted(bad)}")
        if self.visual_fusion == "official" and self.query_len != self.prompt_len:
            raise ValueError("AdapterConfig: official fusion adds visual tokens to adapter prompts, so query_len "
                             f"({self.query_len}) must equal prompt_len ({self.prompt_len})")
        if self.visual_fusion == "official" and not self.has_prompts:
            raise ValueError("AdapterConfig: official fusion needs adapter prompts (prompt_len, prompt_layers > 0)")

    @property
    def has_prompts(self) -> bool:
        return self.prompt_len > 0 and self.prompt_layers > 0

    @property
    def has_visual(self) -> bool:
        return self.visual_fusion != "none"

    @property
    def system(self) -> str:
        """`lav2` (gated visual prompts), or the spliced system of `splice` (`llava`, `owl`)."""
        return "lav2" if self.splice is None else self.splice.system

    @property
    def lora_scale(self) -> float:
        return (self.lora_alpha if self.lora_alpha is not None else self.lora_rank) / max(self.lora_rank, 1)

    def linear_has_bias(self, name: str) -> bool:
        if self.linear_kind in ("output", "input"):
            return True
        return self.linear_kind == "bias_qo_ffn" and name not in ("wk", "wv")

    def linear_has_scale(self, name: str) -> bool:
        return self.linear_kind in ("output", "input")

    def linear_has_lora(self, name: str) -> bool:
        return self.lora_rank > 0 and name in self.lora_targets

    def check(self, model: ModelConfig) -> None:
        """Validates the adapter against the model it adapts (and a splice's system against the registry)."""
        if self.splice is not None:
            self.splice.check()
        if self.prompt_layers > model.n_layers:
            raise ValueError(f"AdapterConfig.prompt_layers={self.prompt_layers} exceeds n_layers={model.n_layers}")
        prompted = self.prompt_layers if self.has_prompts else 0
        if self.visual_fusion == "early" and self.early_layers + prompted > model.n_layers:
            raise ValueError("AdapterConfig: early fusion needs early_layers + prompt_layers <= n_layers "
                             f"({self.early_layers} + {self.prompt_layers} > {model.n_layers}), so no layer mixes both")

    def replace(self, **kw) -> "AdapterConfig":
        return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The frozen CLIP ViT (OpenAI layout). `output_dim` is the projection width (768 for ViT-L/14)."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    output_dim: int = 768
    layer_norm_eps: float = 1e-5
    weight_dtype: str = "bfloat16"
    dtype: str = "bfloat16"
    remat_policy: str = "none"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + 1

    def replace(self, **kw) -> "VisionConfig":
        return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class AbstractorConfig:
    """mPLUG-Owl's visual abstractor (docs/design.md §5.2): `num_queries` learned queries, `layers` cross-attention
    blocks of width `width` (= the vision width) with `heads` heads and a SwiGLU MLP of `mlp_dim` with an inner
    LayerNorm of eps `layer_norm_eps` (norm1/normk/norm2 use torch's default 1e-5), attention-prob dropout
    `attention_dropout` in training; `visual_fc` maps to the LLM width and `vit_eos` is appended (queries + 1)."""

    num_queries: int = 64
    layers: int = 6
    width: int = 1024
    heads: int = 16
    mlp_dim: int = 2816
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.1
    remat_policy: str = "none"

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"AbstractorConfig.width={self.width} is not divisible by heads={self.heads}")

    @property
    def num_tokens(self) -> int:
        return self.num_queries + 1

    def replace(self, **kw) -> "AbstractorConfig":
        return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class SpliceConfig:
    """A spliced visual path (LLaVA, mPLUG-Owl; docs/design.md §4.2, §5.3): each image contributes `n_tokens`
    visual tokens that replace `n_tokens` copies of `image_token_id` in the prompt (`lav2_jax.model.splice`).

    system: the registered system (`lav2_jax.core.registry`) whose visual front-end encodes the images (`llava`,
      `owl`, ...; `System.visual_front_end`), checked by `check`.
    image_token_id: the placeholder id; it need not lie inside the vocabulary (it is never embedded).
    feature_layer: Hugging Face `hidden_states` index of the vision tower that is read (0 = embeddings after
      ln_pre, i = output of block i, −2 = the penultimate block; never post-layernormed). LLaVA only.
    select: `patch` (drop CLS), `cls_patch` (keep it), `all` (every token; mPLUG-Owl).
    projector: `linear` | `mlp2x_gelu` (Linear → exact GELU → Linear) for LLaVA; `none` for mPLUG-Owl.
    n_tokens: visual tokens per image (LLaVA checks it against the vision tower: `System.check_configs`).
    max_images: image slots per sequence (`images` [B, max_images, H, W, 3]).
    abstractor: mPLUG-Owl's visual abstractor (None for LLaVA).
    image_aspect_ratio: host preprocessing, `square` (CLIP resize + centre crop) or `pad` (LLaVA-1.5: mean-colour
      square pad first; `lav2_jax.data.images.expand_to_square`).
    """

    system: str = "llava"
    image_token_id: int = 32000
    feature_layer: int = -2
    select: str = "patch"
    projector: str = "mlp2x_gelu"
    n_tokens: int = 576
    max_images: int = 1
    abstractor: Optional[AbstractorConfig] = None
    image_aspect_ratio: str = "square"

    def __post_init__(self):
        if isinstance(self.abstractor, dict):  # from config.json
            object.__setattr__(self, "abstractor", AbstractorConfig(**self.abstractor))
        if not self.system or not isinstance(self.system, str):
            raise ValueError(f"SpliceConfig.system must name a system, got {self.system!r}")
        if self.select not in SPLICE_SELECTS:
            raise ValueError(f"SpliceConfig.select={self.select!r} not in {SPLICE_SELECTS}")
        if self.projector not in PROJECTORS:
            raise ValueError(f"SpliceConfig.projector={self.projector!r} not in {PROJECTORS}")
        if self.image_aspect_ratio not in ("square", "pad"):
            raise ValueError(f"SpliceConfig.image_aspect_ratio={self.image_aspect_ratio!r} not in ('square', 'pad')")
        if self.n_tokens < 1 or self.max_images < 1:
            raise ValueError(f"SpliceConfig: n_tokens={self.n_tokens} and max_images={self.max_images} must be >= 1")

    def check(self) -> None:
        """Raises ValueError naming the known systems when `system` is not registered (`lav2_jax.core.registry`);
        the system's own checks against the vision tower are `System.check_configs`."""
        registry.get(self.system)

    def replace(self, **kw) -> "SpliceConfig":
        return dataclasses.replace(self, **kw)
