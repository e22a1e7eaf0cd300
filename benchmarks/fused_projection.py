"""Probe: do fused projections (wq|wk|wv, w1|w3 as one wider matmul) pay on XLA:CPU? (configuration M sizes)

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/fused_projection.py [--rows 1,1024] [--iters 20]

For each row count: median time of the separate projections (three / two jitted dots on the same input) against
one dot on the concatenated kernel plus the slices, float32, forward only, in the same process, alternating.
Configuration M (`bench-m`): dim 2048, 32 query heads and 4 kv heads of 64 (k/v projections 256 wide), FFN 5632.
The concatenation is done once outside the timed function (as a decode/compute view would), so only the matmul
shapes differ.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def median_time(fn, args, iters: int) -> float:
    import jax
    import numpy as np

    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,1024")
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args()
    import jax
    import jax.numpy as jnp

    from lav2_jax.core import presets

    c = presets.get_model("bench-m")
    D, Q, KV, F = c.dim, c.n_heads * c.head_dim, c.kv_heads * c.head_dim, c.hidden_dim
    key = jax.random.split(jax.random.PRNGKey(0), 6)
    wq, wk, wv = (jax.random.normal(k, (D, n)) * 0.02 for k, n in zip(key[:3], (Q, KV, KV)))
    w1, w3 = (jax.random.normal(k, (D, F)) * 0.02 for k in key[3:5])
    wqkv, w13 = jnp.concatenate([wq, wk, wv], 1), jnp.concatenate([w1, w3], 1)

    sep_qkv = jax.jit(lambda x, a, b, c_: (x @ a, x @ b, x @ c_))
    fused_qkv = jax.jit(lambda x, w: jnp.split(x @ w, [Q, Q + KV], axis=-1))
    sep_13 = jax.jit(lambda x, a, b: jax.nn.silu(x @ a) * (x @ b))
    fused_13 = jax.jit(lambda x, w: (lambda h: jax.nn.silu(h[..., :F]) * h[..., F:])(x @ w))

    print(f"# fused projections, bench-m sizes (D={D}, q {Q}, k/v {KV}, ffn {F}), float32, XLA:CPU, "
          f"{os.cpu_count()} CPUs; medians of {args.iters}; the machine may be shared: compare within a row")
    print("| rows | projection | separate ms | fused ms | fused / separate |")
    print("| --- | --- | --- | --- | --- |")
    for rows in (int(r) for r in args.rows.split(",")):
        x = jax.random.normal(key[5], (rows, D))
        for name, sep, sep_args, fused, fused_args in (
                ("wq|wk|wv", sep_qkv, (x, wq, wk, wv), fused_qkv, (x, wqkv)),
                ("w1|w3", sep_13, (x, w1, w3), fused_13, (x, w13))):
            a = median_time(sep, sep_args, args.iters)
            b = median_time(fused, fused_args, args.iters)
            a2 = median_time(sep, sep_args, args.iters)  # again, so a load change shows as a spread
            sep_ms = 1e3 * min(a, a2)
            print(f"| {rows} | {name} | {sep_ms:.3f} | {1e3 * b:.3f} | {1e3 * b / sep_ms:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
