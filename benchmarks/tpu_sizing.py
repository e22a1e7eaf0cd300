"""TPU sizing table: AOT-compiled training (and generation) steps from 7B to 70B on the slices they are meant for.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/tpu_sizing.py [--rows 7b-v5e8,7b-v4-8] [--variants base,packed]
        [--batches 128,64,32] [--remat dots_no_batch] [--accum 4] [--json out.json]

Nothing runs on a TPU: every row is compiled for its topology on this CPU host (libtpu, `lav2_jax.aot`), which gives
per-chip memory (arguments + outputs + temporaries − donated buffers) and the program's FLOPs (`lav2_jax.flops`).
For each row the global batch is the largest of `--batches` whose step fits in `--max-hbm` of a chip's HBM. The
search compiles the smallest candidate first, predicts the others from it (per-chip bytes = a fixed part + a part
linear in the batch: temporaries and batch inputs), compiles the largest predicted to fit and steps down (refitting
the line through the two compiles) until one fits, so a row costs about two compiles; every figure in the table is
from a compile, never from the prediction. Variants: `base` (padded rows, XLA attention), `packed`
(`data.packing=True`), `flash` (packed + the Pallas splash kernel). The recipe is the paper's joint step
(caption + instruction streams, configs/joint_7b.py) with the row's model, bf16 frozen weights, FSDP over every
chip, the row's remat policy and gradient-accumulation micro-batches (`--remat`, `--accum` override them; the
global batch is the micro-batch × accum). Generation rows compile the prefill forward over `--gen-batch` × 2,048 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# name: (preset, topology, instruction max_len, caption max_len, remat, kind, accum). 7B and 13B save the matmul
# outputs (`dots_no_batch`: only elementwise work and attention scores are recomputed, compiled/analytic FLOPs
# ≈ 1.03) and cut the global batch into 4 micro-batches, which keeps them far under the HBM limit; the larger
# models recompute whole layers (`full`, ratio ≈ 1.5) — see benchmarks/RESULTS.md for the measured rows.
ROWS = {
    "7b-v5e8": ("llama1-7b", "v5e:2x4", 512, 96, "dots_no_batch", "train", 4),
    "7b-v4-8": ("llama1-7b", "v4:2x2x1", 512, 96, "dots_no_batch", "train", 4),
    "13b-v5e16": ("llama1-13b", "v5e:4x4", 512, 96, "dots_no_batch", "train", 4),
    "33b-v5p16": ("llama1-33b", "v5p:2x2x2", 512, 96, "full", "train", 1),
    "65b-v5p32": ("llama1-65b", "v5p:2x4x4", 512, 96, "full", "train", 1),
    "70b-v5p32": ("llama2-70b", "v5p:2x4x4", 512, 96, "full", "train", 1),
    "65b-v4-32": ("llama1-65b", "v4:2x4x4", 512, 96, "full", "train", 1),
    "70b-v4-32": ("llama2-70b", "v4:2x4x4", 512, 96, "full", "train", 1),
    "l3-8b-8k-v5p8": ("llama3-8b", "v5p:2x2x1", 8192, 96, "full", "train", 1),
    "7b-gen-v5e4": ("llama1-7b", "v5e:2x2", 2048, 0, "none", "generate", 1),
}
VARIANTS = {"base": (False, "xla"), "packed": (True, "xla"), "flash": (True, "flash")}


def row_settings(row: str, remat: str | None = None, accum: int | None = None) -> tuple[str, int]:
    """(remat policy, accumulation micro-batches) of a row, with the command line's overrides."""
    return remat or ROWS[row][4], int(accum or ROWS[row][6])


def train_config(row: str, variant: str, batch: int, remat: str | None = None, accum: int | None = None):
    from lav2_jax import aot

    preset, _, inst_len, cap_len, _, _, _ = ROWS[row]
    remat, accum = row_settings(row, remat, accum)
    packing, attention = VARIANTS[variant]
    c = aot.load_config(os.path.join(ROOT, "configs", "joint_7b.py"))
    c.model.update(preset=preset, remat_policy=remat, attention=attention)
    c.optim.accum_steps = accum
    c.batch.update(caption=batch, instruction=batch)
    c.data.packing = packing
    c.data.instruction.max_len = inst_len
    c.data.caption.max_len = 128 if attention == "flash" else cap_len  # the kernel tiles rows by 128
    return c


def compile_row(row: str, variant: str, batch: int, remat: str | None = None, accum: int | None = None) -> dict:
    from lav2_jax import aot

    preset, topology, inst_len, _, _, kind, _ = ROWS[row]
    remat, accum = row_settings(row, remat, accum)
    t0 = time.time()
    mesh = aot.topology_mesh(topology, 1, -1, 1)
    if kind == "generate":
        from lav2_jax import presets
        from lav2_jax.flops import analytic_forward_flops
        from lav2_jax.model.factory import build_model

        model = build_model(presets.get_model(preset).replace(attention=VARIANTS[variant][1]),
                            presets.get_adapter("release-bias"), presets.get_vision("vit-l-14"))
        report = aot.compile_report(topology, mesh, aot.compile_forward(model, mesh, batch, inst_len))
        analytic = analytic_forward_flops(model, batch, inst_len)
    else:
        config = train_config(row, variant, batch, remat, accum)
        report = aot.compile_report(topology, mesh, aot.compile_train_step(config, mesh))
        analytic = aot.train_step_analytic(config)
    out = report.as_dict()
    out.update(row=row, variant=variant, batch=batch, preset=preset, remat=remat, accum=accum, seq=inst_len,
               analytic_flops=analytic["analytic_flops"], flop_ratio=report.compiled_flops / analytic["analytic_flops"],
               compile_s=round(time.time() - t0, 1))
    return out


def _fits(r: dict, max_hbm: float) -> bool:
    return "error" not in r and r["hbm_fraction"] is not None and r["hbm_fraction"] <= max_hbm


def predict_largest(points: dict[int, tuple[float, float]], candidates: list[int], limit: float) -> int | None:
    """The largest candidate whose predicted per-chip bytes stay ≤ `limit`, from the compiled `points`
    {batch: (peak bytes, temporary bytes)}: with one point the temporaries scale with the batch and the rest
    (weights, optimizer state) stays; with more, the line through the smallest and the largest. None: none fits."""
    (b0, (y0, t0)), *rest = sorted(points.items())
    slope = (rest[-1][1][0] - y0) / (rest[-1][0] - b0) if rest else t0 / b0
    fitting = [b for b in candidates if y0 + slope * (b - b0) <= limit]
    return max(fitting) if fitting else None


def size_row(row: str, variant: str, batches: list[int], max_hbm: float, log, remat: str | None = None,
             accum: int | None = None) -> dict:
    """The largest batch of `batches` whose step fits `max_hbm` of HBM (the last one tried when none does), found
    with few compiles (see the module docstring)."""
    from lav2_jax import aot
    from lav2_jax.flops import hbm_gib

    _, accum_steps = row_settings(row, remat, accum)
    chips = len(aot.topology_devices(ROWS[row][1]))
    candidates = sorted(b for b in batches if b % (chips * accum_steps) == 0)
    limit = max_hbm * hbm_gib(ROWS[row][1]) * 2 ** 30
    tried: dict[int, dict] = {}

    def compile_one(b: int) -> dict:
        try:
            r = compile_row(row, variant, b, remat, accum)
        except Exception as e:  # noqa: BLE001 - a row that does not compile is reported, not fatal
            r = {"row": row, "variant": variant, "batch": b, "error": f"{type(e).__name__}: {str(e)[:200]}"}
        log(json.dumps(r))
        tried[b] = r
        return r

    if not candidates:
        return {"row": row, "variant": variant, "error": f"no batch of {batches} divides over {chips} chips × "
                f"{accum_steps} micro-batches", "fits": False}
    first = compile_one(candidates[0])
    if not _fits(first, max_hbm):
        return dict(first, fits=False)
    fit_max, fail_min = candidates[0], None
    while True:  # every candidate above fit_max and below fail_min is still open
        open_ = [b for b in candidates if b > fit_max and (fail_min is None or b < fail_min)]
        if not open_:
            return tried[fit_max]
        points = {b: (r["peak_bytes"], r["temp_bytes"]) for b, r in tried.items() if "error" not in r}
        guess = predict_largest(points, open_, limit) or min(open_)  # none predicted: confirm with the smallest
        if _fits(compile_one(guess), max_hbm):
            fit_max = guess
        else:
            fail_min = guess


def table(results: list[dict]) -> str:
    lines = ["| row | variant | topology | mesh | global batch | accum | remat | GiB/chip | HBM "
             "| compiled/analytic FLOPs | compile s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | {r['variant']} | | | {r.get('batch')} | | | | | {r['error']} | |")
            continue
        mesh = "×".join(str(v) for v in r["mesh"].values())
        fit = "" if r.get("fits", True) else " (does not fit)"
        lines.append(f"| {r['row']} | {r['variant']} | {r['topology']} | {mesh} | {r['batch']}{fit} | "
                     f"{r.get('accum', 1)} | {r['remat']} | "
                     f"{r['peak_gib_per_chip']:.2f} | {100 * r['hbm_fraction']:.0f}% | {r['flop_ratio']:.3f}"
                     f"{' (Pallas attention not counted)' if r.get('pallas_calls') else ''} | "
                     f"{r['compile_s']} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows: " + ", ".join(ROWS))
    p.add_argument("--variants", default="base,packed,flash", help="comma-separated: base, packed, flash")
    p.add_argument("--batches", default="256,128,64,32,16,8", help="global batches to try, largest first")
    p.add_argument("--gen-batch", type=int, default=8, help="prefill batch of generation rows")
    p.add_argument("--max-hbm", type=float, default=0.75, help="HBM fraction a step may use")
    p.add_argument("--remat", default=None, help="remat policy for every train row (default: the row's)")
    p.add_argument("--accum", type=int, default=None, help="gradient-accumulation micro-batches of every train row")
    p.add_argument("--json", default=None, help="append every compile as a JSON line to this file")
    args = p.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(line + "\n")

    results = []
    for row in args.rows.split(","):
        for variant in args.variants.split(","):
            if ROWS[row][5] == "generate":
                if variant != "base":
                    continue
                r = compile_row(row, variant, args.gen_batch)
                log(json.dumps(r))
            else:
                r = size_row(row, variant, [int(b) for b in args.batches.split(",")], args.max_hbm, log,
                             args.remat, args.accum)
            results.append(r)
            print(table(results[-1:]).splitlines()[-1], flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
