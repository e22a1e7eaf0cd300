"""The trainable visual connector between CLIP and the language model (docs/design.md §3.2.2, paper §4.3).

`VisualConnector(adapter, out_dim)(clip_tokens [B, N, C]) -> visual tokens [B, query_len, out_dim]`:

  x = LayerNorm(clip_proj(clip_tokens))                       [B, N, V]      (C = CLIP output_dim, V = v_width)
  x = concat(visual_query broadcast over B, x)                [B, Q + N, V]  (Q = query_len, no positional embedding)
  x = v_depth × pre-LN ViT block                              x + attn(norm1(x)); x + mlp(norm2(x)); exact GELU
  y = LayerNorm(visual_proj(x[:, :Q]))                        [B, Q, out_dim]

Parameter tree (all trainable, float32; kernels [in, out]; M = int(V * v_mlp_ratio), L = v_depth):

  clip_proj/{kernel, bias}                 [C, V], [V]
  clip_proj_norm/{scale, bias}             [V]
  visual_query                             [Q, V]      released `visual_query.weight`
  visual_blocks/norm1/{scale, bias}        [L, V]
  visual_blocks/attn/qkv/{kernel, bias}    [L, V, 3V], [L, 3V]   q;k;v along the output (released `attn.qkv`,
                                                                  torch [3V, V]: kernel = weight.T)
  visual_blocks/attn/proj/{kernel, bias}   [L, V, V], [L, V]
  visual_blocks/norm2/{scale, bias}        [L, V]
  visual_blocks/mlp/fc1/{kernel, bias}     [L, V, M], [L, M]
  visual_blocks/mlp/fc2/{kernel, bias}     [L, M, V], [L, V]
  visual_proj/{kernel, bias}               [V, out_dim], [out_dim]
  visual_proj_norm/{scale, bias}           [out_dim]

Released key map: `visual_blocks.N.<name>.weight` → `visual_blocks/<name>/kernel[N]` (transposed) or `scale[N]`
for the norms, `.bias` → `bias[N]`. With v_depth = 0 there is no `visual_blocks` subtree. LayerNorm eps 1e-5.
Init: kernels N(0, 0.02), biases 0, norms (1, 0), `visual_query` N(0, 1) (torch `nn.Embedding`'s default).
Compute runs in `dtype`; LayerNorm statistics and the softmax in float32. `remat_policy` names a
`common.remat_policy` for the scanned blocks.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lav2_jax.core.config import AdapterConfig
from lav2_jax.model.clip import ACT_AXES, Dense, attention_core
from lav2_jax.model.common import as_dtype, constrain, maybe_remat, scan_layers, tag, trainable_param
from lav2_jax.model.norms import LayerNorm

CONNECTOR_LN_EPS = 1e-5


def _norm(dtype: str, name: str) -> LayerNorm:
    return LayerNorm(eps=CONNECTOR_LN_EPS, trainable=True, dtype=dtype, name=name)


def _dense(features: int, axes, dtype: str, name: str) -> Dense:
    return Dense(features, axes, weight_dtype=None, dtype=dtype, name=name)


class FusedAttention(nn.Module):
    """x [B, T, V] → [B, T, V]: one fused `qkv` projection (q;k;v along the output), unmasked attention, `proj`."""

    num_heads: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        v_width = x.shape[-1]
        qkv = _dense(3 * v_width, ("vis_embed", None), self.dtype, "qkv")(x)  # [B, T, 3V]
        q, k, v = jnp.split(qkv, 3, axis=-1)
        out = attention_core(q, k, v, self.num_heads)
        return tag(_dense(v_width, ("vis_heads", "vis_embed"), self.dtype, "proj")(out), "attn_out")


class GeluMlp(nn.Module):
    """x [B, T, V] → fc2(gelu(fc1(x))) [B, T, V] with the exact (erf) GELU."""

    hidden: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = _dense(self.hidden, ("vis_embed", "vis_mlp"), self.dtype, "fc1")(x)
        h = jax.nn.gelu(h, approximate=False)
        return _dense(x.shape[-1], ("vis_mlp", "vis_embed"), self.dtype, "fc2")(h)


class ConnectorBlock(nn.Module):
    """One pre-LN ViT block for `nn.scan`: carry x [B, T, V] → (x', None)."""

    num_heads: int
    mlp_ratio: float
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array):
        x = x + FusedAttention(self.num_heads, self.dtype, name="attn")(_norm(self.dtype, "norm1")(x))
        x = constrain(x, ACT_AXES)
        hidden = int(x.shape[-1] * self.mlp_ratio)
        h = tag(GeluMlp(hidden, self.dtype, name="mlp")(_norm(self.dtype, "norm2")(x)), "ffn_out")
        return constrain(x + h, ACT_AXES), None


class VisualConnector(nn.Module):
    """CLIP tokens [B, N, C] → visual tokens [B, adapter.query_len, out_dim] in `dtype`."""

    adapter: AdapterConfig
    out_dim: int
    dtype: str = "float32"
    remat_policy: str = "none"

    @nn.compact
    def __call__(self, clip_tokens: jax.Array) -> jax.Array:
        a, dtype = self.adapter, as_dtype(self.dtype)
        if a.v_width % a.v_num_heads:
            raise ValueError(f"VisualConnector: v_width={a.v_width} is not divisible by v_num_heads={a.v_num_heads}")
        b = clip_tokens.shape[0]
        x = _dense(a.v_width, (None, "vis_embed"), self.dtype, "clip_proj")(clip_tokens)
        x = _norm(self.dtype, "clip_proj_norm")(x)  # [B, N, V]
        query = trainable_param(self, "visual_query", nn.initializers.normal(1.0), (a.query_len, a.v_width),
                                ("vis_tokens", "vis_embed"))
        x = jnp.concatenate([jnp.broadcast_to(query.astype(dtype), (b, a.query_len, a.v_width)), x], axis=1)
        x = constrain(x, ACT_AXES)  # [B, Q + N, V]
        if a.v_depth > 0:
            blocks = scan_layers(maybe_remat(ConnectorBlock, self.remat_policy), a.v_depth, in_axes=())
            x, _ = blocks(a.v_num_heads, a.v_mlp_ratio, self.dtype, name="visual_blocks")(x)
        x = _dense(self.out_dim, ("vis_embed", "embed"), self.dtype, "visual_proj")(x[:, :a.query_len])
        return constrain(_norm(self.dtype, "visual_proj_norm")(x), ACT_AXES)  # [B, Q, out_dim]
