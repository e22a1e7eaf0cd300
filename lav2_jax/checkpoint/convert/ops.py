"""Array transforms shared by the converters and exporters (docs/design.md §2.2 RoPE layouts, §7.2 shard axes).

Torch linear weights are [out, in]; our kernels [in, out]. Meta checkpoints (and the released adapter files) pair
adjacent RoPE dims (2i, 2i+1); we use the half-split layout, so q/k *output* rows are permuted per head:
`meta_to_half(w, n)` on rows of wq / wk (k with n_kv_heads), on a q/k bias, on LoRA-B rows; `half_to_meta` undoes it.
"""

from __future__ import annotations

import numpy as np


def meta_to_half(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows [n*hd, ...] in Meta's interleaved order → half-split order, per head."""
    rest = w.shape[1:]
    hd = w.shape[0] // n_heads
    return w.reshape((n_heads, hd // 2, 2) + rest).swapaxes(1, 2).reshape(w.shape)


def half_to_meta(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of `meta_to_half`."""
    rest = w.shape[1:]
    hd = w.shape[0] // n_heads
    return w.reshape((n_heads, 2, hd // 2) + rest).swapaxes(1, 2).reshape(w.shape)


def first(arrays: list) -> np.ndarray:
    """Replicated tensors (norms of model-parallel shards): shard 0."""
    return arrays[0]


def cat(axis: int):
    """Concatenates model-parallel shards along `axis` (a single shard passes through)."""
    return lambda arrays: arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=axis)


def linear(axis: int, n_heads: int = 0):
    """Shards of a torch [out, in] weight → our [in, out] kernel (RoPE-permuted rows when n_heads > 0)."""
    join = cat(axis)

    def fn(arrays):
        w = join(arrays)
        return (meta_to_half(w, n_heads) if n_heads else w).T

    return fn


def vector(axis: int = 0, n_heads: int = 0):
    """Shards of a 1-D tensor (bias, scale) → one vector (RoPE-permuted when n_heads > 0)."""
    join = cat(axis)
    return lambda arrays: meta_to_half(join(arrays), n_heads) if n_heads else join(arrays)
