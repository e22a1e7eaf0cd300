"""Why batch-1 decoding on XLA:CPU trails: a matvec over per-layer dynamic slices of stacked weights (the layer scan)
against the same matvecs over separate per-layer arrays. Prints a table (median of 30 after warm-up).

    .venv/bin/python benchmarks/scan_matvec.py [--layers 12 --dim 768 --hidden 2048]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def median_seconds(fn, *args, iters: int = 30) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--hidden", type=int, default=2048)
    a = p.parse_args()
    stacked = jnp.asarray(np.random.default_rng(0).normal(size=(a.layers, a.dim, a.hidden)).astype(np.float32))
    separate = [stacked[i] for i in range(a.layers)]
    x = jnp.ones((1, a.dim), jnp.float32)

    @jax.jit
    def scanned(ws, x):
        return jax.lax.scan(lambda c, w: (c + jnp.tanh(x @ w).sum(), None), 0.0, ws)[0]

    @jax.jit
    def unstacked(ws, x):
        return sum(jnp.tanh(x @ w).sum() for w in ws)

    mib = a.layers * a.dim * a.hidden * 4 / 2 ** 20
    print(f"# {a.layers} layers of {a.dim}×{a.hidden} float32 ({mib:.0f} MiB), x [1, {a.dim}]; jax {jax.__version__}, "
          f"{jax.devices()[0].platform}")
    print("| layout | median ms | weight read GiB/s |\n| --- | ---: | ---: |")
    for name, fn, ws in (("lax.scan over stacked [L, D, F]", scanned, stacked),
                         ("separate per-layer arrays", unstacked, separate)):
        t = median_seconds(fn, ws, x)
        print(f"| {name} | {t * 1e3:.2f} | {mib / 1024 / t:.1f} |")


if __name__ == "__main__":
    main()
