"""Peak host RSS of `lav2 convert meta` on synthetic model-parallel Meta checkpoints.

    .venv/bin/python benchmarks/convert_memory.py [--configs 1b,7b] [--shards 2] [--dir /tmp/lav2_convert_bench]

For each configuration: a child process writes a random bf16 Meta checkpoint (`params.json` +
`consolidated.NN.pth`, docs/design.md §7.2 shard axes), then a second child runs the conversion
(`python -m lav2_jax.cli.main convert meta`, bf16 output); the conversion child's peak RSS comes from
`os.wait4` (ru_maxrss), so the builder's memory does not count. Prints a markdown table row per configuration.
`--export` adds a third child, `lav2 export hf` of the converted checkpoint back to a Hugging Face directory
(streamed per stacked leaf group, `lav2_jax.checkpoint.export.hf`), with its wall time and peak RSS.
Configurations: 1b = docs/design.md §9 "M" sizes (dim 2048, 22 layers, 32 heads, 4 KV heads, FFN 5632, vocab 32000);
7b = LLaMA-1 7B shapes (6.74 B parameters, 13.5 GB in bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

CONFIGS = {
    "1b": {"dim": 2048, "n_layers": 22, "n_heads": 32, "n_kv_heads": 4, "hidden": 5632, "vocab": 32000},
    "7b": {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": None, "hidden": 11008, "vocab": 32000},
}

BUILD = r"""
import json, os, sys, torch
cfg, d, n = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
D, L, H, K, F, V = cfg["dim"], cfg["n_layers"], cfg["n_heads"], cfg["n_kv_heads"] or cfg["n_heads"], cfg["hidden"], cfg["vocab"]
hd = D // H
os.makedirs(d, exist_ok=True)
params = {"dim": D, "n_layers": L, "n_heads": H, "multiple_of": 256, "norm_eps": 1e-6, "vocab_size": V}
if cfg["n_kv_heads"]:
    params["n_kv_heads"] = K
json.dump(params, open(os.path.join(d, "params.json"), "w"))
g = torch.Generator().manual_seed(0)
r = lambda *s: torch.randn(*s, generator=g, dtype=torch.bfloat16) * 0.02
for s in range(n):
    sd = {"tok_embeddings.weight": r(V, D // n), "norm.weight": torch.ones(D, dtype=torch.bfloat16),
          "output.weight": r(V // n, D)}
    for i in range(L):
        p = f"layers.{i}."
        sd.update({p + "attention.wq.weight": r(H * hd // n, D), p + "attention.wk.weight": r(K * hd // n, D),
                   p + "attention.wv.weight": r(K * hd // n, D), p + "attention.wo.weight": r(D, H * hd // n),
                   p + "feed_forward.w1.weight": r(F // n, D), p + "feed_forward.w2.weight": r(D, F // n),
                   p + "feed_forward.w3.weight": r(F // n, D),
                   p + "attention_norm.weight": torch.ones(D, dtype=torch.bfloat16),
                   p + "ffn_norm.weight": torch.ones(D, dtype=torch.bfloat16)})
    torch.save(sd, os.path.join(d, f"consolidated.{s:02d}.pth"))
    del sd
"""


def n_params(c: dict) -> int:
    D, L, H, F, V = c["dim"], c["n_layers"], c["n_heads"], c["hidden"], c["vocab"]
    kv = (c["n_kv_heads"] or H) * (D // H)
    return 2 * V * D + D + L * (2 * D * D + 2 * kv * D + 3 * D * F + 2 * D)


def run_child(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of one child process."""
    t = time.time()
    proc = subprocess.Popen(cmd, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return time.time() - t, usage.ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="1b,7b")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/lav2_convert_bench")
    ap.add_argument("--export", action="store_true",
                    help="also run `lav2 export hf` on the converted checkpoint (bf16) and report its wall and RSS")
    args = ap.parse_args()
    extra = " export hf wall | export hf peak RSS |" if args.export else ""
    print("| config | params | shards | checkpoint on disk | largest source tensor | convert wall | peak RSS |" + extra)
    print("| --- | --- | --- | --- | --- | --- | --- |" + " --- | --- |" * args.export)
    for name in args.configs.split(","):
        c = CONFIGS[name]
        src, out = os.path.join(args.dir, f"{name}-meta"), os.path.join(args.dir, f"{name}-out")
        shutil.rmtree(args.dir, ignore_errors=True)
        run_child([sys.executable, "-c", BUILD, json.dumps(c), src, str(args.shards)])
        size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src)) / 2**30
        largest = c["vocab"] * c["dim"] * 2 / 2**30  # tok_embeddings / output (bf16), merged from the shards
        wall, rss = run_child([sys.executable, "-m", "lav2_jax.cli.main", "convert", "meta", "--ckpt-dir", src,
                               "--out", out])
        row = (f"| {name} | {n_params(c) / 1e9:.2f} B | {args.shards} | {size:.2f} GiB | {largest * 1024:.0f} MiB | "
               f"{wall:.0f} s | {rss:.2f} GiB |")
        if args.export:
            e_wall, e_rss = run_child([sys.executable, "-m", "lav2_jax.cli.main", "export", "hf", "--ckpt", out,
                                       "--out", os.path.join(args.dir, f"{name}-hf")])
            row += f" {e_wall:.0f} s | {e_rss:.2f} GiB |"
        print(row, flush=True)
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
