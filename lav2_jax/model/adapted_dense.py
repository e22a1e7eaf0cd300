"""A frozen linear layer with the LLaMA-Adapter V2 linear adapters (paper §4.1, docs/design.md §3.1).

Placements (`AdapterConfig.linear_kind`):
  output       y = s ⊙ (W x + b)       s [out] init 1, b [out] init 0        (paper, "bias tuning")
  input        y = W (s ⊙ x) + b       s [in] init 1, b [out] init 0         (released 65B chat model)
  bias_qo_ffn  y = W x + b             b [out] init 0 on wq wo w1 w2 w3 only (released multimodal 7B)
Optional LoRA adds `alpha/r · B(A dropout(x))` to the result (A `lora_a` [in, r] with torch Linear's default init,
B `lora_b` [r, out] zero init) — on the raw input x, after bias and scale. `use_lora=False` skips it (adapter
prompt keys/values are computed without LoRA). Every placement is the identity map at init. `lora_dropout` (PEFT's
inverted dropout on the LoRA branch's input only) is active only when the caller passes a `dropout` rng (training).

Parameters: `kernel` [in, out] frozen (torch weights are [out, in]: transpose on load), the rest float32.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lav2_jax.model.common import as_dtype, frozen_param, trainable_param


def _torch_linear_init(fan_in: int):
    """torch.nn.Linear's default weight init (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class AdaptedDense(nn.Module):
    """x [..., in] → y [..., features]."""

    features: int
    axes: tuple[str, str]  # logical names of (in, out)
    bias: bool = False
    scale: str = "none"  # none | output | input
    lora_rank: int = 0
    lora_scale: float = 1.0
    lora_dropout: float = 0.0
    weight_dtype: str = "float32"
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array, use_lora: bool = True) -> jax.Array:
        in_features = x.shape[-1]
        in_axis, out_axis = self.axes
        dtype = as_dtype(self.dtype)
        kernel = frozen_param(self, "kernel", nn.initializers.normal(0.02), (in_features, self.features),
                              self.axes, self.weight_dtype)
        x = x.astype(dtype)
        h = x
        if self.scale == "input":
            s_in = trainable_param(self, "scale", nn.initializers.ones, (in_features,), (in_axis,))
            h = h * s_in.astype(dtype)
        y = jnp.einsum("...i,io->...o", h, kernel.astype(dtype))
        if self.bias:
            b = trainable_param(self, "bias", nn.initializers.zeros, (self.features,), (out_axis,))
            y = y + b.astype(dtype)
        if self.scale == "output":
            s_out = trainable_param(self, "scale", nn.initializers.ones, (self.features,), (out_axis,))
            y = y * s_out.astype(dtype)
        if self.lora_rank:
            a = trainable_param(self, "lora_a", _torch_linear_init(in_features), (in_features, self.lora_rank),
                                (in_axis, "lora"))
            b_lora = trainable_param(self, "lora_b", nn.initializers.zeros, (self.lora_rank, self.features),
                                     ("lora", out_axis))
            if use_lora:
                xl = x
                if self.lora_dropout > 0 and self.has_rng("dropout"):
                    keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.lora_dropout, x.shape)
                    xl = jnp.where(keep, x / (1.0 - self.lora_dropout), 0).astype(dtype)
                low = jnp.einsum("...i,ir->...r", xl, a.astype(dtype))
                y = y + self.lora_scale * jnp.einsum("...r,ro->...o", low, b_lora.astype(dtype))
        return y


def adapted_dense(adapter, name: str, features: int, axes: tuple[str, str], weight_dtype: str, dtype: str
                  ) -> AdaptedDense:
    """The AdaptedDense for LLaMA linear `name` (wq … w3) as the adapter config places its adapters."""
    scale = adapter.linear_kind if adapter.linear_has_scale(name) else "none"
    return AdaptedDense(
        features=features, axes=axes, bias=adapter.linear_has_bias(name), scale=scale,
        lora_rank=adapter.lora_rank if adapter.linear_has_lora(name) else 0, lora_scale=adapter.lora_scale,
        lora_dropout=adapter.lora_dropout,
        weight_dtype=weight_dtype, dtype=dtype, name=name)
