"""Why batch-1 prefill on XLA:CPU trails torch: float32 matmuls with few rows (M = prompt tokens × batch), at the
shapes of one bench-m (docs/design.md §9 "M") decoder layer, jitted `x @ W` in JAX vs `x @ W` in torch (2 threads), same
process. Prints a table of GFLOP/s (median of `--iters` after one warm-up).

    .venv/bin/python benchmarks/small_matmul.py [--rows 1,8,32,256] [--iters 15]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# bench-m linears (dim 2048, 32 heads of 64, 4 KV heads, FFN 5632): (name, in, out)
SHAPES = (("wq / wo", 2048, 2048), ("wk / wv", 2048, 256), ("w1 / w3", 2048, 5632), ("w2", 5632, 2048))


def median_seconds(fn, iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1,8,32,256")
    ap.add_argument("--iters", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    matmul = jax.jit(lambda x, w: x @ w)
    print(f"jax {jax.__version__} (XLA:CPU), torch {torch.__version__} ({torch.get_num_threads()} threads), float32")
    print("| linear | rows M | in K | out N | jax GFLOP/s | torch GFLOP/s | jax / torch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m in (int(r) for r in args.rows.split(",")):
        for name, k, n in SHAPES:
            x, w = jnp.ones((m, k)), jnp.ones((k, n))
            tx, tw = torch.ones(m, k), torch.ones(k, n)
            flops = 2 * m * k * n
            tj = median_seconds(lambda: matmul(x, w).block_until_ready(), args.iters)
            with torch.no_grad():
                tt = median_seconds(lambda: tx @ tw, args.iters)
            print(f"| {name} | {m} | {k} | {n} | {flops / tj / 1e9:.0f} | {flops / tt / 1e9:.0f} | {tt / tj:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
