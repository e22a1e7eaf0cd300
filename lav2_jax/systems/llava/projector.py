"""LLaVA's visual path (docs/design.md §4.1; LLaVA paper §4 "Visual Instruction Tuning", LLaVA-1.5 §3.1).

`llava_visual_tokens(splice, vision, model, images [M, H, W, 3]) -> [M, n_tokens, D]` (the visual encoder of
`lav2_jax.model.splice`):

  f = CLIP hidden state `splice.feature_layer` (−2: the penultimate block's output, no ln_post)   [M, 1 + P, C]
  f = f[:, 1:] for `patch` (drop CLS), f for `cls_patch`                                       [M, n_tokens, C]
  y = projector(f): `linear` W1 f + b1, or `mlp2x_gelu` W2 gelu_erf(W1 f + b1) + b2             [M, n_tokens, D]

The tower is frozen (no gradient flows into it: `stop_gradient`, like the original's no-grad forward).
Parameter tree (C = vision width, D = LLM width; the projector is float32 and trainable per recipe; a fresh one
(stage 1) is initialised like PyTorch's `nn.Linear`, kernel and bias U(±1/√fan_in), as LLaVA builds it):

  clip/...                          the tower (`lav2_jax.model.clip`, `output_dim` 0: no `proj`)
  mm_projector/linear_1/{kernel,bias}   [C, D], [D]   HF `multi_modal_projector.linear_1`, original `mm_projector.0`
                                                      (`mm_projector.{weight,bias}` for `linear`)
  mm_projector/linear_2/{kernel,bias}   [D, D], [D]   `mlp2x_gelu` only: HF `linear_2`, original `mm_projector.2`
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lav2_jax.core.config import ModelConfig, SpliceConfig, VisionConfig
from lav2_jax.model.clip import ACT_AXES, CLIPVisionTower, Dense
from lav2_jax.model.common import constrain


def check_splice(splice: SpliceConfig, vision: VisionConfig) -> None:
    """Raises ValueError unless `vision` has the hidden state `splice.feature_layer` and gives `splice.n_tokens`
    tokens per image (its patches, +1 with `cls_patch`)."""
    if not -(vision.layers + 1) <= splice.feature_layer <= vision.layers:
        raise ValueError(f"SpliceConfig.feature_layer={splice.feature_layer} is outside the tower's "
                         f"{vision.layers + 1} hidden states")
    expected = vision.num_patches + (0 if splice.select == "patch" else 1)
    if splice.n_tokens != expected:
        raise ValueError(f"SpliceConfig.n_tokens={splice.n_tokens} but a {vision.image_size}px tower with "
                         f"select={splice.select!r} gives {expected} tokens per image")


class Projector(nn.Module):
    """features [M, N, C] → [M, N, out_dim]: `linear` or `mlp2x_gelu` (exact erf GELU between two Linears)."""

    kind: str
    out_dim: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = lambda axes, name: Dense(self.out_dim, axes, weight_dtype=None, dtype=self.dtype, torch_init=True,
                                         name=name)
        if self.kind == "linear":
            return dense(("vis_embed", "embed"), "linear_1")(x)
        if self.kind != "mlp2x_gelu":
            raise ValueError(f"LLaVA projector {self.kind!r} is not one of linear, mlp2x_gelu")
        h = jax.nn.gelu(dense(("vis_embed", "mlp"), "linear_1")(x), approximate=False)
        return dense(("mlp", "embed"), "linear_2")(h)


def llava_visual_tokens(splice: SpliceConfig, vision: VisionConfig, model: ModelConfig, images: jax.Array):
    """images [M, H, W, 3] normalised → visual tokens [M, splice.n_tokens, model.dim] in `model.dtype`."""
    features = CLIPVisionTower(vision, name="clip")(images, feature_layer=splice.feature_layer)
    features = jax.lax.stop_gradient(features)
    if splice.select == "patch":
        features = features[:, 1:]
    elif splice.select != "cls_patch":
        raise ValueError(f"LLaVA reads `patch` or `cls_patch` features, not {splice.select!r}")
    tokens = Projector(splice.projector, model.dim, model.dtype, name="mm_projector")(features)
    return constrain(tokens.astype(jnp.dtype(model.dtype)), ACT_AXES)
