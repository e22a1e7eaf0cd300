"""Rotary position embedding (docs/design.md §2.2).

Internal layout: the *half-split* ("rotate_half") layout of Hugging Face checkpoints: within each head, dimension
`i` pairs with `i + head_dim/2`. Meta checkpoints pair adjacent dims `(2i, 2i+1)`; their wq/wk rows (and any q/k
bias, LoRA-B rows or output-side scale) are permuted at load time by the converters
(`w_hf = w_meta.reshape(n_heads, hd//2, 2, dim).transpose(0, 2, 1, 3).reshape(n_heads*hd, dim)`). Dot products
between rotated q and k are identical in both layouts, so logits do not depend on the choice.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_angles(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """positions [B, T] int → (cos, sin), each [B, T, head_dim] float32 in the half-split layout."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))  # [hd/2]
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    angles = jnp.concatenate([angles, angles], axis=-1)  # [B, T, hd]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, heads, hd]; cos/sin [B, T, hd] → rotated x in x's dtype (computed in float32)."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)
