"""mPLUG-Owl's vision encoder: a ViT-L/14 variant of CLIP (docs/design.md §5.1; mPLUG-Owl paper §3).

`OwlVisionModel(config)(images [B, H, W, 3]) -> tokens [B, T, D]` (T = 1 + (H/P)·(W/P), D = width):

  x = concat(cls_token, patch_embed(images)) + position_embedding     [B, T, D]   conv without bias, CLS first
  x = pre_layernorm(x)
  x = layers × { x + dense(attn(query_key_value(input_layernorm(x)))); x + fc2(quick_gelu(fc1(norm(x)))) }
  y = post_layernorm(x)                                              every token, CLS included; no projection

Differences from `lav2_jax.model.clip.CLIPVisionTower` (which numerically matter): the fused `query_key_value`
projection lays its 3D outputs out **per head**, `[q_h, k_h, v_h]` for h = 0..N-1 (output reshaped [N, 3, hd]),
where OpenAI's `in_proj` stacks `[q; k; v]` blocks; LayerNorm eps comes from the config (1e-6 in the release,
CLIP 1e-5); `post_layernorm` normalises all tokens and there is no `proj`. LayerNorm statistics and affine run in
float32 (the release's fp32 LayerNorm), the softmax in float32, QuickGELU `x·sigmoid(1.702x)`.

Parameter tree (stored in `config.weight_dtype`: float32 where the vision model trains, e.g. Owl stage 1; kernels
[in, out]; D = width, M = int(width·mlp_ratio), N = heads, P = patch, T = num_tokens, L = layers):

  patch_embed/kernel                              [P, P, 3, D]  release `embeddings.patch_embed.weight` [D,3,P,P]
  cls_token                                       [D]           `embeddings.cls_token` [1, 1, D]
  position_embedding                              [T, D]        `embeddings.position_embedding` [1, T, D]
  pre_layernorm/{scale, bias}                     [D]
  layers/input_layernorm/{scale, bias}            [L, D]
  layers/self_attn/query_key_value/{kernel,bias}  [L, D, 3D], [L, 3D]   per-head q|k|v along the output axis
  layers/self_attn/dense/{kernel, bias}           [L, D, D], [L, D]
  layers/post_attention_layernorm/{scale, bias}   [L, D]
  layers/mlp/fc1/{kernel, bias}                   [L, D, M], [L, M]
  layers/mlp/fc2/{kernel, bias}                   [L, M, D], [L, D]
  post_layernorm/{scale, bias}                    [D]

`blocked_to_per_head(w, heads)` turns CLIP's `[q; k; v]` rows into this layout (`lav2 convert clip` for Owl).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lav2_jax.core.config import VisionConfig
from lav2_jax.model.clip import ACT_AXES, CLIPMlp, Dense, embed_with_cls
from lav2_jax.model.common import constrain, maybe_remat, scan_layers, tag
from lav2_jax.model.norms import LayerNorm


def blocked_to_per_head(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows `[q; k; v]` (each [N·hd, ...], OpenAI/HF CLIP) → rows `[q_0, k_0, v_0, q_1, ...]` (Owl), shape kept."""
    rest = w.shape[1:]
    hd = w.shape[0] // (3 * heads)
    return w.reshape((3, heads, hd) + rest).swapaxes(0, 1).reshape(w.shape)


def per_head_to_blocked(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of `blocked_to_per_head`."""
    rest = w.shape[1:]
    hd = w.shape[0] // (3 * heads)
    return w.reshape((heads, 3, hd) + rest).swapaxes(0, 1).reshape(w.shape)


class OwlSelfAttention(nn.Module):
    """x [B, T, D] → [B, T, D]: fused per-head `query_key_value`, unmasked softmax(q kᵀ / √hd) v, `dense`."""

    config: VisionConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        b, t, d = x.shape
        n = c.heads
        hd = d // n
        qkv = Dense(3 * d, ("vis_embed", "vis_heads"), weight_dtype=c.weight_dtype, dtype=c.dtype,
                    name="query_key_value")(x)
        qkv = qkv.reshape(b, t, n, 3, hd)  # per head: [q_h, k_h, v_h]
        q, k, v = (tag(qkv[:, :, :, j], name) for j, name in enumerate(("query", "key", "value")))
        scores = jnp.einsum("BTNH,BSNH->BNTS", q.astype(jnp.float32), k.astype(jnp.float32)) * (hd ** -0.5)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("BNTS,BSNH->BTNH", probs, v).reshape(b, t, d)
        return tag(Dense(d, ("vis_heads", "vis_embed"), weight_dtype=c.weight_dtype, dtype=c.dtype,
                         name="dense")(out), "attn_out")


def _norm(c: VisionConfig, name: str) -> LayerNorm:
    return LayerNorm(eps=c.layer_norm_eps, weight_dtype=c.weight_dtype, dtype=c.dtype, name=name)


class OwlEncoderLayer(nn.Module):
    """One pre-LN block for `nn.scan`: carry x [B, T, D] → (x', None)."""

    config: VisionConfig

    @nn.compact
    def __call__(self, x: jax.Array):
        c = self.config
        x = constrain(x + OwlSelfAttention(c, name="self_attn")(_norm(c, "input_layernorm")(x)), ACT_AXES)
        h = tag(CLIPMlp(c, ("fc1", "fc2"), name="mlp")(_norm(c, "post_attention_layernorm")(x)), "ffn_out")
        return constrain(x + h, ACT_AXES), None


class OwlVisionModel(nn.Module):
    """images [B, H, W, 3] float32 (CLIP-normalised, H = W = image_size) → tokens [B, num_tokens, width]."""

    config: VisionConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        c = self.config
        x = embed_with_cls(self, images, c, ("patch_embed", "cls_token", "position_embedding"), pos_std=0.02)
        if c.width % c.heads:
            raise ValueError(f"OwlVisionModel: width={c.width} is not divisible by heads={c.heads}")
        x = constrain(_norm(c, "pre_layernorm")(x), ACT_AXES)
        x, _ = scan_layers(maybe_remat(OwlEncoderLayer, c.remat_policy), c.layers, in_axes=())(c, name="layers")(x)
        return constrain(_norm(c, "post_layernorm")(x), ACT_AXES)
