"""The method diagram (docs/img/method.png): for each system, which parameters train in which group and where the
visual tokens enter the language model. Colours follow the recipes of `lav2_jax.core.registry` (`paper-joint`,
`llava-stage1`/`llava-stage2`, `owl-stage1`/`owl-stage2`): caption group, instruction group, frozen.

Run: `python docs/figures/method.py` (or `make figures`).
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "img", "method.png")
CAPTION, INSTRUCTION, FROZEN = "#4c78a8", "#f58518", "#bab0ac"


def box(ax, x, y, w, h, text, colour, *, hatch=None, fontsize=8, text_colour="black"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.05", facecolor=colour,
                                edgecolor="black", linewidth=0.8, hatch=hatch))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, color=text_colour, wrap=True)


def arrow(ax, a, b, colour="black", style="-|>", lw=1.2):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=10, color=colour, linewidth=lw))


def decoder(ax, x, w, layers, colours, labels):
    """A column of decoder layers from y=1.6 upward: `layers` boxes with colours and labels (bottom first)."""
    y = 1.6
    for colour, label in zip(colours, labels):
        box(ax, x, y, w, 0.55, label, colour, fontsize=7)
        y += 0.7
    return y


def lav2(ax):
    ax.set_title("LLaMA-Adapter V2 (lav2): recipe paper-joint\none step = a caption batch + an instruction batch",
                 fontsize=9)
    box(ax, 0.2, 0.2, 1.6, 0.6, "CLIP ViT-L/14\n(frozen)", FROZEN)
    box(ax, 0.2, 1.6, 1.6, 0.8, "connector\n(visual projection\n+ blocks)", CAPTION)
    arrow(ax, (1.0, 0.8), (1.0, 1.6))
    box(ax, 2.6, 0.2, 2.2, 0.6, "text tokens", "white")
    top = decoder(ax, 2.6, 2.2, 3, [FROZEN] * 3, [
        "layers 1 … K (K = 1):\nfrozen W + gated\nvisual prompts", "layers K+1 … L (last 31):\nfrozen W + gated\n"
        "adapter prompts", "final norm, output head"])
    arrow(ax, (3.7, 0.8), (3.7, 1.6))
    arrow(ax, (1.8, 2.0), (2.6, 1.9), colour=CAPTION, lw=2.0)
    ax.text(2.2, 2.35, "early\nfusion", fontsize=7, ha="center", color=CAPTION)
    box(ax, 5.2, 2.6, 1.7, 0.9, "adapter prompts\n10 tokens × 31 layers\n+ zero-init gates", INSTRUCTION, fontsize=7)
    arrow(ax, (5.2, 3.05), (4.8, 2.6), colour=INSTRUCTION, lw=2.0)
    box(ax, 5.2, 0.9, 1.7, 1.3, "in every layer:\nbias + scale on\nevery linear\n(y = s·(Wx + b));\nnorms tuned",
        INSTRUCTION, fontsize=7)
    arrow(ax, (5.2, 1.6), (4.8, 1.85), colour=INSTRUCTION, lw=2.0)
    arrow(ax, (5.2, 1.9), (4.8, 2.5), colour=INSTRUCTION, lw=2.0)
    box(ax, 0.2, 3.0, 1.6, 0.6, "visual gate", CAPTION)
    arrow(ax, (1.0, 3.0), (1.0, 2.4), style="-")
    return top


def spliced(ax, title, tower, tower_colour, front, front_height, n_tokens, llm_colour):
    """A spliced system: the tower and its front-end on the left, their tokens written over the placeholders."""
    ax.set_title(title + "\nvisual tokens spliced into the sequence", fontsize=9)
    box(ax, 0.2, 0.2, 1.6, 0.6, tower, tower_colour, fontsize=7)
    box(ax, 0.2, 1.2, 1.6, front_height, front, CAPTION, fontsize=7)
    arrow(ax, (1.0, 0.8), (1.0, 1.2))
    box(ax, 2.6, 0.2, 2.2, 0.6, f"text + {n_tokens} placeholders\nper <image>", "white", fontsize=7)
    box(ax, 2.6, 1.05, 2.2, 0.45, f"{n_tokens} visual tokens written\nover the placeholders", "#e8e8e8", fontsize=7)
    arrow(ax, (1.8, 1.2 + front_height / 2), (2.6, 1.28), colour=CAPTION, lw=2.0)
    arrow(ax, (3.7, 0.8), (3.7, 1.05))
    decoder(ax, 2.6, 2.2, 4, [llm_colour] * 4, ["layer 1", "layer 2 … L−1", "layer L", "output head"])


def llava(ax):
    spliced(ax, "LLaVA-1.5 (llava): llava-stage1 → llava-stage2", "CLIP ViT-L/14-336\n(frozen, layer −2)", FROZEN,
            "mm_projector\nmlp2x_gelu\n(both stages)", 0.7, 576, INSTRUCTION)
    ax.text(5.0, 2.6, "stage 1: frozen\nstage 2: every LLM\nweight trains\n(llava-lora: LoRA\nr 128 instead)",
            fontsize=7, va="center")


def owl(ax):
    spliced(ax, "mPLUG-Owl (owl): owl-stage1 → owl-stage2", "Owl ViT-L/14\n(trains in stage 1)", CAPTION,
            "visual abstractor\n64 queries + vit_eos\n(stage 1)", 0.9, 65, FROZEN)
    box(ax, 5.2, 2.2, 1.7, 0.9, "LoRA r 8 on wq, wv\n(stage 2)", INSTRUCTION, fontsize=7)
    arrow(ax, (5.2, 2.65), (4.8, 2.65), colour=INSTRUCTION, lw=2.0)


def main() -> None:
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.6))
    for ax, draw in zip(axes, (lav2, llava, owl)):
        ax.set_xlim(0, 7.1)
        ax.set_ylim(0, 4.6)
        ax.axis("off")
        draw(ax)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="black") for c in (CAPTION, INSTRUCTION, FROZEN)]
    fig.legend(handles, ["caption group (trained on image–caption batches; llava/owl: the first stage's group)",
                         "instruction group (trained on instruction batches)", "frozen"],
               loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle("Which parameters train in which group, and where visual tokens enter", fontsize=12)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(OUT)


if __name__ == "__main__":
    main()
