"""mPLUG-Owl's visual abstractor (docs/design.md §5.2; mPLUG-Owl paper §3, "visual abstractor module").

`VisualAbstractor(config, out_dim)(visual [B, T, W]) -> tokens [B, Q + 1, out_dim]` (W = config.width = the vision
width, Q = num_queries, T = the vision tokens incl. CLS):

  x = query_tokens broadcast over B                                    [B, Q, W]   no positional embedding
  per layer:  xn = norm1(x);  vn = normk(visual)                       eps 1e-5 (torch's default)
              q = query(xn);  k, v = key/value(concat(xn, vn))         [B, Q, W], [B, Q + T, W]
              a = softmax(q kᵀ / √hd) v                                (prob dropout in training)
              x = xn + out_proj(a)                                     residual from the NORMED queries
              x = x + w2(ffn_ln(silu(w1 h) · w3 h)),  h = norm2(x)     SwiGLU, inner LayerNorm eps config (1e-6)
  y = concat(visual_fc(x), vit_eos)                                    [B, Q + 1, out_dim]

Parameter tree (all float32, trainable or not per recipe; kernels [in, out]; L = layers, I = mlp_dim, O = out_dim):

  query_tokens                            [Q, W]      release `query_tokens` [1, Q, W] (zero init, as released)
  layers/{norm1, normk, norm2}/{scale,bias} [L, W]    `abstractor.encoder.layers.N.crossattention.{norm1, normk,
                                                      output.norm2}`
  layers/{query, key, value}/{kernel,bias} [L, W, W], [L, W]   `….crossattention.attention.{query,key,value}`
  layers/out_proj/{kernel, bias}          [L, W, W], [L, W]    `….crossattention.output.out_proj`
  layers/mlp/{w1, w3}/{kernel, bias}      [L, W, I], [L, I]    `….crossattention.output.mlp.{w1, w3}`
  layers/mlp/ffn_ln/{scale, bias}         [L, I]               `….output.mlp.ffn_ln`
  layers/mlp/w2/{kernel, bias}            [L, I, W], [L, W]    `….output.mlp.w2`
  visual_fc/{kernel, bias}                [W, O], [O]          `abstractor.visual_fc`
  vit_eos                                 [O]                  `abstractor.vit_eos` [1, 1, O]

Compute in `dtype`; LayerNorm statistics and affine, and the softmax, in float32. Dropout on the attention
probabilities (`config.attention_dropout`) is active only when the call is given a `dropout` rng.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lav2_jax.core.config import AbstractorConfig
from lav2_jax.model.clip import ACT_AXES, Dense
from lav2_jax.model.common import as_dtype, constrain, maybe_remat, tag, trainable_param
from lav2_jax.model.norms import LayerNorm

TORCH_LN_EPS = 1e-5  # norm1 / normk / norm2 are plain torch LayerNorms


def _dense(features: int, axes, dtype: str, name: str) -> Dense:
    return Dense(features, axes, weight_dtype=None, dtype=dtype, name=name)


def _norm(eps: float, dtype: str, name: str, axis_name: str = "norm") -> LayerNorm:
    return LayerNorm(eps=eps, trainable=True, dtype=dtype, name=name, axis_name=axis_name)


class SwiGLUMlp(nn.Module):
    """h [B, Q, W] → w2(ffn_ln(silu(w1 h) · w3 h)) [B, Q, W]; w1, w3 W → I, w2 I → W, all with bias."""

    config: AbstractorConfig
    dtype: str = "float32"

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        c = self.config
        gate = _dense(c.mlp_dim, ("vis_embed", "vis_mlp"), self.dtype, "w1")(h)
        up = _dense(c.mlp_dim, ("vis_embed", "vis_mlp"), self.dtype, "w3")(h)
        inner = _norm(c.layer_norm_eps, self.dtype, "ffn_ln", "vis_mlp")(jax.nn.silu(gate) * up)
        return _dense(c.width, ("vis_mlp", "vis_embed"), self.dtype, "w2")(inner)


class AbstractorLayer(nn.Module):
    """One cross-attention layer for `nn.scan`: carry queries x [B, Q, W], broadcast visual [B, T, W] → (x', None)."""

    config: AbstractorConfig
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, visual: jax.Array):
        c = self.config
        b, q_len, w = x.shape
        n, hd = c.heads, w // c.heads
        xn = _norm(TORCH_LN_EPS, self.dtype, "norm1")(x)
        vn = _norm(TORCH_LN_EPS, self.dtype, "normk")(visual)
        kv_in = jnp.concatenate([xn, vn.astype(xn.dtype)], axis=1)  # [B, Q + T, W]
        proj = lambda name: _dense(w, ("vis_embed", "vis_heads"), self.dtype, name)  # noqa: E731
        q = tag(proj("query")(xn).reshape(b, q_len, n, hd), "query")
        k = tag(proj("key")(kv_in).reshape(b, -1, n, hd), "key")
        v = tag(proj("value")(kv_in).reshape(b, -1, n, hd), "value")
        scores = jnp.einsum("BQNH,BSNH->BNQS", q.astype(jnp.float32), k.astype(jnp.float32)) * (hd ** -0.5)
        probs = jax.nn.softmax(scores, axis=-1)
        if c.attention_dropout > 0 and self.has_rng("dropout"):
            probs = nn.Dropout(c.attention_dropout, deterministic=False)(probs)
        attn = jnp.einsum("BNQS,BSNH->BQNH", probs.astype(v.dtype), v).reshape(b, q_len, w)
        attn = tag(_dense(w, ("vis_heads", "vis_embed"), self.dtype, "out_proj")(attn), "attn_out")
        x = constrain(xn + attn, ACT_AXES)  # residual from the normed queries
        h = tag(SwiGLUMlp(c, self.dtype, name="mlp")(_norm(TORCH_LN_EPS, self.dtype, "norm2")(x)), "ffn_out")
        return constrain(x + h, ACT_AXES), None


class VisualAbstractor(nn.Module):
    """Vision tokens [B, T, W] → [B, num_queries + 1, out_dim] LLM-width tokens (the last is `vit_eos`)."""

    config: AbstractorConfig
    out_dim: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, visual: jax.Array) -> jax.Array:
        c, dtype = self.config, as_dtype(self.dtype)
        b, _, w = visual.shape
        if w != c.width:
            raise ValueError(f"VisualAbstractor: vision width {w} != abstractor width {c.width} (they must match)")
        query = trainable_param(self, "query_tokens", nn.initializers.zeros, (c.num_queries, c.width),
                                ("vis_tokens", "vis_embed"))
        x = jnp.broadcast_to(query.astype(dtype), (b, c.num_queries, c.width))
        layers = nn.scan(maybe_remat(AbstractorLayer, c.remat_policy), variable_axes={"params": 0},
                         split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,), length=c.layers,
                         metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = layers(c, self.dtype, name="layers")(x, visual.astype(dtype))
        y = _dense(self.out_dim, ("vis_embed", "embed"), self.dtype, "visual_fc")(x)  # [B, Q, O]
        eos = trainable_param(self, "vit_eos", nn.initializers.normal(0.02), (self.out_dim,), ("embed",))
        y = jnp.concatenate([y, jnp.broadcast_to(eos.astype(y.dtype), (b, 1, self.out_dim))], axis=1)
        return constrain(y, ACT_AXES)
