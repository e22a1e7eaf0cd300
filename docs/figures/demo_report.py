"""The demo's figures for the docs.

`python docs/figures/demo_report.py [--workdir demo_out]`:
- with `--workdir`, copies that run's `report.png` (written by `lav2 demo`, `lav2_jax.demo.report`) to
  docs/img/demo_report.png and its `report.json` to docs/figures/data/demo_report.json (the committed sample);
- always plots docs/img/demo_heldout.png from the sample: the held-out accuracies of `report.json` per condition
  (trained, gates off, untrained, chance), headline metrics on the left and the per-attribute ones on the right.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DOCS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(DOCS, "figures", "data", "demo_report.json")
IMG = os.path.join(DOCS, "img")
CONDITIONS = ("trained", "gates_off", "untrained", "chance")
HEADLINE = ("caption_accuracy", "vqa_accuracy", "text_accuracy")
COLOURS = ("#4c78a8", "#f58518", "#bab0ac", "#54a24b")


def bars(ax, report: dict, metrics: list[str], title: str) -> None:
    held = report["heldout"]
    x = np.arange(len(metrics))
    width = 0.8 / len(CONDITIONS)
    for i, (cond, colour) in enumerate(zip(CONDITIONS, COLOURS)):
        values = [held[cond].get(m, np.nan) for m in metrics]
        ax.bar(x + (i - 1.5) * width, values, width, label=cond.replace("_", " "), color=colour, edgecolor="black",
               linewidth=0.4)
    ax.set_xticks(x, [m.replace("_accuracy", "").replace("_", "\n") for m in metrics], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", help="a `lav2 demo` workdir whose report.png / report.json to take")
    args = p.parse_args()
    os.makedirs(IMG, exist_ok=True)
    if args.workdir:
        shutil.copyfile(os.path.join(args.workdir, "report.png"), os.path.join(IMG, "demo_report.png"))
        shutil.copyfile(os.path.join(args.workdir, "report.json"), SAMPLE)
        print(os.path.join(IMG, "demo_report.png"))
    with open(SAMPLE, encoding="utf-8") as f:
        report = json.load(f)
    metrics = list(report["heldout"]["trained"])
    attributes = [m for m in metrics if m not in HEADLINE]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1, 2.2]})
    bars(axes[0], report, [m for m in HEADLINE if m in metrics], "headline metrics")
    bars(axes[1], report, attributes, "per attribute (caption_* and vqa_*)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9, frameon=False)
    fig.suptitle(f"lav2 demo, held out: trained adapter against gates off, untrained base and chance "
                 f"({report['time_s']:.0f} s, {report['peak_rss_mib']:.0f} MiB peak RSS)", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out = os.path.join(IMG, "demo_heldout.png")
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main()
