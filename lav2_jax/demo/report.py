"""The demo's report: a printed table, `report.md`, `report.json` and `report.png`.

report.json (exactly): {"heldout": {"trained": {METRIC: x}, "gates_off": {...}, "untrained": {...},
"chance": {...}}, "time_s": t, "peak_rss_mib": m} with the metrics of `lav2_jax.demo.heldout` (all in [0, 1]).

report.png: (1) the training loss of each group over steps (caption stream → caption group, instruction stream →
instruction group), (2) gate openings mean |tanh(gate)| per layer over training (adapter-prompt gates of the
prompted layers, early visual-prompt gates), (3) a grid of held-out images with the trained model's caption
under each, beside the truth (green: all four attributes right).
"""

from __future__ import annotations

import json
import os
import resource
from typing import Sequence

import numpy as np

CONDITIONS = ("trained", "gates_off", "untrained", "chance")
HEADLINE = ("caption_accuracy", "vqa_accuracy", "text_accuracy")


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def report_json(heldout: dict[str, dict[str, float]], time_s: float) -> dict:
    return {"heldout": {c: dict(heldout[c]) for c in CONDITIONS}, "time_s": float(time_s),
            "peak_rss_mib": peak_rss_mib()}


def table(heldout: dict[str, dict[str, float]]) -> str:
    """Metrics × conditions as an aligned text table (headline metrics first)."""
    metrics = list(HEADLINE) + [m for m in heldout["trained"] if m not in HEADLINE]
    rows = [("metric",) + CONDITIONS] + [(m,) + tuple(f"{heldout[c][m]:.3f}" for c in CONDITIONS) for m in metrics]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown(heldout: dict[str, dict[str, float]], notes: Sequence[str], commands: Sequence[str]) -> str:
    metrics = list(HEADLINE) + [m for m in heldout["trained"] if m not in HEADLINE]
    out = ["# lav2 demo: LLaMA-Adapter V2 joint training on embedded data", "", *notes, "",
           "| metric | " + " | ".join(CONDITIONS) + " |", "|---" * (len(CONDITIONS) + 1) + "|"]
    out += [f"| {m} | " + " | ".join(f"{heldout[c][m]:.3f}" for c in CONDITIONS) + " |" for m in metrics]
    out += ["", "![report](report.png)", "", "Try the checkpoint:", "", "```bash", *commands, "```", ""]
    return "\n".join(out)


def read_metrics(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot(path: str, metrics_rows: list[dict], samples: Sequence[tuple[np.ndarray, str, str, bool]],
         prompted_layers: Sequence[int]) -> str:
    """Writes report.png (module docstring). `samples`: (uint8 image, generated caption, true caption, all right)."""
    import matplotlib  # lazy: matplotlib takes about a second to import; only the report's plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 6
    grid_rows = (len(samples) + cols - 1) // cols
    fig = plt.figure(figsize=(15, 4.2 + 2.3 * grid_rows))
    spec = fig.add_gridspec(1 + grid_rows, cols, height_ratios=[2.2] + [1.2] * grid_rows, hspace=0.55)
    steps = [r["step"] for r in metrics_rows]
    ax = fig.add_subplot(spec[0, :3])
    for key, label in (("loss/caption", "caption batches → caption group"),
                       ("loss/instruction", "instruction batches → instruction group")):
        ax.plot(steps, [r.get(key, np.nan) for r in metrics_rows], label=label)
    ax.set(xlabel="step", ylabel="loss (answer tokens)", title="training loss per group", yscale="log")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(spec[0, 3:])
    for layer in prompted_layers:
        ax.plot(steps, [r["gate/adapter"][layer] if "gate/adapter" in r else np.nan for r in metrics_rows],
                label=f"adapter prompt gate, layer {layer}")
    if metrics_rows and "gate/visual" in metrics_rows[0]:
        for k in range(len(metrics_rows[0]["gate/visual"])):
            ax.plot(steps, [r["gate/visual"][k] for r in metrics_rows], "--", label=f"visual prompt gate, layer {k}")
    ax.set(xlabel="step", ylabel="mean |tanh(gate)|", title="gate openings per layer (zero-init)")
    ax.legend(fontsize=8)
    for i, (img, generated, truth, right) in enumerate(samples):
        ax = fig.add_subplot(spec[1 + i // cols, i % cols])
        ax.imshow(img, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"gen: {generated}", fontsize=8, color="green" if right else "red")
        ax.set_xlabel(f"true: {truth}", fontsize=8)
    fig.suptitle("held-out images: generated caption (title) vs truth (below)", y=0.995, fontsize=10)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path
