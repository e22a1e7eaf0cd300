"""Packed sequences: several samples per row, told apart by segment ids (docs/design.md §3.3.1: loss per sample).

A packed row holds samples 1..S back to back; `segment_ids` [B, T] int32 gives each token's sample (1-based) and 0
for padding. Positions restart at 0 in every segment, so RoPE sees each sample exactly as it would alone, and the
causal mask becomes "same segment and not later" — a token never attends across samples. The loss needs nothing
extra: every sample carries its own shifted targets and mask.

Per-segment visual prompts (image rows): visual tokens [B, S, Q, D] (segment s's image in slot s-1) are flattened
to [B, S·Q, D] prompt tokens with prompt segment ids [B, S·Q]; a query attends only to its own segment's prompts
(`prompt_mask`), and a segment without an image attends to none (its prompt contribution is exactly zero).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """segment_ids [B, T] → positions [B, T] int32 counting from 0 at each segment's first token.

    Segments are contiguous runs of one id; a new segment starts wherever the id changes."""
    B, T = segment_ids.shape
    idx = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    start = jnp.concatenate([jnp.ones((B, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    first = jax.lax.cummax(jnp.where(start, idx, 0), axis=1)
    return idx - first


def causal_mask(q_pos: jax.Array, k_pos: jax.Array, q_seg: Optional[jax.Array] = None,
                k_seg: Optional[jax.Array] = None) -> jax.Array:
    """Query positions [B, T], key positions [B, S] (and segment ids of both) → mask [B, 1, 1, T, S] bool:
    key not later than query, and (when segment ids are given) in the same segment."""
    mask = k_pos[:, None, :] <= q_pos[:, :, None]
    if q_seg is not None:
        mask = mask & (k_seg[:, None, :] == q_seg[:, :, None])
    return mask[:, None, None]


def flatten_segment_prompts(tokens: jax.Array, on: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Per-segment prompt tokens [B, S, Q, D] (and per-segment flags `on` [B, S]) → tokens [B, S·Q, D] and prompt
    segment ids [B, S·Q] int32 (segment s's tokens carry id s; tokens of a segment whose flag is off carry -1,
    which no query matches)."""
    B, S, Q, D = tokens.shape
    ids = jnp.broadcast_to(jnp.arange(1, S + 1, dtype=jnp.int32)[None, :, None], (B, S, Q))
    if on is not None:
        ids = jnp.where(on[:, :, None] > 0, ids, -1)
    return tokens.reshape(B, S * Q, D), ids.reshape(B, S * Q)


def prompt_mask(q_seg: jax.Array, p_seg: jax.Array) -> jax.Array:
    """Query segment ids [B, T], prompt segment ids [B, P] → [B, 1, 1, T, P] bool (prompt in the query's segment)."""
    return (q_seg[:, :, None] == p_seg[:, None, :])[:, None, None]
