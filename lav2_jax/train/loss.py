"""Token cross-entropy over answer tokens (docs/design.md §3.3.1: loss only on answer and EOS tokens).

The vocabulary projection is done here, not in the model (`Transformer(..., return_hidden=True)` gives the final-normed
hidden states), so the float32 logits `[B, T, V]` never materialise whole: the vocabulary is cut into chunks of
`vocab_chunk` columns and a `lax.scan` keeps a running (max, sum-exp, target-logit) per token. The scan body is
rematerialised (`jax.checkpoint`), so the backward pass recomputes one `[B, T, chunk]` block at a time instead of
storing all of them. With 32000 words, B·T = 1024 and chunks of 4000, the largest logits block is 16 MiB instead of
131 MiB.

`token_loss_sums` returns the *sum* of per-token losses and the number of counted tokens, so gradient accumulation
and data parallelism can divide once by the total count (mean per token over the whole global batch).

Instruction data counts the response only (docs/design.md §3.3.1), so the head is wasted on prompt and padding
positions. With `position_chunk = P > 0` (`loss_position_sums`) each row's loss positions are moved to its front (a
stable sort of the row by "masked", a permutation), the rows are cut into chunks of P positions, and a loop runs
only over the chunks that hold a loss position in some row (ceil(max loss positions per row / P) of them: a dynamic
trip count, static shapes). Each chunk computes its logits [B·P, V] once and, in the same pass, the loss's gradient
with respect to the hidden states ((softmax - onehot)·mask @ kernelᵀ, a `jax.custom_vjp`), so nothing is stored for
the backward pass and nothing recomputed; the head's own gradient is a second loop in the backward pass, which XLA
removes when the head is frozen. The result equals the whole-row loss up to summation order. The sort is per row, so
batch-sharded rows stay on their devices; `vocab_chunk` composes (two passes over the vocabulary blocks per position
chunk: log-sum-exp, then the gradients).
"""

from __future__ import annotations

import functools

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
    """hidden [..., D] × kernel [D, C] → float32 logits [..., C] (inputs in the kernel's dtype)."""
    return jnp.einsum("...d,dc->...c", hidden.astype(kernel.dtype), kernel, preferred_element_type=jnp.float32)


def _lse_and_target(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """logits [..., V] float32, targets [...] → (log-sum-exp, target logit), each [...].

    A target outside the vocabulary (a spliced system's image placeholder, e.g. LLaVA's 32000 over 32000 words; its
    loss is masked) reads a clipped column, so the masked product stays finite (the default gather fills NaN)."""
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1, mode="clip")[..., 0]
    return jax.nn.logsumexp(logits, axis=-1), picked


def _blocked_lse_and_target(hidden: jax.Array, kernel: jax.Array, targets: jax.Array,
                            c: int) -> tuple[jax.Array, jax.Array]:
    """`_lse_and_target` of hidden [..., D] @ kernel [D, V] without the [..., V] logits: a scan over V / c blocks
    of c columns keeping a running (max, sum-exp, target logit) per token."""
    n = kernel.shape[-1] // c
    chunks = kernel.reshape(kernel.shape[0], n, c).transpose(1, 0, 2)  # [n, D, C]

    @jax.checkpoint
    def body(carry, xs):
        m, s, tgt = carry
        k, start = xs
        logits = _logits(hidden, k)  # [..., C]
        m_new = jnp.maximum(m, jax.lax.stop_gradient(logits.max(-1)))
        s = s * jnp.exp(m - m_new) + jnp.exp(logits - m_new[..., None]).sum(-1)
        local = targets - start
        inside = (local >= 0) & (local < c)
        picked = jnp.take_along_axis(logits, jnp.clip(local, 0, c - 1)[..., None], axis=-1)[..., 0]
        tgt = tgt + jnp.where(inside, picked, 0.0)
        return (m_new, s, tgt), None

    shape = targets.shape
    init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))
    starts = jnp.arange(n, dtype=targets.dtype) * c
    (m, s, tgt), _ = jax.lax.scan(body, init, (chunks, starts))
    return m + jnp.log(s), tgt


def token_cross_entropy(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, vocab_chunk: int = 0) -> jax.Array:
    """Per-token cross-entropy [B, T] float32 of `softmax(hidden @ kernel)` against `targets` [B, T] int.

    hidden [B, T, D]; kernel [D, V] (the frozen output head, any dtype); `vocab_chunk` columns per chunk.
    """
    V = kernel.shape[-1]
    c = chunk_size(V, vocab_chunk)
    lse, tgt = _lse_and_target(_logits(hidden, kernel), targets) if c == V else _blocked_lse_and_target(
        hidden, kernel, targets, c)
    return lse - tgt


def loss_positions_first(loss_mask: jax.Array, chunk: int) -> jax.Array:
    """order [B, Tp] int32 (Tp = T rounded up to a multiple of `chunk`): row b's loss positions (mask ≠ 0) first in
    their order, then the rest; indices ≥ T name padding positions appended to the row."""
    B, T = loss_mask.shape
    masked = jnp.pad(loss_mask == 0, ((0, 0), (0, -T % chunk)), constant_values=True)
    return jnp.argsort(masked, axis=1, stable=True).astype(jnp.int32)


def _permute_rows(x: jax.Array, order: jax.Array) -> jax.Array:
    """x [B, T, ...] → [B, Tp, ...] with row positions in `order` (zeros where order ≥ T)."""
    x = jnp.pad(x, ((0, 0), (0, order.shape[1] - x.shape[1])) + ((0, 0),) * (x.ndim - 2))
    return jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)


def _head_blocks(h, kernel, t, m, c: int, want):
    """One position chunk, h [M, D], t / m [M], vocabulary blocks of c columns: (loss sum, dL/dh [M, D] f32,
    dL/dkernel [D, V] f32), each only where `want` names it ("dh", "dk"); dL/dlogits = (softmax - onehot)·m."""
    D, V = kernel.shape

    def grads(logits, k, start, lse):
        g = (jnp.exp(logits - lse[:, None]) - jax.nn.one_hot(t - start, logits.shape[-1], dtype=jnp.float32))
        g = (g * m[:, None]).astype(k.dtype)
        dh = jnp.einsum("mc,dc->md", g, k, preferred_element_type=jnp.float32) if "dh" in want else None
        dk = jnp.einsum("md,mc->dc", h.astype(k.dtype), g, preferred_element_type=jnp.float32) if "dk" in want else None
        return dh, dk

    if c == V:  # one block: the logits once
        logits = _logits(h, kernel)
        lse, tgt = _lse_and_target(logits, t)
        return (jnp.sum((lse - tgt) * m),) + grads(logits, kernel, 0, lse)
    lse, tgt = _blocked_lse_and_target(h, kernel, t, c)  # pass 1: log-sum-exp and target logits over the blocks
    blocks = kernel.reshape(D, V // c, c).transpose(1, 0, 2)  # [n, D, c]
    starts = jnp.arange(V // c, dtype=t.dtype) * c

    def body(dh_acc, xs):  # pass 2: the blocks again, now with the final lse
        k, start = xs
        dh, dk = grads(_logits(h, k), k, start, lse)
        return (dh_acc if dh is None else dh_acc + dh), dk

    (dh, dk) = jax.lax.scan(body, jnp.zeros((h.shape[0], D) if "dh" in want else (), jnp.float32), (blocks, starts))
    dk = None if "dk" not in want else dk.transpose(1, 0, 2).reshape(D, V)
    return jnp.sum((lse - tgt) * m), (dh if "dh" in want else None), dk


def _over_loss_chunks(hidden, kernel, targets, mask, P: int, vocab_chunk: int, want=()):
    """Loop over the position chunks that hold a loss position (a dynamic trip count): (loss sum, dL/dhidden
    [B, T, D] f32 | None, dL/dkernel [D, V] f32 | None)."""
    B, T, D = hidden.shape
    c = chunk_size(kernel.shape[-1], vocab_chunk)
    order = loss_positions_first(mask, P)
    h, t, m = (_permute_rows(x, order) for x in (hidden, targets, mask))
    n_active = (jnp.max(jnp.sum(mask != 0, axis=1)).astype(jnp.int32) + P - 1) // P

    def body(i, acc):
        loss, dh, dk = acc
        sl = [jax.lax.dynamic_slice_in_dim(x, i * P, P, axis=1) for x in (h, t, m)]
        l_c, dh_c, dk_c = _head_blocks(sl[0].reshape(B * P, D), kernel, sl[1].reshape(-1), sl[2].reshape(-1), c,
                                       want)
        if dh_c is not None:
            dh = jax.lax.dynamic_update_slice_in_dim(dh, dh_c.reshape(B, P, D), i * P, axis=1)
        return loss + l_c, dh, (dk if dk_c is None else dk + dk_c)

    init = (jnp.zeros((), jnp.float32), jnp.zeros(h.shape if "dh" in want else (), jnp.float32),
            jnp.zeros(kernel.shape if "dk" in want else (), jnp.float32))
    loss, dh, dk = jax.lax.fori_loop(0, n_active, body, init)
    if "dh" in want:  # back to the row order: the inverse permutation
        dh = jnp.take_along_axis(dh, jnp.argsort(order, axis=1)[..., None], axis=1)[:, :T]
    return loss, (dh if "dh" in want else None), (dk if "dk" in want else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def loss_position_sums(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, loss_mask: jax.Array,
                       position_chunk: int, vocab_chunk: int = 0) -> jax.Array:
    """Sum of masked per-token losses, the head run only on chunks of `position_chunk` positions per row that hold
    a loss position (see the module docstring). hidden [B, T, D], kernel [D, V], targets / loss_mask [B, T]."""
    return _over_loss_chunks(hidden, kernel, targets, loss_mask, position_chunk, vocab_chunk)[0]


def _fwd(hidden, kernel, targets, loss_mask, position_chunk, vocab_chunk):
    loss, dh, _ = _over_loss_chunks(hidden, kernel, targets, loss_mask, position_chunk, vocab_chunk, ("dh",))
    return loss, (dh, hidden, kernel, targets, loss_mask)


def _bwd(position_chunk, vocab_chunk, res, ct):
    dh, hidden, kernel, targets, loss_mask = res
    # a second pass for the head's gradient; XLA drops it when the head is frozen (its result unused)
    dk = _over_loss_chunks(hidden, kernel, targets, loss_mask, position_chunk, vocab_chunk, ("dk",))[2]
    return (ct * dh).astype(hidden.dtype), (ct * dk).astype(kernel.dtype), None, None


loss_position_sums.defvjp(_fwd, _bwd)


def token_loss_sums(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, loss_mask: jax.Array,
                    vocab_chunk: int = 0, position_chunk: int = 0) -> tuple[jax.Array, jax.Array]:
    """(sum of masked per-token losses, number of masked tokens), both float32 scalars; `position_chunk` > 0 runs
    the head at loss positions only (`loss_position_sums`)."""
    mask = loss_mask.astype(jnp.float32)
    if position_chunk > 0:
        return loss_position_sums(hidden, kernel, targets, mask, position_chunk, vocab_chunk), jnp.sum(mask)
    ce = token_cross_entropy(hidden, kernel, targets, vocab_chunk)
    return jnp.sum(ce * mask), jnp.sum(mask)


def mean_token_loss(hidden, kernel, targets, loss_mask, vocab_chunk: int = 0, position_chunk: int = 0) -> jax.Array:
    """Mean per counted token (0 when no token counts)."""
    total, n = token_loss_sums(hidden, kernel, targets, loss_mask, vocab_chunk, position_chunk)
    return total / jnp.maximum(n, 1.0)
