"""Where the lav2_jax CPU train step spends its time: per-op CPU seconds of one step, by kind of work.

    .venv/bin/python benchmarks/step_profile.py [--config s] [--stream equal|alpaca|alpaca-prompt]
        [--position-chunk 32] [--steps 2] [--top 0]

The step is the lav2_jax row of `benchmarks/train_step.py` (same model, settings and batches: `build_jax`), run on
ONE thread (`--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`, the process pinned to one core), so
the op times add up to the step's CPU time instead of overlapping. `--steps` steps are traced with
`jax.profiler` (XLA:CPU op events, `--xla_cpu_enable_xprof_traceme`); every op of the compiled step is classified by
its HLO metadata (the module path and einsum in `op_name`):

  trunk matmul          wq wk wv wo w1 w2 w3 (forward and input gradients)
  head matmul           the output head `btd,dc->btc` (whole-row loss) or the loss-position head `md,dc->mc`
  attention matmul      scores and probabilities × values, causal blocks and adapter prompts
  attention other       softmax, masks, RoPE, gates, and the layout copies around the head-major matmuls
  ffn elementwise       SiLU, products, the linears' bias and scale
  rmsnorm, loss softmax/CE, optimizer/other (AdamW, NaN guard, gradient norms)

It prints one table (CPU s per step and share) and, with `--top N`, the N most expensive ops.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true "
                           "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def op_table(hlo_text: str) -> dict[str, tuple[str, str]]:
    """instruction name → (opcode, `op_name` metadata) over every computation of an optimized HLO module."""
    out = {}
    for m in re.finditer(r"^\s+(?:ROOT )?%(\S+) = (?:\([^)]*\)|\S+) ([\w-]+)\((.*)$", hlo_text, re.M):
        o = re.search(r'op_name="([^"]*)"', m.group(3))
        out[m.group(1)] = (m.group(2), o.group(1) if o else "")
    return out


def category(name: str, op: str) -> str:
    dot = name.startswith("ynn_fusion") or name.startswith("dot") or "dot_general" in op
    trunk = "Transformer" in op
    if dot and any(e in op for e in ("btd,dc->btc", "md,dc->mc", "mc,dc->md", "md,mc->dc")):
        return "head matmul"
    if dot and ("BKGT" in op or "BTKG" in op):
        return "attention matmul"
    if dot and trunk and "dot_general" in op:
        return "trunk matmul"
    if "attention_norm" in op or "ffn_norm" in op or re.search(r"Transformer\)\)?/norm/", op):
        return "rmsnorm"
    if "/attention/" in op:
        return "attention other (softmax, masks, RoPE, layout copies)"
    if "feed_forward" in op:
        return "ffn elementwise"
    if trunk:
        return "other trunk (residual adds, embedding)"
    if "jvp(" in op or "transpose(" in op or "loss" in op:
        return "loss softmax/CE"
    return "optimizer/other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="s", choices=("s", "m"))
    p.add_argument("--stream", default="equal", choices=("equal", "alpaca", "alpaca-prompt"))
    p.add_argument("--position-chunk", type=int, default=32)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--top", type=int, default=0)
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})

    import jax
    from jax.profiler import ProfileData

    import train_step as ts
    from lav2_jax.train.mesh import global_batch

    mode = {"equal": "equal", "alpaca": "packed", "alpaca-prompt": "packed-prompt"}[args.stream]
    setup, state, key, mesh, batches = ts.build_jax(args.config, mode, position_chunk=args.position_chunk,
                                                    n_batches=1)
    batch = global_batch({key: batches[0][0]}, mesh)
    ops = op_table(setup.train_step.lower(state, setup.frozen, batch).compile().as_text())
    for _ in range(2):  # compile and warm up
        state, m = setup.train_step(state, setup.frozen, batch)
        jax.block_until_ready((state, m))
    trace = tempfile.mkdtemp(prefix="step_profile_")
    jax.profiler.start_trace(trace)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        state, m = setup.train_step(state, setup.frozen, batch)
        jax.block_until_ready((state, m))
    wall, cpu = (time.perf_counter() - t0) / args.steps, (time.process_time() - c0) / args.steps
    jax.profiler.stop_trace()

    per_cat, per_op = collections.Counter(), collections.Counter()
    data = ProfileData.from_file(sorted(glob.glob(f"{trace}/**/*.xplane.pb", recursive=True))[-1])
    for plane in data.planes:
        for line in plane.lines if plane.name == "/host:CPU" else ():
            for e in line.events:
                st = dict(e.stats)
                if st.get("hlo_module") != "jit_step" or "hlo_op" not in st:
                    continue
                opcode, op = ops.get(st["hlo_op"], ("", ""))
                if opcode in ("while", "conditional", "call"):  # their bodies' ops have events of their own
                    continue
                s = e.duration_ns / 1e9 / args.steps
                per_cat[category(st["hlo_op"], op)] += s
                per_op[(re.sub(r"\.\d+$", "", st["hlo_op"]), re.sub(r"layers_\d+", "layers_N", op))] += s
    total = sum(per_cat.values())
    print(f"# lav2_jax train step, config {args.config.upper()}, stream {args.stream} "
          f"({'×'.join(map(str, batches[0][0]['tokens'].shape))}, {batches[0][1]} real / {batches[0][2]} loss "
          f"tokens), loss.position_chunk={args.position_chunk}, one thread; load "
          f"{os.getloadavg()[0]:.1f}; per step: {wall:.3f} s wall, {cpu:.3f} s CPU, {total:.3f} s in XLA ops")
    print("| work | CPU s / step | share |\n| --- | --- | --- |")
    for k, v in per_cat.most_common():
        print(f"| {k} | {v:.3f} | {v / total:.1%} |")
    for (name, op), v in per_op.most_common(args.top):
        print(f"# {v:7.3f} s  {name:28s} {op[-100:]}")


if __name__ == "__main__":
    main()
