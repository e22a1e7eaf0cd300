"""Causal attention in query blocks, for XLA:CPU training (`ModelConfig.attention="blocked"`; docs/design.md §2.3).

Without a cache the rows are causal in their own order: positions increase along a row (within each segment of a
packed row, `lav2_jax.model.segments`), so query i never sees a key j > i. Cutting the T queries into blocks of
`block` rows, block b = [s, e) needs keys [0, e) only: the score blocks above the diagonal are never computed. At
T = 512 with blocks of 128 that is 10/16 of the full T × T scores and probabilities (forward and backward), at
T = 256 3/4. Scores run heads-major ([B, K, G, T, S]: one contiguous matmul per head) in float32 with the same
mask, large negative fill and softmax as the plain XLA path, so the result equals it whenever positions increase
along each row (segment), which the default positions and the packer's both do.

Shapes: B batch, T tokens, K kv heads, G query heads per kv head, H head dim.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from lav2_jax.model.segments import causal_mask

BLOCK = 128  # query rows per block


def blocked_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, positions: jax.Array,
                             segment_ids: Optional[jax.Array] = None, block: Optional[int] = None) -> jax.Array:
    """q [B, T, K, G, H] (already scaled), k, v [B, T, K, H], positions [B, T], segment_ids [B, T] | None
    → [B, T, K, G, H] in q's dtype; query block [s, e) attends to keys [0, e) under `causal_mask` (`block`
    rows per block, default `BLOCK`)."""
    T, block = q.shape[1], block or BLOCK
    qh = jnp.transpose(q, (0, 2, 3, 1, 4))  # [B, K, G, T, H]
    kh, vh = jnp.transpose(k, (0, 2, 1, 3)), jnp.transpose(v, (0, 2, 1, 3))  # [B, K, T, H]
    outs = []
    for s in range(0, T, block):
        e = min(s + block, T)
        scores = jnp.einsum("BKGTH,BKSH->BKGTS", qh[:, :, :, s:e], kh[:, :, :e], preferred_element_type=jnp.float32)
        seg_q = None if segment_ids is None else segment_ids[:, s:e]
        seg_k = None if segment_ids is None else segment_ids[:, :e]
        mask = causal_mask(positions[:, s:e], positions[:, :e], seg_q, seg_k)  # [B, 1, 1, e-s, e]
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
        outs.append(jnp.einsum("BKGTS,BKSH->BKGTH", probs, vh[:, :, :e]))
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return jnp.transpose(out, (0, 3, 1, 2, 4))
