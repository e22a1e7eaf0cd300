"""Train-step throughput: lav2_jax vs litgpt `adapter_v2` on the same CPU, same run (DESIGN.md §7).

    .venv/bin/python benchmarks/train_step.py [--configs s,m] [--iters 5] [--warmup 2] [--streams equal,alpaca]

litgpt is not a dependency: `.venv/bin/pip install litgpt==0.5.13` adds its rows; without it they report the
install command and the lav2_jax rows still run.

Streams: `equal` — every row 256 real tokens (equal padded tokens for every implementation). `alpaca` — an
instruction stream whose sample lengths follow an Alpaca-like distribution: log-normal with median 128 tokens and
σ = 0.6, clipped to 24..512 (a stand-in chosen to have most samples well under 200 tokens, like Alpaca; it is not
fitted to the real dataset). Each implementation batches it its default way: lav2_jax packs 4 rows of 512
(`lav2_jax.data.packing`), litgpt pads 4 samples to their longest, and "pad-512" is our own step under the
release's policy (every sample padded to 512). Real tokens/s counts non-padding tokens only.

Configurations (DESIGN.md §7): S = `bench-s`, M = `bench-m` (~1.1B), float32, release-like adapter (bias on wq wo w1
w2 w3, trainable norms, 10 prompt tokens in the last n_layers-1 layers, tanh gates; no vision), one step on
4 × 256 tokens, every adapter leaf trained (`all-adapters`, recipe `full`).
Peer: litgpt 0.5.13 `adapter_v2` GPT with the same sizes (LLaMA MLP, RMSNorm, no linear biases, full RoPE,
prompts from layer 1), `mark_only_adapter_v2_as_trainable`, AdamW; its adapter kv-cache is cleared before every
step (litgpt issue #1287). litgpt's adapter has a bias+scale on *every* linear (incl. wk, wv and the head), so
its trainable set is a little larger; the table lists both counts.

Each measurement runs in its own subprocess (so peak RSS is that framework's alone): median of `--iters` timed
steps after `--warmup` untimed ones (the first includes compilation). MFU = tokens/s × (4·N_matmul + 12·L·T·d)
/ peak, with the peak the best n×n×n float32 matmul rate measured here (JAX and torch, n = 2048).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BATCH, SEQ = 4, 256
PRESETS = {"s": "bench-s", "m": "bench-m"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def model_config(name: str):
    from lav2_jax import presets

    return presets.get_model(PRESETS[name]).replace(weight_dtype="float32", dtype="float32")


ALPACA_MEDIAN, ALPACA_SIGMA, ALPACA_MIN, ALPACA_MAX = 128, 0.6, 24, 512


def alpaca_lengths(n: int, seed: int = 0) -> list[int]:
    """Sample lengths of the Alpaca-like stream (see the module docstring)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = np.exp(np.log(ALPACA_MEDIAN) + ALPACA_SIGMA * rng.standard_normal(n))
    return [int(v) for v in np.clip(np.round(x), ALPACA_MIN, ALPACA_MAX)]


def stream_batch(mode: str, vocab: int) -> tuple[dict, int]:
    """(numpy batch, real tokens) for `mode`: equal (4 × 256), packed (4 × 512 packed), pad512 (4 samples × 512),
    longest (4 samples padded to their longest, litgpt's default)."""
    import numpy as np

    from lav2_jax.data.packing import DROPPED_KEY, Packer

    if mode == "equal":
        rng = np.random.default_rng(0)
        t = rng.integers(3, vocab, (BATCH, SEQ + 1)).astype(np.int32)
        return {"tokens": t[:, :-1], "targets": t[:, 1:], "loss_mask": np.ones((BATCH, SEQ), np.float32)}, BATCH * SEQ
    rng = np.random.default_rng(1)
    samples = []
    for n in alpaca_lengths(256):
        t = rng.integers(3, vocab, n + 1).astype(np.int32)
        samples.append({"tokens": t[:-1], "targets": t[1:], "loss_mask": np.ones(n, np.float32), DROPPED_KEY: 0})
    if mode == "packed":
        packer = Packer(BATCH, 512, (512,), False, None)
        for smp in samples:
            if not packer.add(smp):
                break
        b = packer.batch()
        return {k: v for k, v in b.items() if not k.startswith("_") and k != "has_image"}, int(b["loss_mask"].sum())
    chosen = samples[:BATCH]
    T = 512 if mode == "pad512" else max(len(smp["tokens"]) for smp in chosen)
    out = {k: np.zeros((BATCH, T), np.float32 if k == "loss_mask" else np.int32)
           for k in ("tokens", "targets", "loss_mask")}
    for i, smp in enumerate(chosen):
        for k in out:
            out[k][i, :len(smp[k])] = smp[k]
    return out, int(out["loss_mask"].sum())


def run_jax(name: str, iters: int, warmup: int, mode: str = "equal") -> dict:
    import jax

    from lav2_jax import presets
    from lav2_jax.model.factory import build_model
    from lav2_jax.sharding import make_mesh
    from lav2_jax.train import state as state_lib
    from lav2_jax.train.defaults import base_config, group
    from lav2_jax.train.mesh import global_batch

    cfg = model_config(name)
    adapter = presets.get_adapter("release-bias").replace(visual_fusion="none", prompt_layers=cfg.n_layers - 1)
    model = build_model(cfg, adapter, None)
    c = base_config()
    c.param_recipe, c.recipe, c.total_steps = "all-adapters", "full", 1000
    c.batch.train = BATCH
    c.optim.instruction = group(1e-3, 0.02, warmup_steps=10)
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    setup, state = state_lib.build(c, mesh, model=model)
    rows, real = stream_batch(mode, cfg.vocab_size)
    batch = global_batch({"train": rows}, mesh)
    times = []
    for i in range(warmup + iters):
        t = time.perf_counter()
        state, m = setup.train_step(state, setup.frozen, batch)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t)
    return {"times": times[warmup:], "first_s": times[0], "trainable": setup.counts["instruction"],
            "loss": float(m["loss/train"]), "rss_mb": peak_rss_mb(), "version": f"jax {jax.__version__}",
            "real_tokens": real, "shape": list(rows["tokens"].shape)}


def run_litgpt(name: str, iters: int, warmup: int, mode: str = "equal") -> dict:
    try:
        import litgpt
    except ImportError:
        return {"error": "litgpt is not installed: .venv/bin/pip install litgpt==0.5.13"}
    import torch
    import torch.nn.functional as F
    from litgpt.adapter_v2 import GPT, Config, mark_only_adapter_v2_as_trainable

    cfg = model_config(name)
    config = Config(n_embd=cfg.dim, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_query_groups=cfg.kv_heads,
                    vocab_size=cfg.vocab_size, padded_vocab_size=cfg.vocab_size, intermediate_size=cfg.hidden_dim,
                    mlp_class_name="LLaMAMLP", norm_class_name="RMSNorm", norm_eps=cfg.norm_eps,
                    parallel_residual=False, bias=False, rotary_percentage=1.0, rope_base=int(cfg.rope_theta),
                    block_size=512, adapter_prompt_length=10, adapter_start_layer=1)
    torch.manual_seed(0)
    model = GPT(config)
    mark_only_adapter_v2_as_trainable(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.02)
    rows, real = stream_batch(mode, cfg.vocab_size)
    idx, targets = torch.from_numpy(rows["tokens"]).long(), torch.from_numpy(rows["targets"]).long()
    targets = targets.masked_fill(torch.from_numpy(rows["loss_mask"]) == 0, -100)  # litgpt's ignore index
    model.train()
    times = []
    for i in range(warmup + iters):
        t = time.perf_counter()
        for mod in model.modules():  # litgpt issue #1287: the adapter kv-cache must not survive a training step
            if hasattr(mod, "adapter_kv_cache"):
                mod.adapter_kv_cache = None
        logits = model(idx)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return {"times": times[warmup:], "first_s": times[0], "trainable": sum(p.numel() for p in trainable),
            "loss": float(loss), "rss_mb": peak_rss_mb(), "real_tokens": real, "shape": list(idx.shape),
            "version": f"litgpt {litgpt.__version__ if hasattr(litgpt, '__version__') else '0.5.13'}, "
                       f"torch {torch.__version__}, {torch.get_num_threads()} threads"}


def run_peak() -> dict:
    import numpy as np
    import torch

    from lav2_jax.train.logging import measure_matmul_peak

    n = 2048
    a = torch.ones(n, n)
    a @ a
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        a @ a
        ts.append(time.perf_counter() - t)
    return {"jax": measure_matmul_peak(n, "float32"), "torch": 2.0 * n ** 3 / float(np.median(ts))}


def child(args) -> None:
    if args.only == "peak":
        out = run_peak()
    elif args.only == "jax":
        out = run_jax(args.config, args.iters, args.warmup, args.mode)
    else:
        out = run_litgpt(args.config, args.iters, args.warmup, args.mode)
    print("RESULT " + json.dumps(out), flush=True)


def measure(kind: str, name: str | None, args, mode: str = "equal") -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--only", kind, "--iters", str(args.iters),
           "--warmup", str(args.warmup), "--mode", mode] + (["--config", name] if name else [])
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr or out.stdout)[-600:]}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="s", help="comma-separated: s, m")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--only", choices=("jax", "litgpt", "peak"), help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="equal", help=argparse.SUPPRESS)
    p.add_argument("--streams", default="equal,alpaca", help="comma-separated: equal, alpaca")
    args = p.parse_args()
    if args.only:
        return child(args)

    import numpy as np

    from lav2_jax.train.logging import train_flops_per_token

    peak = measure("peak", None, args)
    best = max(peak.get("jax", 0.0), peak.get("torch", 0.0))
    print(f"# train step, {BATCH}×{SEQ} tokens, float32 — {platform.node()} ({os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}), {datetime.date.today()}")
    print(f"# matmul peak (2048³ float32): jax {peak.get('jax', 0) / 1e9:.1f} GFLOP/s, "
          f"torch {peak.get('torch', 0) / 1e9:.1f} GFLOP/s")
    print(f"# command: {' '.join([os.path.relpath(sys.executable, ROOT), 'benchmarks/train_step.py'] + sys.argv[1:])}")
    print("| config | stream | implementation | batch shape | trainable | median step s | real tokens/s | MFU | "
          "peak RSS MiB | first step s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    runs = {"equal": (("jax", "equal", "lav2_jax"), ("litgpt", "equal", "litgpt adapter_v2")),
            "alpaca": (("jax", "packed", "lav2_jax packed"), ("jax", "pad512", "lav2_jax pad-512 (release policy)"),
                       ("litgpt", "longest", "litgpt adapter_v2 pad-to-longest"))}
    for name in args.configs.split(","):
        flops = train_flops_per_token(model_config(name), SEQ)
        for stream in args.streams.split(","):
            rates = {}
            for kind, mode, label in runs[stream]:
                r = measure(kind, name, args, mode)
                if "error" in r:
                    msg = r["error"].strip().splitlines()[-1] if r["error"].strip() else "?"
                    print(f"| {name.upper()} | {stream} | {label}: {msg} |", flush=True)
                    continue
                med = float(np.median(r["times"]))
                tps = r["real_tokens"] / med
                rates[label] = tps
                print(f"| {name.upper()} | {stream} | {label} ({r['version']}) | {'×'.join(map(str, r['shape']))} | "
                      f"{r['trainable']:,} | {med:.3f} | {tps:,.0f} | {tps * flops / best:.1%} | {r['rss_mb']:,.0f} | "
                      f"{r['first_s']:.1f} |", flush=True)
            first = next(iter(rates.values()), None)
            for label, tps in list(rates.items())[1:]:
                print(f"# {name.upper()} {stream}: {next(iter(rates))} / {label} = {first / tps:.2f}×")


if __name__ == "__main__":
    main()
