"""SwiGLU feed-forward (docs/design.md §2.1): `w2(silu(w1 x) * w3 x)`, each linear an AdaptedDense."""

from __future__ import annotations

import flax.linen as nn
import jax

from lav2_jax.core.config import AdapterConfig, ModelConfig
from lav2_jax.model.adapted_dense import adapted_dense
from lav2_jax.model.common import constrain, tag


class FeedForward(nn.Module):
    """x [B, T, D] → [B, T, D] through hidden size F = config.hidden_dim."""

    config: ModelConfig
    adapter: AdapterConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, a = self.config, self.adapter
        dense = lambda name, f, axes: adapted_dense(a, name, f, axes, c.weight_dtype, c.dtype)  # noqa: E731
        gate = dense("w1", c.hidden_dim, ("embed", "mlp"))(x)
        up = dense("w3", c.hidden_dim, ("embed", "mlp"))(x)
        h = constrain(jax.nn.silu(gate) * up, ("act_batch", "act_length", "act_mlp"))
        return tag(dense("w2", c.dim, ("mlp", "embed"))(h), "ffn_out")
