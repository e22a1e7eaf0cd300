"""The frozen CLIP vision tower (OpenAI ViT layout), docs/design.md §3.2.1 and §7.5.

`CLIPVisionTower(config)(images [B, H, W, 3]) -> tokens [B, num_tokens, output_dim]`: patch embedding (no bias),
class token, learned positions, `ln_pre`, `layers` pre-LN residual blocks (quick_gelu MLP), then `ln_post` and the
projection applied to **all** tokens (class token first, then the patches row-major), not just the class token.

Parameter tree (every weight frozen, stored in `config.weight_dtype`; kernels are [in, out]; D = width,
M = int(width * mlp_ratio), P = patch_size, T = num_tokens, L = layers, O = output_dim):

  conv1/kernel                       [P, P, 3, D]   OpenAI `visual.conv1.weight` [D, 3, P, P] .transpose(2, 3, 1, 0)
  class_embedding                    [D]            `visual.class_embedding`
  positional_embedding               [T, D]         `visual.positional_embedding`
  ln_pre/{scale, bias}               [D]            `visual.ln_pre.{weight, bias}`
  resblocks/ln_1/{scale, bias}       [L, D]         `visual.transformer.resblocks.N.ln_1.*`
  resblocks/attn/{q, k, v}/kernel    [L, D, D]      `attn.in_proj_weight` [3D, D] = q;k;v rows: q = W[:D].T, ...
  resblocks/attn/{q, k, v}/bias      [L, D]         `attn.in_proj_bias` [3D] split the same way
  resblocks/attn/out/{kernel, bias}  [L, D, D], [L, D]  `attn.out_proj.{weight.T, bias}`
  resblocks/ln_2/{scale, bias}       [L, D]         `ln_2.*`
  resblocks/mlp/c_fc/{kernel, bias}  [L, D, M], [L, M]  `mlp.c_fc.{weight.T, bias}`
  resblocks/mlp/c_proj/{kernel,bias} [L, M, D], [L, D]  `mlp.c_proj.{weight.T, bias}`
  ln_post/{scale, bias}              [D]            `visual.ln_post.*`
  proj                               [D, O]         `visual.proj` (already [in, out])

Hugging Face `CLIPVisionModel` (hub files prefix `vision_model.`; the transformers-5 module's own state dict has
no prefix): `embeddings.patch_embedding.weight` → conv1 (same transpose), `embeddings.class_embedding`,
`embeddings.position_embedding.weight`, `pre_layrnorm` → ln_pre, `encoder.layers.N.self_attn.{q,k,v,out}_proj`
→ attn/{q,k,v,out} (weight.T), `layer_norm1/2` → ln_1/2, `mlp.fc1/fc2` → c_fc/c_proj, `post_layernorm` →
ln_post, `visual_projection.weight` [O, D] (in `CLIPModel` / `CLIPVisionModelWithProjection`) → proj = weight.T.

Compute runs in `config.dtype`; LayerNorm statistics and the softmax in float32. The blocks run under `nn.scan`
(params stacked on a leading `layers` axis) with the named remat policy `config.remat_policy`.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lav2_jax.core.config import VisionConfig
from lav2_jax.model.common import as_dtype, constrain, frozen_param, maybe_remat, scan_layers, tag, trainable_param
from lav2_jax.model.norms import LayerNorm

ACT_AXES = ("act_batch", "act_length", "act_embed")


def vit_param(module: nn.Module, name: str, init, shape, axes, weight_dtype: str | None):
    """A frozen weight in `weight_dtype`, or a trainable float32 one when `weight_dtype` is None."""
    if weight_dtype is None:
        return trainable_param(module, name, init, shape, axes)
    return frozen_param(module, name, init, shape, axes, weight_dtype)


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's activation `x * sigmoid(1.702 x)`."""
    return x * jax.nn.sigmoid(1.702 * x)


class Dense(nn.Module):
    """x [..., in] → [..., features]: `kernel` [in, features] (+ `bias` [features]); frozen unless weight_dtype
    None."""

    features: int
    axes: tuple[str | None, str | None]  # logical names of (in, out)
    use_bias: bool = True
    weight_dtype: str | None = "float32"
    dtype: str = "float32"
    torch_init: bool = False  # PyTorch nn.Linear's default init: kernel and bias U(±1/√in) (else N(0, 0.02), 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = as_dtype(self.dtype)
        bound = 1.0 / float(x.shape[-1]) ** 0.5
        uniform = lambda key, shape, dt=jnp.float32: jax.random.uniform(key, shape, dt, -bound, bound)  # noqa: E731
        kernel_init, bias_init = (uniform, uniform) if self.torch_init else (nn.initializers.normal(0.02),
                                                                            nn.initializers.zeros)
        kernel = vit_param(self, "kernel", kernel_init, (x.shape[-1], self.features), self.axes, self.weight_dtype)
        y = jnp.einsum("...D,DF->...F", x.astype(dtype), kernel.astype(dtype))
        if self.use_bias:
            bias = vit_param(self, "bias", bias_init, (self.features,), self.axes[1:], self.weight_dtype)
            y = y + bias.astype(dtype)
        return y


def attention_core(q: jax.Array, k: jax.Array, v: jax.Array, num_heads: int) -> jax.Array:
    """Unmasked multi-head attention. q, k, v [B, T, N*H] → [B, T, N*H]; scores and softmax in float32."""
    b, t, d = q.shape
    hd = d // num_heads
    q, k, v = (tag(y.reshape(b, t, num_heads, hd), n) for y, n in zip((q, k, v), ("query", "key", "value")))
    scores = jnp.einsum("BTNH,BSNH->BNTS", q.astype(jnp.float32), k.astype(jnp.float32)) / jnp.sqrt(
        jnp.float32(hd))
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("BNTS,BSNH->BTNH", probs, v)
    return out.reshape(b, t, d)


class CLIPAttention(nn.Module):
    """x [B, T, D] → [B, T, D]: separate q/k/v projections with bias, unmasked softmax attention, `out`."""

    num_heads: int
    weight_dtype: str = "float32"
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        proj = lambda name, axes: Dense(d, axes, weight_dtype=self.weight_dtype, dtype=self.dtype, name=name)
        q, k, v = (proj(n, ("vis_embed", "vis_heads"))(x) for n in ("q", "k", "v"))
        out = attention_core(q, k, v, self.num_heads)
        return tag(proj("out", ("vis_heads", "vis_embed"))(out), "attn_out")


class CLIPMlp(nn.Module):
    """x [B, T, D] → c_proj(quick_gelu(c_fc(x))) [B, T, D]; hidden M = int(width * mlp_ratio). `names`: the two
    Linears' parameter names (mPLUG-Owl's vision model calls them fc1, fc2)."""

    config: VisionConfig
    names: tuple[str, str] = ("c_fc", "c_proj")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        h = Dense(int(c.width * c.mlp_ratio), ("vis_embed", "vis_mlp"), weight_dtype=c.weight_dtype, dtype=c.dtype,
                  name=self.names[0])(x)
        return Dense(c.width, ("vis_mlp", "vis_embed"), weight_dtype=c.weight_dtype, dtype=c.dtype,
                     name=self.names[1])(quick_gelu(h))


class ResBlock(nn.Module):
    """One pre-LN CLIP block; carry x [B, T, D] → (x', x' if return_hidden else None) for `nn.scan`.

    With `keep_layer` set the carry is `(x, kept)` and the block also takes its layer `index`: `kept` becomes x'
    in block `keep_layer` (a hidden state read without stacking every layer's output).
    """

    config: VisionConfig
    return_hidden: bool = False
    keep_layer: Optional[int] = None

    @nn.compact
    def __call__(self, x, index=None):
        c = self.config
        if self.keep_layer is not None:
            x, kept = x
        norm = lambda name: LayerNorm(eps=c.layer_norm_eps, weight_dtype=c.weight_dtype, dtype=c.dtype, name=name)
        x = x + CLIPAttention(c.heads, c.weight_dtype, c.dtype, name="attn")(norm("ln_1")(x))
        x = constrain(x, ACT_AXES)
        h = tag(CLIPMlp(c, name="mlp")(norm("ln_2")(x)), "ffn_out")
        x = constrain(x + h, ACT_AXES)
        if self.keep_layer is not None:
            return (x, jnp.where(index == self.keep_layer, x, kept)), None
        return x, (x if self.return_hidden else None)


class PatchEmbed(nn.Module):
    """images [B, H, W, C] → patch embeddings [B, (H/P)*(W/P), D], row-major; `kernel` [P, P, C, D], no bias."""

    config: VisionConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        c = self.config
        b, h, w, ch = images.shape
        p, dtype = c.patch_size, as_dtype(c.dtype)
        kernel = frozen_param(self, "kernel", nn.initializers.normal(0.02), (p, p, ch, c.width),
                              ("vis_patch", None, "vis_channels", "vis_embed"),  # a name may occur once per array
                              c.weight_dtype)
        patches = images.astype(dtype).reshape(b, h // p, p, w // p, p, ch)
        x = jnp.einsum("BhpwqC,pqCD->BhwD", patches, kernel.astype(dtype))
        return x.reshape(b, (h // p) * (w // p), c.width)


def embed_with_cls(module: nn.Module, images: jax.Array, c: VisionConfig, names: tuple[str, str, str],
                   pos_std: float) -> jax.Array:
    """images [B, H, W, C] → [B, T, D]: patch embeddings (`PatchEmbed`) after a learned CLS token, plus learned
    positions. `names`: (patch conv, CLS, positions) parameter names of `module`'s tree; `pos_std`: the positions'
    init std. Raises ValueError for images other than `c.image_size` square."""
    b, h, w, _ = images.shape
    if (h, w) != (c.image_size, c.image_size):
        raise ValueError(f"{type(module).__name__} expects {c.image_size}x{c.image_size} images, got {h}x{w}")
    dtype = as_dtype(c.dtype)
    patch, cls_name, pos_name = names
    x = PatchEmbed(c, name=patch)(images)  # [B, T-1, D]
    cls = frozen_param(module, cls_name, nn.initializers.normal(0.02), (c.width,), ("vis_embed",), c.weight_dtype)
    pos = frozen_param(module, pos_name, nn.initializers.normal(pos_std), (c.num_tokens, c.width),
                       ("vis_tokens", "vis_embed"), c.weight_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, c.width)), x], axis=1)
    return x + pos.astype(dtype)[None]


class CLIPVisionTower(nn.Module):
    """images [B, H, W, 3] float32 (normalised) → tokens [B, T, output_dim] in `config.dtype`.

    With `return_hidden_states=True` returns `(tokens, hidden)`, hidden [layers + 1, B, T, width]: the embeddings
    after `ln_pre`, then the output of each block (Hugging Face's `hidden_states`, stacked).
    With `feature_layer=i` returns that one hidden state [B, T, width] alone (`hidden[i]`, negative i from the end;
    LLaVA reads −2, the penultimate block's output, without `ln_post`). `config.output_dim == 0` means no `proj`
    (Hugging Face `CLIPVisionModel`): tokens are then the `ln_post` outputs [B, T, width].
    """

    config: VisionConfig

    @nn.compact
    def __call__(self, images: jax.Array, return_hidden_states: bool = False, feature_layer: Optional[int] = None):
        c = self.config
        x = embed_with_cls(self, images, c, ("conv1", "class_embedding", "positional_embedding"), pos_std=0.01)
        x = constrain(LayerNorm(eps=c.layer_norm_eps, weight_dtype=c.weight_dtype, dtype=c.dtype, name="ln_pre")(x),
                      ACT_AXES)
        if feature_layer is not None:
            keep = feature_layer % (c.layers + 1) - 1  # hidden state i is the output of block i - 1
            blocks = scan_layers(maybe_remat(ResBlock, c.remat_policy), c.layers, in_axes=(0,))
            (y, kept), _ = blocks(c, keep_layer=keep, name="resblocks")((x, x), jnp.arange(c.layers))
        else:
            blocks = scan_layers(maybe_remat(ResBlock, c.remat_policy), c.layers, in_axes=())
            y, hidden = blocks(c, return_hidden=return_hidden_states, name="resblocks")(x)
        y = LayerNorm(eps=c.layer_norm_eps, weight_dtype=c.weight_dtype, dtype=c.dtype, name="ln_post")(y)
        if c.output_dim:
            proj = frozen_param(self, "proj", nn.initializers.normal(c.width ** -0.5), (c.width, c.output_dim),
                                ("vis_embed", None), c.weight_dtype)
            y = jnp.einsum("BTD,DO->BTO", y, proj.astype(as_dtype(c.dtype)))
        tokens = constrain(y, ACT_AXES)
        if feature_layer is not None:
            return constrain(kept, ACT_AXES)
        if return_hidden_states:
            return tokens, jnp.concatenate([x[None], hidden], axis=0)
        return tokens
