"""Causal attention over packed rows written from its definition, in float64 numpy, for the attention-kernel tests.

A packed row holds samples back to back; `segment_ids` [B, T] gives each token's sample (1, 2, ...) and 0 for
padding. Query i may attend key j iff j <= i, both are in the same sample, and j is not padding. A padding query
attends nothing here (its output is zero): the kernels' padding rows are not part of the contract. Positions count
from 0 at the first token of every contiguous run of one id.

Shapes: B batch, T tokens, K kv heads, G query heads per kv head, H head dim; q [B, T, K, G, H] already scaled,
k, v [B, T, K, H] (query head (k, g) reads kv head k).
"""

from __future__ import annotations

import numpy as np


def allowed(segment_ids) -> np.ndarray:
    """[B, T] → [B, T, T] bool: entry (b, i, j) says whether query i of row b may attend key j."""
    seg = np.asarray(segment_ids)
    B, T = seg.shape
    out = np.zeros((B, T, T), bool)
    for b in range(B):
        for i in range(T):
            for j in range(i + 1):
                out[b, i, j] = seg[b, j] != 0 and seg[b, j] == seg[b, i]
    return out


def positions(segment_ids) -> np.ndarray:
    """[B, T] → [B, T] int: 0 at the first token of each contiguous run of one id, then 1, 2, ..."""
    seg = np.asarray(segment_ids)
    out = np.zeros(seg.shape, np.int64)
    for b in range(seg.shape[0]):
        for t in range(1, seg.shape[1]):
            out[b, t] = out[b, t - 1] + 1 if seg[b, t] == seg[b, t - 1] else 0
    return out


def _probs(q, k, mask):
    """Softmax over the allowed keys only; rows with no allowed key are all zero. [B, K, G, T, S] float64."""
    s = np.einsum("btkgh,bskh->bkgts", q, k)
    m = np.broadcast_to(mask[:, None, None], s.shape)
    s = np.where(m, s, -np.inf)
    top = np.max(s, axis=-1, keepdims=True)
    e = np.where(m, np.exp(s - np.where(np.isfinite(top), top, 0.0)), 0.0)
    total = e.sum(-1, keepdims=True)
    return e / np.where(total > 0, total, 1.0)


def attention(q, k, v, mask) -> np.ndarray:
    """out[b, i, k, g] = Σ_j softmax_j(q_i · k_j over allowed j) v_j, in float64 ([B, T, K, G, H])."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    return np.einsum("bkgts,bskh->btkgh", _probs(q, k, mask), v)


def attention_vjp(q, k, v, mask, d_out):
    """(dq, dk, dv) of Σ attention(q, k, v) · d_out, from the softmax derivative written out: dV = Pᵀ dO,
    dP = dO Vᵀ, dS = P ⊙ (dP − Σ_j dP ⊙ P), dQ = dS K, dK = dSᵀ Q (dK, dV summed over the G query heads)."""
    q, k, v, d_out = (np.asarray(x, np.float64) for x in (q, k, v, d_out))
    p = _probs(q, k, mask)
    dv = np.einsum("bkgts,btkgh->bskh", p, d_out)
    dp = np.einsum("btkgh,bskh->bkgts", d_out, v)
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))
    dq = np.einsum("bkgts,bskh->btkgh", ds, k)
    dk = np.einsum("bkgts,btkgh->bskh", ds, q)
    return dq, dk, dv
