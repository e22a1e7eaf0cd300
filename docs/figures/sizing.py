"""The sizing figure (docs/img/sizing.png) from the recorded AOT compiles, `benchmarks/tpu_sizing_compiles.jsonl`.

Left: compiled peak memory per chip (share of the chip's HBM) against the global batch, for the paper's joint step
with packed rows, one line per table row and remat setting; the dashed line is the 75 % limit the search uses.
Right: compiled / analytic FLOPs per row and remat setting at the largest batch compiled (the compute a step
spends beyond the model's FLOPs: recomputation). Step times were not measured (AOT compiles, no chips), so this is
memory and work, not throughput. When a (row, variant, batch, remat, accum) was compiled more than once, the last
record counts (the file is appended to; later records follow FLOP-counter fixes).

Run: `python docs/figures/sizing.py` (or `make figures`).
"""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC = os.path.join(ROOT, "benchmarks", "tpu_sizing_compiles.jsonl")
OUT = os.path.join(ROOT, "docs", "img", "sizing.png")
ROWS = {"7b-v5e8": "7B, v5e-8", "7b-v4-8": "7B, v4-8", "13b-v5e16": "13B, v5e-16", "33b-v5p16": "33B, v5p-16",
        "65b-v5p32": "65B, v5p-64 (32 chips)", "70b-v5p32": "L2-70B, v5p-64 (32 chips)",
        "65b-v4-32": "65B, v4-64 (32 chips)", "70b-v4-32": "L2-70B, v4-64 (32 chips)"}


def records() -> dict[tuple, dict]:
    out: dict[tuple, dict] = {}
    with open(SRC, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if "error" in r or r.get("row") not in ROWS or r.get("variant") != "packed":
                continue
            out[(r["row"], r["batch"], r["remat"], r["accum"])] = r  # the last record of a compile counts
    return out


def main() -> None:
    recs = records()
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 7.5), gridspec_kw={"width_ratios": [1.3, 1]})
    series: dict[tuple, list] = {}
    for (row, batch, remat, accum), r in recs.items():
        series.setdefault((row, remat, accum), []).append((batch, 100 * r["hbm_fraction"]))
    colours = dict(zip(ROWS, plt.get_cmap("tab10").colors))
    for (row, remat, accum), pts in sorted(series.items(), key=lambda kv: list(ROWS).index(kv[0][0])):
        pts.sort()
        style = "-o" if remat == "dots_no_batch" else "--s"
        left.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colours[row],
                  label=f"{ROWS[row]}: {remat}, {accum} micro-batch{'es' if accum > 1 else ''}")
    left.axhline(75, color="black", linestyle=":", linewidth=1)
    left.text(64, 77, "75 % of HBM: the search's limit", fontsize=8)
    left.set_xscale("log", base=2)
    left.set_xlabel("global batch (rows of each stream per optimizer step)")
    left.set_ylabel("compiled peak per chip, % of HBM")
    left.set_title("Memory: joint step, packed rows (AOT compiles, 2026-12-01)", fontsize=10)
    left.set_ylim(0, 100)
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    left.grid(alpha=0.3)

    best: dict[tuple, dict] = {}
    for (row, batch, remat, accum), r in recs.items():
        key = (row, remat)
        if key not in best or batch > best[key]["batch"]:
            best[key] = r
    keys = sorted(best, key=lambda k: (list(ROWS).index(k[0]), k[1]))
    labels = [f"{ROWS[row]}\n{remat} @ {best[(row, remat)]['batch']}" for row, remat in keys]
    values = [best[k]["flop_ratio"] for k in keys]
    bars = right.barh(range(len(keys)), values, color=[colours[k[0]] for k in keys],
                      hatch=None, edgecolor="black", linewidth=0.5)
    for b, (row, remat) in zip(bars, keys):
        if remat == "full":
            b.set_hatch("//")
    for i, v in enumerate(values):
        right.text(v + 0.01, i, f"{v:.3f}", va="center", fontsize=7)
    right.set_yticks(range(len(keys)), labels, fontsize=7)
    right.invert_yaxis()
    right.axvline(1.0, color="black", linewidth=0.8)
    right.set_xlim(0.9, 1.7)
    right.set_xlabel("compiled / analytic FLOPs (hatched: full remat recomputes the forward)")
    right.set_title("Work per step beyond the model's FLOPs, at the largest batch compiled", fontsize=10)
    right.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(OUT)


if __name__ == "__main__":
    main()
