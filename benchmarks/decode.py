"""Decoding benchmark (docs/design.md §9): lav2_jax `generate` vs Hugging Face `generate`, same weights, greedy.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/decode.py --presets tiny,bench-s --batches 1,4,8

Per model preset (docs/design.md §9 names), in float32:
  1. prep: random base weights (adapter `none`, seed 0) → `save_pretrained` → `lav2 export hf` (the conversion
     path, `lav2_jax.checkpoint.export.hf.export_hf`) → a Hugging Face Llama directory with the same weights.
  2. ours: `load_pretrained(ckpt)`, then per batch size the jitted engine functions that `generate` calls:
     prefill (`engine.prefill_fn`) and the whole generation (`engine.generate_fn`: prefill + lax.while_loop), on
     the layout `generate` decodes with on a single CPU device (unstacked layers, loaded as `lav2 generate` loads
     them: `load_pretrained(..., layout="unstacked")`; the `--adapter` model, built in memory, goes through
     `generation.decode_view`).
  3. hf: `LlamaForCausalLM.from_pretrained(dir)`: prefill = one forward with `use_cache=True`; generation =
     `model.generate(do_sample=False, min_new_tokens=N, max_new_tokens=N)` (its KV cache, its greedy loop).
  4. (`--adapter`) ours again with the §9 adapter (bias on wq wo w1 w2 w3, norms, 10 prompt tokens in the last
     n_layers-1 layers, gates perturbed): no HF equivalent (a plain Llama cannot hold gated prompts).
Each step runs in its own process, so each reports its own peak RSS (`ru_maxrss`, weights and compilations
included). Prompt: BOS + 31 random ids (32 tokens); 64 new tokens, EOS disabled so every row makes all 64.
Timing: 1 warm-up call (compiles), then the median of `--iters` (>= 5) timed calls.
  prefill tok/s = B·32 / t_prefill;  decode tok/s = B·(N−1) / (t_generate − t_prefill);  end-to-end new tok/s =
  B·N / t_generate (the first new token comes out of the prefill, the other N−1 out of decode steps).
Greedy agreement: the batch-1 greedy ids of both frameworks, compared (random weights make near-ties, so float
summation order may split the two after some tokens; the count of equal leading tokens is reported).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

PROMPT_LEN, NEW_TOKENS = 32, 64


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def prompt_ids(batch: int, vocab: int) -> np.ndarray:
    ids = np.random.default_rng(0).integers(3, vocab, size=(batch, PROMPT_LEN)).astype(np.int32)
    ids[:, 0] = 1  # BOS
    return ids


def timed(fn, iters: int) -> float:
    fn()  # warm-up (compilation)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rates(batch: int, t_prefill: float, t_generate: float) -> dict:
    return {"batch": batch, "prefill_s": t_prefill, "generate_s": t_generate,
            "prefill_tok_s": batch * PROMPT_LEN / t_prefill,
            # None when noise makes the prefill median >= the generate median (tiny models: both ~ms)
            "decode_tok_s": batch * (NEW_TOKENS - 1) / (t_generate - t_prefill) if t_generate > t_prefill else None,
            "e2e_tok_s": batch * NEW_TOKENS / t_generate}


def fp32(config):
    return config.replace(weight_dtype="float32", dtype="float32")


def bench_adapter(config):
    from lav2_jax.core.config import AdapterConfig

    return AdapterConfig(linear_kind="bias_qo_ffn", norm_tuning=True, prompt_len=10,
                         prompt_layers=config.n_layers - 1, visual_fusion="none")


def worker_prep(a) -> dict:
    import jax

    from lav2_jax.core import presets
    from lav2_jax.checkpoint import save_pretrained
    from lav2_jax.checkpoint.export.hf import export_hf
    from lav2_jax.model.factory import build_model, init_params

    model = build_model(fp32(presets.get_model(a.preset)), presets.get_adapter("none"))
    params = init_params(model, jax.random.PRNGKey(0))
    save_pretrained(os.path.join(a.work, "ckpt"), model, params)
    export_hf(os.path.join(a.work, "ckpt"), os.path.join(a.work, "hf"), dtype="float32")
    return {}


def worker_ours(a) -> dict:
    import jax
    import jax.numpy as jnp

    from lav2_jax.core import presets
    from lav2_jax.inference import engine
    from lav2_jax.model.factory import build_model, init_params

    if a.adapter:
        config = fp32(presets.get_model(a.preset))
        model = build_model(config, bench_adapter(config))
        params = init_params(model, jax.random.PRNGKey(0))
        params = jax.tree_util.tree_map_with_path(  # open the gates so the prompt path is real work
            lambda p, x: x + 0.1 if getattr(p[-1], "key", "") == "gate" else x, params)
    else:
        from lav2_jax.checkpoint import load_pretrained

        # As `lav2 generate` loads on one CPU device: unstacked straight from the checkpoint (one copy of the weights)
        bundle = load_pretrained(os.path.join(a.work, "ckpt"), layout="unstacked")
        model, params = bundle.model, bundle.params
    from lav2_jax.inference.generation import decode_view

    model, params = decode_view(None, model, params, None)  # the layout generate() decodes with (CPU: unstacked)
    c = model.config
    new_len, cache_len = NEW_TOKENS, PROMPT_LEN + NEW_TOKENS
    spec = engine.SamplingSpec(key=jax.random.PRNGKey(0), temperature=jnp.float32(1), top_p=jnp.float32(1),
                               eos_id=jnp.int32(-1), pad_id=jnp.int32(0), greedy=True, cache_len=cache_len,
                               new_len=new_len)
    rows, first = [], None
    for B in a.batches:
        inputs = dict(tokens=jnp.asarray(prompt_ids(B, c.vocab_size)), lengths=jnp.full((B,), PROMPT_LEN, jnp.int32),
                      budgets=jnp.full((B,), NEW_TOKENS, jnp.int32), images=None, has_image=None)
        args = (model, spec, params)
        prefill = lambda: jax.block_until_ready(engine.prefill_fn(*args, **inputs).tok)  # noqa: E731
        gen = lambda: jax.block_until_ready(engine.generate_fn(*args, **inputs))  # noqa: E731
        rows.append(rates(B, timed(prefill, a.iters), timed(gen, a.iters)))
        if B == 1:
            first = np.asarray(gen()[0][0]).tolist()
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    return {"rows": rows, "greedy_b1": first, "params": n_params}


def worker_hf(a) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(os.path.join(a.work, "hf"), dtype=torch.float32).eval()
    rows, first = [], None
    for B in a.batches:
        ids = torch.from_numpy(prompt_ids(B, model.config.vocab_size).astype(np.int64))
        mask = torch.ones_like(ids)

        def prefill():
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask, use_cache=True)

        def gen():
            with torch.inference_mode():
                return model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW_TOKENS,
                                      min_new_tokens=NEW_TOKENS, pad_token_id=0, eos_token_id=None)

        rows.append(rates(B, timed(prefill, a.iters), timed(gen, a.iters)))
        if B == 1:
            first = gen()[0, PROMPT_LEN:].tolist()
    return {"rows": rows, "greedy_b1": first, "threads": torch.get_num_threads()}


WORKERS = {"prep": worker_prep, "ours": worker_ours, "hf": worker_hf}


def spawn(kind: str, preset: str, work: str, a, adapter: bool = False) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--preset", preset, "--work", work,
            "--batches", ",".join(map(str, a.batches)), "--iters", str(a.iters)] + (["--adapter"] if adapter else [])
    proc = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if proc.returncode:
        raise SystemExit(f"{kind} worker for {preset} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(x, y) -> int:
    n = 0
    for p, q in zip(x or [], y or []):
        if p != q:
            break
        n += 1
    return n


def table(results: list[dict]) -> str:
    lines = ["| preset | impl | batch | prefill tok/s | decode tok/s | end-to-end new tok/s | peak RSS MiB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        for row in r["rows"]:
            decode = "n/a" if row["decode_tok_s"] is None else f"{row['decode_tok_s']:,.1f}"
            lines.append(f"| {r['preset']} | {r['impl']} | {row['batch']} | {row['prefill_tok_s']:,.0f} | "
                         f"{decode} | {row['e2e_tok_s']:,.1f} | {r['rss_mib']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="tiny,bench-s")
    p.add_argument("--batches", default="1,4,8")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--adapter", action="store_true", help="also time ours with the §9 adapter (no HF peer)")
    p.add_argument("--json", default=None, help="write the raw results here")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--preset", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.batches = [int(b) for b in a.batches.split(",")]
    if a.iters < 5:
        p.error("--iters must be >= 5 (median of at least five timed iterations)")
    if a.worker:
        out = WORKERS[a.worker](a)
        out["rss_mib"] = peak_rss_mib()
        print(json.dumps(out))
        return
    results = []
    for preset in a.presets.split(","):
        with tempfile.TemporaryDirectory(prefix=f"decode-{preset}-") as work:
            spawn("prep", preset, work, a)
            ours, hf = spawn("ours", preset, work, a), spawn("hf", preset, work, a)
            adapted = spawn("ours", preset, work, a, adapter=True) if a.adapter else None
        agree = agreement(ours["greedy_b1"], hf["greedy_b1"])
        print(f"{preset}: {ours['params']:,} parameters; batch-1 greedy ids agree for the first {agree}/{NEW_TOKENS}"
              f" tokens; torch threads {hf['threads']}", flush=True)
        results += [dict(ours, preset=preset, impl="lav2_jax", agree=agree),
                    dict(hf, preset=preset, impl="HF transformers")]
        if adapted:
            results.append(dict(adapted, preset=preset, impl="lav2_jax + §9 adapter"))
    print(table(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
