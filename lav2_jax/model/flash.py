"""Causal attention through the Pallas TPU splash (flash) kernel (`ModelConfig.attention="flash"`,
docs/design.md §2.3).

The kernel never materialises the [T, S] score matrix: per-chip temporary memory grows with T instead of T², which
is what lets 2,048–4,096-token rows (LLaVA-style: 576 image tokens + text) train without the XLA attention's
[B, N, T, T] float32 scores. Grouped-query attention runs the kernel's multi-query form once per kv head (its G
query heads share that head's keys/values). Segment ids (packed rows) are the kernel's own `SegmentIds`, and-ed with
the causal mask. Only the causal part runs here; the gated prompt attention (a separate softmax over a few prompt
tokens) stays in XLA.

Under a mesh (`jax.set_mesh`) the kernel runs inside `shard_map`: rows split over (data, fsdp), kv heads over
tensor when they divide — a Pallas call cannot be partitioned by XLA itself. `interpret=True` (the CPU fallback
the tests use) runs the same kernel in the Pallas interpreter.

Shapes: q [B, T, K, G, H] (already scaled by 1/sqrt(H)), k, v [B, T, K, H], segment_ids [B, T] → [B, T, K, G, H].
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def block_size(T: int) -> int:
    """Kernel tile along both sequence axes: 512 when it divides T, else the largest of 256 / 128 that does."""
    for b in (512, 256, 128):
        if T % b == 0:
            return b
    raise ValueError(f"flash attention needs a sequence length divisible by 128, got {T} "
                     "(set the data pipeline's buckets to multiples of 128, or use attention='xla')")


@functools.lru_cache(maxsize=16)
def _kernel(T: int, groups: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    b = block_size(T)
    sizes = sa.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                          block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    mask = sa.MultiHeadMask([sa.CausalMask((T, T)) for _ in range(groups)])
    return sa.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


def _local(q, k, v, segment_ids, interpret: bool):
    """One shard: q [b, T, K, G, H], k/v [b, T, K, H], segment_ids [b, T] → [b, T, K, G, H]."""
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

    T, G = q.shape[1], q.shape[3]
    kernel = _kernel(T, G, interpret)

    def row(qr, kr, vr, seg):  # qr [K, G, T, H], kr/vr [K, T, H], seg [T]
        ids = SegmentIds(seg, seg)
        return jax.vmap(lambda a, b, c: kernel(a, b, c, segment_ids=ids))(qr, kr, vr)

    out = jax.vmap(row)(q.transpose(0, 2, 3, 1, 4), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), segment_ids)
    return out.transpose(0, 3, 1, 2, 4).astype(q.dtype)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: Optional[jax.Array] = None,
                     interpret: Optional[bool] = None) -> jax.Array:
    """Causal (and same-segment) attention of q over k/v; see the module docstring for shapes."""
    B, T = q.shape[:2]
    if segment_ids is None:
        segment_ids = jnp.ones((B, T), jnp.int32)
    segment_ids = segment_ids.astype(jnp.int32)
    if interpret is None:
        interpret = jax.default_backend() != "tpu" and not _tpu_mesh()
    fn = functools.partial(_local, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(q, k, v, segment_ids)
    names = mesh.axis_names
    rows = tuple(a for a in ("data", "fsdp") if a in names and mesh.shape[a] > 1)
    n_rows = 1
    for a in rows:
        n_rows *= mesh.shape[a]
    if B % n_rows:
        rows = ()
    tp = "tensor" if "tensor" in names and mesh.shape["tensor"] > 1 and k.shape[2] % mesh.shape["tensor"] == 0 \
        else None
    r = rows or None
    spec_q, spec_kv, spec_s = P(r, None, tp, None, None), P(r, None, tp, None), P(r, None)
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec_q, spec_kv, spec_kv, spec_s), out_specs=spec_q,
                         check_vma=False)(q, k, v, segment_ids)


def _tpu_mesh() -> bool:
    """Whether the current mesh's devices are TPUs (an AOT compile for a TPU topology on a CPU host)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return False
    try:
        from jax._src import mesh as mesh_lib

        concrete = mesh_lib.get_concrete_mesh()
        return concrete is not None and not concrete.empty and concrete.devices.flat[0].platform == "tpu"
    except Exception:  # noqa: BLE001 - private API: fall back to "not a TPU mesh"
        return False
