"""RMSNorm (docs/design.md §2.1) and LayerNorm with the project's dtype policy.

Both normalise with float32 statistics, cast back to the compute dtype, then apply their weight. A norm whose
weight is trainable (paper §4.1 "unfreeze all normalisation layers") stores it in float32; a frozen one in the
frozen-weight dtype.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lav2_jax.model.common import as_dtype, frozen_param, trainable_param


class RMSNorm(nn.Module):
    """`y = x * rsqrt(mean(x^2) + eps) * scale`; x: [..., D] → [..., D]. Parameter `scale` [D] (init 1)."""

    eps: float = 1e-6
    trainable: bool = False
    weight_dtype: str = "float32"
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        if self.trainable:
            scale = trainable_param(self, "scale", nn.initializers.ones, (dim,), ("norm",))
        else:
            scale = frozen_param(self, "scale", nn.initializers.ones, (dim,), ("norm",), self.weight_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        dtype = as_dtype(self.dtype)
        return normed.astype(dtype) * scale.astype(dtype)


class LayerNorm(nn.Module):
    """`y = (x - mean) / sqrt(var + eps) * scale + bias`; x: [..., D]. Parameters `scale`, `bias` [D]."""

    eps: float = 1e-5
    trainable: bool = False
    weight_dtype: str = "float32"
    dtype: str = "float32"
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        axes = (self.axis_name,)
        if self.trainable:
            scale = trainable_param(self, "scale", nn.initializers.ones, (dim,), axes)
            bias = trainable_param(self, "bias", nn.initializers.zeros, (dim,), axes)
        else:
            scale = frozen_param(self, "scale", nn.initializers.ones, (dim,), axes, self.weight_dtype)
            bias = frozen_param(self, "bias", nn.initializers.zeros, (dim,), axes, self.weight_dtype)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(as_dtype(self.dtype))
