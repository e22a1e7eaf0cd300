"""Token cross-entropy over answer tokens (DESIGN.md §3: loss only on answer and EOS tokens).

The vocabulary projection is done here, not in the model (`Transformer(..., return_hidden=True)` gives the final-normed
hidden states), so the float32 logits `[B, T, V]` never materialise whole: the vocabulary is cut into chunks of
`vocab_chunk` columns and a `lax.scan` keeps a running (max, sum-exp, target-logit) per token. The scan body is
rematerialised (`jax.checkpoint`), so the backward pass recomputes one `[B, T, chunk]` block at a time instead of
storing all of them. With 32000 words, B·T = 1024 and chunks of 4000, the largest logits block is 16 MiB instead of
131 MiB.

`token_loss_sums` returns the *sum* of per-token losses and the number of counted tokens, so gradient accumulation
and data parallelism can divide once by the total count (mean per token over the whole global batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def chunk_size(vocab: int, requested: int) -> int:
    """The largest divisor of `vocab` that is ≤ `requested` (0 or ≥ vocab: no chunking)."""
    if requested <= 0 or requested >= vocab:
        return vocab
    for c in range(requested, 0, -1):
        if vocab % c == 0:
            return c
    return vocab


def _logits(hidden: jax.Array, kernel: jax.Array) -> jax.Array:
    """hidden [B, T, D] × kernel [D, C] → float32 logits [B, T, C] (inputs in the kernel's dtype)."""
    return jnp.einsum("btd,dc->btc", hidden.astype(kernel.dtype), kernel, preferred_element_type=jnp.float32)


def token_cross_entropy(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, vocab_chunk: int = 0) -> jax.Array:
    """Per-token cross-entropy [B, T] float32 of `softmax(hidden @ kernel)` against `targets` [B, T] int.

    hidden [B, T, D]; kernel [D, V] (the frozen output head, any dtype); `vocab_chunk` columns per chunk.
    """
    V = kernel.shape[-1]
    c = chunk_size(V, vocab_chunk)
    if c == V:
        logits = _logits(hidden, kernel)
        lse = jax.nn.logsumexp(logits, axis=-1)
        tgt = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        return lse - tgt

    n = V // c
    chunks = kernel.reshape(kernel.shape[0], n, c).transpose(1, 0, 2)  # [n, D, C]
    B, T = targets.shape

    @jax.checkpoint
    def body(carry, xs):
        m, s, tgt = carry
        k, start = xs
        logits = _logits(hidden, k)  # [B, T, C]
        m_new = jnp.maximum(m, jax.lax.stop_gradient(logits.max(-1)))
        s = s * jnp.exp(m - m_new) + jnp.exp(logits - m_new[..., None]).sum(-1)
        local = targets - start
        inside = (local >= 0) & (local < c)
        picked = jnp.take_along_axis(logits, jnp.clip(local, 0, c - 1)[..., None], axis=-1)[..., 0]
        tgt = tgt + jnp.where(inside, picked, 0.0)
        return (m_new, s, tgt), None

    init = (jnp.full((B, T), -jnp.inf, jnp.float32), jnp.zeros((B, T), jnp.float32), jnp.zeros((B, T), jnp.float32))
    starts = jnp.arange(n, dtype=targets.dtype) * c
    (m, s, tgt), _ = jax.lax.scan(body, init, (chunks, starts))
    return m + jnp.log(s) - tgt


def token_loss_sums(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, loss_mask: jax.Array,
                    vocab_chunk: int = 0) -> tuple[jax.Array, jax.Array]:
    """(sum of masked per-token losses, number of masked tokens), both float32 scalars."""
    ce = token_cross_entropy(hidden, kernel, targets, vocab_chunk)
    mask = loss_mask.astype(jnp.float32)
    return jnp.sum(ce * mask), jnp.sum(mask)


def mean_token_loss(hidden, kernel, targets, loss_mask, vocab_chunk: int = 0) -> jax.Array:
    """Mean per counted token (0 when no token counts)."""
    total, n = token_loss_sums(hidden, kernel, targets, loss_mask, vocab_chunk)
    return total / jnp.maximum(n, 1.0)
