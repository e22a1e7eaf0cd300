"""TPU sizing table: AOT-compiled training (and generation) steps from 7B to 70B on the slices they are meant for.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/tpu_sizing.py --search [--rows 7b-v5e8,7b-v4-8]
        [--variants base,packed,flash] [--batches 512,256,128,64] [--remat dots_no_batch] [--accum 4]
        [--json compiles.jsonl --reuse] [--until 17:50]

Nothing runs on a TPU: every row is compiled for its topology on this CPU host (libtpu, `lav2_jax.train.aot`), which gives
per-chip memory (arguments + outputs + temporaries − donated buffers) and the program's FLOPs (`lav2_jax.core.flops`).
The recipe is the paper's joint step (caption + instruction streams, configs/joint_7b.py) with the row's model, bf16
frozen weights, FSDP over every device, the row's remat policy and gradient-accumulation micro-batches (`--remat`,
`--accum` override them). A global batch B means B caption rows and B instruction rows per optimizer step, each
stream cut into `accum` micro-batches of B / accum rows.

Without `--search` every train row is compiled once, at `--batch`. With `--search` a row's global batch is the
largest of `--batches` that divides over the row's devices × micro-batches and whose compiled peak per chip is at
most `--max-hbm` (75 %) of the chip's HBM, the remat policy and the number of micro-batches held fixed. Per-chip
bytes are a fixed part (weights, optimizer state) plus a part linear in the batch (activations, batch inputs): the
search compiles the smallest candidate, predicts the others from it (its temporaries scaled with the batch), compiles
the largest predicted to fit, refits the line through the compiles and steps up or down until the largest fitting
batch is compiled. The next batch up is compiled too, unless the line puts it over `--margin` (1.05) × the limit;
then it is listed below the table as predicted, not measured. Every figure in the table is from a compile. `--json`
appends each compile as a JSON line; `--reuse` takes the compiles already in that file, so an interrupted search
resumes and a rerun over every row prints the whole table without compiling. Variants: `base` (padded rows, XLA
attention), `packed` (`data.packing=True`), `flash` (packed + the Pallas splash kernel). Generation rows compile the
prefill forward over `--gen-batch` × 2,048 tokens.
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
    "7b-4k-v5e8": ("llama1-7b", "v5e:2x4", 4096, 128, "dots_no_batch", "train", 4),  # XLA vs splash at 4,096
    "7b-gen-v5e4": ("llama1-7b", "v5e:2x2", 2048, 0, "none", "generate", 1),
}
VARIANTS = {"base": (False, "xla"), "packed": (True, "xla"), "flash": (True, "flash")}


def row_settings(row: str, remat: str | None = None, accum: int | None = None) -> tuple[str, int]:
    """(remat policy, accumulation micro-batches) of a row, with the command line's overrides."""
    return remat or ROWS[row][4], int(accum or ROWS[row][6])


def train_config(row: str, variant: str, batch: int, remat: str | None = None, accum: int | None = None):
    from lav2_jax.train import aot

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
    from lav2_jax.train import aot

    preset, topology, inst_len, _, _, kind, _ = ROWS[row]
    remat, accum = row_settings(row, remat, accum)
    t0 = time.time()
    mesh = aot.topology_mesh(topology, 1, -1, 1)
    if kind == "generate":
        from lav2_jax.core import presets
        from lav2_jax.model.flops import analytic_forward_flops
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


def _chip_bytes(r: dict, key: str) -> float:
    """Per-chip bytes of a compile's per-device figure `key` (v4: two devices, one per TensorCore, share a chip)."""
    return r[key] * r.get("devices_per_chip", 1)


def predict_bytes(points: dict[int, tuple[float, float]], batch: int) -> float:
    """Predicted per-chip bytes at `batch` from the compiled `points` {batch: (peak bytes, temporary bytes)}: with
    one point the temporaries scale with the batch and the rest (weights, optimizer state) stays; with more, the line
    through the smallest and the largest."""
    (b0, (y0, t0)), *rest = sorted(points.items())
    slope = (rest[-1][1][0] - y0) / (rest[-1][0] - b0) if rest else t0 / b0
    return y0 + slope * (batch - b0)


def predict_largest(points: dict[int, tuple[float, float]], candidates: list[int], limit: float) -> int | None:
    """The largest candidate whose predicted per-chip bytes (`predict_bytes`) stay <= `limit`; None: none fits."""
    fitting = [b for b in candidates if predict_bytes(points, b) <= limit]
    return max(fitting) if fitting else None


class Compiles:
    """Every compile of this run, appended as JSON lines to `path`; with `reuse`, the compiles already in `path`
    (same row, variant, batch, remat and accumulation) are read back instead of compiled again. `until` (UTC
    "HH:MM"): no compile starts after that time."""

    def __init__(self, log, path: str | None = None, reuse: bool = False, until: str | None = None):
        self.log, self.path, self.until, self.done = log, path, until, {}
        if reuse and path and os.path.exists(path):
            with open(path) as f:
                for line in f:
                    r = json.loads(line)
                    if "error" not in r:
                        self.done[self.key(r["row"], r["variant"], r["batch"], r.get("remat"), r.get("accum"))] = r

    @staticmethod
    def key(row, variant, batch, remat, accum) -> tuple:
        return row, variant, int(batch), remat, int(accum or 1)

    def late(self) -> bool:
        return bool(self.until) and time.strftime("%H:%M", time.gmtime()) >= self.until

    def __call__(self, row: str, variant: str, batch: int, remat: str | None = None, accum: int | None = None) -> dict:
        r_remat, r_accum = row_settings(row, remat, accum)
        key = self.key(row, variant, batch, r_remat, r_accum if ROWS[row][5] == "train" else 1)
        if key in self.done:
            return dict(self.done[key], reused=True)
        if self.late():
            return {"row": row, "variant": variant, "batch": batch, "error": f"not compiled (after {self.until} UTC)",
                    "late": True}
        try:
            r = compile_row(row, variant, batch, remat, accum)
        except Exception as e:  # noqa: BLE001 - a row that does not compile is reported, not fatal
            r = {"row": row, "variant": variant, "batch": batch, "error": f"{type(e).__name__}: {str(e)[:200]}"}
        r["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        line = json.dumps(r)
        self.log(line)
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        if "error" not in r:
            self.done[key] = r
        return r


def size_row(row: str, variant: str, batches: list[int], max_hbm: float, compile_one, remat: str | None = None,
             accum: int | None = None, margin: float = 1.05) -> dict:
    """The largest batch of `batches` whose step fits `max_hbm` of HBM (the last one tried when none does), found
    with few compiles (see the module docstring). A batch above it that the line through two compiles puts over
    `margin` × the limit is not compiled: it goes into the result's `predicted` {batch: per-chip GiB}."""
    from lav2_jax.train import aot
    from lav2_jax.core.flops import hbm_gib

    _, accum_steps = row_settings(row, remat, accum)
    chips = len(aot.topology_devices(ROWS[row][1]))  # devices: data-parallel ways of the (1, all, 1) mesh
    candidates = sorted(b for b in batches if b % (chips * accum_steps) == 0)
    limit = max_hbm * hbm_gib(ROWS[row][1]) * 2 ** 30
    tried: dict[int, dict] = {}
    if not candidates:
        return {"row": row, "variant": variant, "error": f"no batch of {batches} divides over {chips} devices x "
                f"{accum_steps} micro-batches", "fits": False}
    first = tried[candidates[0]] = compile_one(row, variant, candidates[0], remat, accum)
    if not _fits(first, max_hbm):
        return dict(first, fits=False)
    fit_max, fail_min = candidates[0], None
    while True:  # every candidate above fit_max and below fail_min is still open
        open_ = [b for b in candidates if b > fit_max and (fail_min is None or b < fail_min)]
        points = {b: (_chip_bytes(r, "peak_bytes"), _chip_bytes(r, "temp_bytes"))
                  for b, r in tried.items() if "error" not in r}
        if not open_:
            return dict(tried[fit_max], largest_tried=fail_min is None)
        guess = predict_largest(points, open_, limit)
        if guess is None and len(points) >= 2 and predict_bytes(points, min(open_)) > margin * limit:
            return dict(tried[fit_max], predicted={b: predict_bytes(points, b) / 2 ** 30 for b in open_[:1]})
        r = tried[guess or min(open_)] = compile_one(row, variant, guess or min(open_), remat, accum)
        if r.get("late"):
            return dict(tried[fit_max], predicted={b: predict_bytes(points, b) / 2 ** 30 for b in open_[:1]},
                        late=True)
        if _fits(r, max_hbm):
            fit_max = guess or min(open_)
        else:
            fail_min = guess or min(open_)


def table(results: list[dict]) -> str:
    lines = ["| row | variant | topology | mesh | global batch | accum | remat | GiB/chip | HBM "
             "| compiled/analytic FLOPs | compile s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | {r['variant']} | | | {r.get('batch')} | | | | | {r['error']} | |")
            continue
        mesh = "×".join(str(v) for v in r["mesh"].values())
        fit = " (does not fit)" if not r.get("fits", True) else " (largest tried)" if r.get("largest_tried") else ""
        lines.append(f"| {r['row']} | {r['variant']} | {r['topology']} | {mesh} | {r['batch']}{fit} | "
                     f"{r.get('accum', 1)} | {r['remat']} | "
                     f"{r['peak_gib_per_chip']:.2f} | {100 * r['hbm_fraction']:.0f}% | {r['flop_ratio']:.3f}"
                     f"{' (Pallas attention not counted)' if r.get('pallas_calls') else ''}"
                     f"{f' ({g} loops counted by their bound)' if (g := r.get('guessed_loops')) else ''} | "
                     f"{r['compile_s']} |")
    predicted = [f"- {r['row']} {r['variant']} at batch {b}: {gib:.2f} GiB/chip predicted"
                 f"{' (no compile started after the --until time)' if r.get('late') else ''}"
                 for r in results for b, gib in r.get("predicted", {}).items()]
    if predicted:
        lines += ["", "Not compiled, predicted by the line through the row's compiles:", *predicted]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows: " + ", ".join(ROWS))
    p.add_argument("--variants", default="base,packed,flash", help="comma-separated: base, packed, flash")
    p.add_argument("--search", action="store_true", help="find each row's largest global batch of --batches")
    p.add_argument("--batch", type=int, default=64, help="without --search: the global batch of every train row")
    p.add_argument("--batches", default="1024,512,256,128,64,32,16,8", help="with --search: global batches to try")
    p.add_argument("--gen-batch", type=int, default=8, help="prefill batch of generation rows")
    p.add_argument("--max-hbm", type=float, default=0.75, help="HBM fraction a step may use")
    p.add_argument("--margin", type=float, default=1.05, help="with --search: a batch predicted over margin × the "
                   "limit is not compiled (the line has come within 1 %% of the compiles)")
    p.add_argument("--remat", default=None, help="remat policy for every train row (default: the row's)")
    p.add_argument("--accum", type=int, default=None, help="gradient-accumulation micro-batches of every train row")
    p.add_argument("--json", default=None, help="append every compile as a JSON line to this file")
    p.add_argument("--reuse", action="store_true", help="take compiles already in --json instead of compiling again")
    p.add_argument("--until", default=None, help="UTC HH:MM after which no compile starts")
    args = p.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    compile_one = Compiles(lambda line: print(line, file=sys.stderr, flush=True), args.json, args.reuse, args.until)

    results = []
    for row in args.rows.split(","):
        for variant in args.variants.split(","):
            if ROWS[row][5] == "generate":
                if variant != "base":
                    continue
                r = compile_one(row, variant, args.gen_batch)
            elif args.search:
                r = size_row(row, variant, [int(b) for b in args.batches.split(",")], args.max_hbm, compile_one,
                             args.remat, args.accum, args.margin)
            else:
                r = compile_one(row, variant, args.batch, args.remat, args.accum)
                r = dict(r, fits=_fits(r, args.max_hbm)) if "error" not in r else r
            results.append(r)
            print(table(results[-1:]).splitlines()[2], flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
