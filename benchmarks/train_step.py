"""Train-step throughput: lav2_jax vs litgpt `adapter_v2` on the same CPU, same run (docs/design.md §9).

    .venv/bin/python benchmarks/train_step.py [--configs s,m] [--iters 5] [--warmup 2]
        [--streams equal,equal-finetune,alpaca,alpaca-prompt] [--layout unrolled|scan] [--vocab-chunk 0]
        [--position-chunk 32] [--cpu-devices 1] [--xla-flags '...']

litgpt is not a dependency: without it the lav2_jax rows still run and a line prints the install command
(`LITGPT_INSTALL`: `--no-deps`, because its resolver would downgrade huggingface_hub).

Streams (trainable sets: `all` = every adapter leaf, lav2_jax recipe `all-adapters`, litgpt
`mark_only_adapter_v2_as_trainable`; `finetune` = the release finetune stage's set, norms and the linears' biases
and scales, lav2_jax `release-finetune`, litgpt its norms + `adapter_bias` + `adapter_scale`):
  equal           every row 256 real tokens, 4 × 256 for every implementation; trainable set `all`
  equal-finetune  the same batch; trainable set `finetune`
  alpaca          an instruction stream whose sample lengths follow an Alpaca-like distribution: log-normal with
                  median 128 tokens and σ = 0.6, clipped to 24..512 (mean ≈ 153; a stand-in chosen to have most
                  samples well under 200 tokens, like Alpaca; not fitted to the real dataset); trainable set `all`.
                  Each implementation batches it its default way, one new batch per step: lav2_jax packs 4 rows of
                  512 (`lav2_jax.data.packing.Packer`, first fit), litgpt pads 4 samples to their longest, and
                  "pad-512" is our own step under the release's policy (every sample padded to 512).
  alpaca-prompt   the same samples (same lengths, same tokens), each now an instruction prompt without loss followed
                  by a response with loss, like the release's instruction data (docs/design.md §3.3.1: loss on the response
                  and EOS only): the first round(0.4·L) tokens of a sample of L tokens are its prompt (at least one
                  response token). 40 % is a stated assumption, not a fit: the lengths above stand for whole Alpaca
                  samples (instruction + input + response), whose instruction and input make up roughly 40 % of the
                  tokens. litgpt gets the same samples with its ignore index -100 on every prompt target (and on
                  its padding); lav2_jax the same loss mask. Batched as in `alpaca`.
Real tokens/s counts non-padding tokens only: the median over timed steps of (real tokens ÷ step time); the loss
tokens/s column counts the tokens with a loss the same way (all real tokens except in `alpaca-prompt`).

Configurations (docs/design.md §9): S = `bench-s`, M = `bench-m` (~1.1B), float32, release-like adapter (bias on wq wo w1
w2 w3, trainable norms, 10 prompt tokens in the last n_layers-1 layers, tanh gates; no vision).
lav2_jax runs its CPU settings by default: layers unrolled over unstacked weights (`ModelConfig.scan_layers=False`;
`--layout scan` is the TPU layout), attention in causal query blocks (`ModelConfig.attention="blocked"`: the score
blocks above the diagonal are never computed; `--attention xla` is the full T × T path) and the loss over
whole-vocabulary logits (`loss.vocab_chunk=0`: no recompute of the head in the backward pass; the chunked loss is
for accelerator memory), with the head run only on chunks of 32 positions per row that hold a loss position
(`loss.position_chunk=32`, `--position-chunk`; 0 = the head at every position; the pad-512 row uses the same
setting, so it skips its padding too — a faster stand-in for the release than the release itself).
Peer: litgpt 0.5.13 `adapter_v2` GPT with the same sizes (LLaMA MLP, RMSNorm, no linear biases, full RoPE,
prompts from layer 1), AdamW; its adapter kv-cache is cleared before every step (litgpt issue #1287). litgpt's
adapter has a bias+scale on *every* linear (incl. wk, wv and the head), so its trainable set is a little larger;
the table lists both counts.

Each measurement runs in its own subprocess (so peak RSS is that framework's alone): `--iters` timed steps after
`--warmup` untimed ones (the first includes compilation). MFU = real tokens/s × (4·N_matmul + 12·L·T·d) / peak,
T the row length (the head counted at every real token), peak the best n×n×n float32 matmul rate measured by the same run (JAX and torch, n = 2048, best
of several tries) or `--peak-gflops`; so padding counts as waste. On a loaded machine the measured peak is low and
MFU reads high: pass the quiet machine's peak. The load column is the 1-minute load average when the row finished.
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
LITGPT_INSTALL = (".venv/bin/pip install --no-deps litgpt==0.5.13 lightning==2.6.6 lightning-utilities==0.15.3 "
                  "torchmetrics==1.9.0")
# trainable set → (param_recipe, step recipe, batch key): every adapter leaf, or the release finetune stage's set
JAX_TRAINABLE = {"all": ("all-adapters", "full", "train"), "finetune": ("release-finetune", "finetune", "instruction")}
# stream → (child kind, batching mode, trainable set, label) rows in measuring order (the first: the ratios' base)
RUNS = {
    "equal": (("jax", "equal", "all", "lav2_jax"), ("litgpt", "equal", "all", "litgpt adapter_v2")),
    "equal-finetune": (("jax", "equal", "finetune", "lav2_jax"), ("litgpt", "equal", "finetune", "litgpt adapter_v2")),
    "alpaca": (("jax", "packed", "all", "lav2_jax packed"),
               ("jax", "pad512", "all", "lav2_jax pad-512 (release policy)"),
               ("litgpt", "longest", "all", "litgpt adapter_v2 pad-to-longest")),
    "alpaca-prompt": (("jax", "packed-prompt", "all", "lav2_jax packed"),
                      ("jax", "pad512-prompt", "all", "lav2_jax pad-512 (release policy)"),
                      ("litgpt", "longest-prompt", "all", "litgpt adapter_v2 pad-to-longest")),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def model_config(name: str):
    from lav2_jax.core import presets

    return presets.get_model(PRESETS[name]).replace(weight_dtype="float32", dtype="float32")


ALPACA_MEDIAN, ALPACA_SIGMA, ALPACA_MIN, ALPACA_MAX = 128, 0.6, 24, 512
PROMPT_FRACTION = 0.4  # `alpaca-prompt`: the share of a sample's tokens that are its prompt (no loss)


def alpaca_lengths(n: int, seed: int = 0) -> list[int]:
    """Sample lengths of the Alpaca-like stream (see the module docstring)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = np.exp(np.log(ALPACA_MEDIAN) + ALPACA_SIGMA * rng.standard_normal(n))
    return [int(v) for v in np.clip(np.round(x), ALPACA_MIN, ALPACA_MAX)]


def stream_batches(mode: str, vocab: int, n: int) -> list[tuple[dict, int, int]]:
    """`n` (numpy batch, real tokens, loss tokens) triples for `mode`: equal (4 × 256, the same batch each time);
    on the Alpaca-like stream consecutive batches of it: packed (4 rows × 512, first fit in stream order, the
    batch closes at the first sample that does not fit, like the pipeline), pad512 (4 samples × 512, the release),
    longest (4 samples padded to their longest, litgpt's default); `-prompt` modes: the same samples with their
    first `PROMPT_FRACTION` of tokens as a prompt without loss (`alpaca-prompt`)."""
    import numpy as np

    from lav2_jax.data.packing import DROPPED_KEY, Packer

    if mode == "equal":
        rng = np.random.default_rng(0)
        t = rng.integers(3, vocab, (BATCH, SEQ + 1)).astype(np.int32)
        b = {"tokens": t[:, :-1], "targets": t[:, 1:], "loss_mask": np.ones((BATCH, SEQ), np.float32)}
        return [(b, BATCH * SEQ, BATCH * SEQ)] * n
    mode, prompted = mode.removesuffix("-prompt"), mode.endswith("-prompt")
    rng = np.random.default_rng(1)
    samples = []
    for length in alpaca_lengths(40 * n + 64):
        t = rng.integers(3, vocab, length + 1).astype(np.int32)
        mask = np.ones(length, np.float32)
        if prompted:
            mask[:min(int(round(PROMPT_FRACTION * length)), length - 1)] = 0.0
        samples.append({"tokens": t[:-1], "targets": t[1:], "loss_mask": mask, "has_image": False, DROPPED_KEY: 0})
    out = []
    it = iter(samples)
    if mode == "packed":
        held = next(it)
        while len(out) < n:
            packer = Packer(BATCH, 512, (512,), False, None)
            while packer.add(held):
                held = next(it)
            b = packer.batch()
            out.append(({k: v for k, v in b.items() if not k.startswith("_") and k != "has_image"},
                        int((b["segment_ids"] > 0).sum()), int(b["loss_mask"].sum())))
        return out
    while len(out) < n:
        chosen = [next(it) for _ in range(BATCH)]
        T = 512 if mode == "pad512" else max(len(smp["tokens"]) for smp in chosen)
        b = {k: np.zeros((BATCH, T), np.float32 if k == "loss_mask" else np.int32)
             for k in ("tokens", "targets", "loss_mask")}
        for i, smp in enumerate(chosen):
            for k in b:
                b[k][i, :len(smp[k])] = smp[k]
        out.append((b, sum(len(smp["tokens"]) for smp in chosen), int(b["loss_mask"].sum())))
    return out


def build_jax(name: str, mode: str = "equal", trainable: str = "all", layout: str = "unrolled", vocab_chunk: int = 0,
              attention: str = "blocked", devices: int = 1, position_chunk: int = 0, n_batches: int = 1):
    """(setup, state, batch key, mesh, `stream_batches` of `mode`) of the lav2_jax row (also `step_profile.py`)."""
    import jax

    if devices > 1:  # data parallel over host "devices" (one XLA program each, batch rows split between them)
        jax.config.update("jax_num_cpu_devices", devices)

    from lav2_jax.core import presets
    from lav2_jax.model.factory import build_model
    from lav2_jax.core.sharding import make_mesh
    from lav2_jax.train import state as state_lib
    from lav2_jax.train.defaults import base_config, group

    cfg = model_config(name).replace(scan_layers=layout == "scan", attention=attention)
    adapter = presets.get_adapter("release-bias").replace(visual_fusion="none", prompt_layers=cfg.n_layers - 1)
    model = build_model(cfg, adapter, None)
    c = base_config()
    c.param_recipe, c.recipe, key = JAX_TRAINABLE[trainable]
    c.total_steps, c.loss.vocab_chunk, c.loss.position_chunk = 1000, vocab_chunk, position_chunk
    c.batch[key] = BATCH
    c.optim.instruction = group(1e-3, 0.02, warmup_steps=10)
    mesh = make_mesh(devices, 1, 1, jax.devices()[:devices])
    setup, state = state_lib.build(c, mesh, model=model)
    return setup, state, key, mesh, stream_batches(mode, cfg.vocab_size, n_batches)


def run_jax(name: str, iters: int, warmup: int, mode: str = "equal", trainable: str = "all",
            layout: str = "unrolled", vocab_chunk: int = 0, attention: str = "blocked", devices: int = 1,
            position_chunk: int = 0) -> dict:
    import jax

    from lav2_jax.train.mesh import global_batch

    setup, state, key, mesh, batches = build_jax(name, mode, trainable, layout, vocab_chunk, attention, devices,
                                                 position_chunk, warmup + iters)
    times = []
    for rows, _, _ in batches:
        batch = global_batch({key: rows}, mesh)
        t = time.perf_counter()
        state, m = setup.train_step(state, setup.frozen, batch)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t)
    return {"times": times[warmup:], "first_s": times[0], "trainable": setup.counts["instruction"],
            "loss": float(m[f"loss/{key}"]), "rss_mb": peak_rss_mb(), "version": f"jax {jax.__version__}",
            "real_tokens": [r for _, r, _ in batches[warmup:]], "loss_tokens": [n for *_, n in batches[warmup:]],
            "shape": list(rows["tokens"].shape),
            "row_len": rows["tokens"].shape[1]}


def run_litgpt(name: str, iters: int, warmup: int, mode: str = "equal", trainable: str = "all") -> dict:
    try:
        import litgpt
    except ImportError:
        return {"error": f"litgpt is not installed (its rows are skipped): {LITGPT_INSTALL}"}
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
    if trainable == "finetune":  # the release finetune stage: norms, and the linears' bias + scale
        for pname, p in model.named_parameters():
            p.requires_grad = any(t in pname for t in ("norm", "ln_f", "adapter_bias", "adapter_scale"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.02)
    batches = stream_batches(mode, cfg.vocab_size, warmup + iters)
    model.train()
    times, lengths = [], []
    for rows, _, _ in batches:
        idx, targets = torch.from_numpy(rows["tokens"]).long(), torch.from_numpy(rows["targets"]).long()
        targets = targets.masked_fill(torch.from_numpy(rows["loss_mask"]) == 0, -100)  # litgpt's ignore index
        lengths.append(idx.shape[1])
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
            "loss": float(loss), "rss_mb": peak_rss_mb(), "real_tokens": [r for _, r, _ in batches[warmup:]],
            "loss_tokens": [n for *_, n in batches[warmup:]],
            "row_len": sum(lengths[warmup:]) / len(lengths[warmup:]),
            "shape": [BATCH, f"{min(lengths[warmup:])}..{max(lengths[warmup:])}" if mode.startswith("longest")
                      else lengths[0]],
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
    for _ in range(10):
        t = time.perf_counter()
        a @ a
        ts.append(time.perf_counter() - t)
    # the best of several tries (not the median): on a shared machine the median is the load's, not the CPU's
    return {"jax": max(measure_matmul_peak(n, "float32") for _ in range(3)), "torch": 2.0 * n ** 3 / float(np.min(ts))}


def child(args) -> None:
    if args.only == "peak":
        out = run_peak()
    elif args.only == "jax":
        out = run_jax(args.config, args.iters, args.warmup, args.mode, args.trainable, args.layout,
                      args.vocab_chunk, args.attention, args.cpu_devices, args.position_chunk)
    else:
        out = run_litgpt(args.config, args.iters, args.warmup, args.mode, args.trainable)
    print("RESULT " + json.dumps(out), flush=True)


def measure(kind: str, name: str | None, args, mode: str = "equal", trainable: str = "all") -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--only", kind, "--iters", str(args.iters),
           "--warmup", str(args.warmup), "--mode", mode, "--trainable", trainable, "--layout", args.layout,
           "--vocab-chunk", str(args.vocab_chunk), "--position-chunk", str(args.position_chunk),
           "--attention", args.attention,
           "--cpu-devices", str(args.cpu_devices)] + (["--config", name] if name else [])
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    if args.xla_flags and kind == "jax":
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
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
    p.add_argument("--trainable", default="all", choices=tuple(JAX_TRAINABLE), help=argparse.SUPPRESS)
    p.add_argument("--streams", default=",".join(RUNS), help=f"comma-separated: {', '.join(RUNS)}")
    p.add_argument("--layout", default="unrolled", choices=("unrolled", "scan"),
                   help="lav2_jax layers: unrolled over unstacked weights (XLA:CPU) or one scan (TPU)")
    p.add_argument("--peak-gflops", type=float, default=0.0,
                   help="MFU reference in GFLOP/s (0: the best matmul rate this run measures, low under load)")
    p.add_argument("--attention", default="blocked", choices=("blocked", "xla"),
                   help="lav2_jax ModelConfig.attention (blocked: causal query blocks of 128, for CPU training)")
    p.add_argument("--vocab-chunk", type=int, default=0,
                   help="lav2_jax loss.vocab_chunk (0: whole-vocabulary logits, no recompute; CPU memory allows it)")
    p.add_argument("--position-chunk", type=int, default=32,
                   help="lav2_jax loss.position_chunk (positions per row per loss chunk; chunks without a loss "
                        "position are skipped; 0: the head at every position)")
    p.add_argument("--cpu-devices", type=int, default=1,
                   help="lav2_jax data parallel over this many host devices (jax_num_cpu_devices; rows split "
                        "between them, frozen weights replicated per device)")
    p.add_argument("--xla-flags", default="", help="extra XLA_FLAGS for the lav2_jax rows only")
    args = p.parse_args()
    if args.only:
        return child(args)

    import numpy as np

    from lav2_jax.train.logging import train_flops_per_token

    peak = measure("peak", None, args)
    best = args.peak_gflops * 1e9 or max(peak.get("jax", 0.0), peak.get("torch", 0.0))
    print(f"# train step, {BATCH}×{SEQ} tokens, float32 — {platform.node()} ({os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}), {datetime.date.today()}")
    print(f"# matmul peak (2048³ float32): jax {peak.get('jax', 0) / 1e9:.1f} GFLOP/s, "
          f"torch {peak.get('torch', 0) / 1e9:.1f} GFLOP/s; MFU against {best / 1e9:.1f} GFLOP/s")
    print(f"# lav2_jax: {args.layout} layers, attention={args.attention}, loss.vocab_chunk={args.vocab_chunk}, "
          f"loss.position_chunk={args.position_chunk}, "
          f"{args.cpu_devices} host device(s){', XLA_FLAGS ' + args.xla_flags if args.xla_flags else ''}; "
          f"load average at start "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"# command: {' '.join([os.path.relpath(sys.executable, ROOT), 'benchmarks/train_step.py'] + sys.argv[1:])}")
    print("| config | stream | implementation | batch shape | trainable | median step s | real tokens/s | "
          "loss tokens/s | MFU | peak RSS MiB | first step s | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    try:
        import litgpt  # noqa: F401
    except ImportError:
        print(f"# litgpt is not installed, so only the lav2_jax rows run; to add the peer: {LITGPT_INSTALL}")
    for name in args.configs.split(","):
        for stream in args.streams.split(","):
            rates = {}
            for kind, mode, trainable, label in RUNS[stream]:
                r = measure(kind, name, args, mode, trainable)
                if "error" in r:
                    msg = r["error"].strip().splitlines()[-1] if r["error"].strip() else "?"
                    print(f"| {name.upper()} | {stream} | {label}: {msg} |", flush=True)
                    continue
                med = float(np.median(r["times"]))
                tps = float(np.median(np.asarray(r["real_tokens"]) / np.asarray(r["times"])))
                lps = float(np.median(np.asarray(r["loss_tokens"]) / np.asarray(r["times"])))
                rates[label] = tps
                flops = train_flops_per_token(model_config(name), int(round(r["row_len"])))
                print(f"| {name.upper()} | {stream} | {label} ({r['version']}) | {'×'.join(map(str, r['shape']))} | "
                      f"{r['trainable']:,} | {med:.3f} | {tps:,.0f} | {lps:,.0f} | "
                      f"{tps * flops / best:.1%} | {r['rss_mb']:,.0f} | "
                      f"{r['first_s']:.1f} | {os.getloadavg()[0]:.1f} |", flush=True)
            first = next(iter(rates.values()), None)
            for label, tps in list(rates.items())[1:]:
                print(f"# {name.upper()} {stream}: {next(iter(rates))} / {label} = {first / tps:.2f}×")


if __name__ == "__main__":
    main()
