"""mPLUG-Owl's conversation format (docs/design.md §5.3; mPLUG-Owl paper §4 "Instruction Tuning"), as
loss-annotated segments for training (`lav2_jax.systems.owl.samples`) and prompt strings for generation.

A conversation is ``[(role, text), ...]`` with roles alternating ``"human"`` / ``"assistant"`` from a human turn;
`image_turn` is the index of the human turn the image belongs to (-1: text-only), or one index per image of a
multi-image sample (in image order; several images may precede the same turn, one ``Human: <image>`` line each).
Rendered (``{S}`` = `SYSTEM`
unless the record has its own; loss on the parts in ⟦ ⟧; `EOS` is the tokenizer's EOS id, `IMAGE` the image's
Q + 1 placeholder ids)::

    {S}\\nHuman: <image>\\nHuman: q1\\nAI: ⟦a1</s>⟧\\nHuman: q2\\nAI: ⟦a2</s>⟧

i.e. the image is its own ``Human: <image>`` line just before the turn it belongs to (the release's training and
inference text), every answer follows ``"AI: "`` and carries the loss together with the EOS appended after it;
the system text, ``Human:`` turns, role tags, image tokens and padding carry none. Text-only samples (the paper's
Alpaca / Vicuna / Baize mix) are the same without the image line. Caption records (stage-1 style image–text pairs;
the release publishes no stage-1 code, so this rendering is ours) become one turn with an empty question:
``{S}\\nHuman: <image>\\nAI: ⟦caption</s>⟧``.

Segment boundaries are where the release tokenizes separately (text chunks, each with the tokenizer's dummy
prefix and no special tokens, after one BOS): around `IMAGE`, before and after each answer.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from lav2_jax.core.templates import EOS, IMAGE, Segments

SYSTEM = ("The following is a conversation between a curious human and AI assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
HUMAN, AI = "\nHuman: ", "\nAI: "
STOP_STRINGS = ("\nHuman:",)


def _check(turns: Sequence[tuple[str, str]]) -> None:
    for i, (role, _) in enumerate(turns):
        if role != ("human" if i % 2 == 0 else "assistant"):
            raise ValueError(f"turn {i} is {role!r}: turns must alternate human/assistant, starting with human")


def training_segments(turns: Sequence[tuple[str, str]], image_turn: Union[int, Sequence[int]] = -1,
                      system: Optional[str] = None) -> Segments:
    """Segments of a complete conversation (ends with an assistant turn); see the module docstring.
    `image_turn`: one turn index, or one per image (images in order; an index that is not a human turn's renders
    no image)."""
    _check(turns)
    if not turns or len(turns) % 2:
        raise ValueError("a training conversation needs complete human/assistant pairs")
    image_turns = [int(t) for t in image_turn] if hasattr(image_turn, "__iter__") else [int(image_turn)]
    out: Segments = []
    text = system or SYSTEM
    for i in range(0, len(turns), 2):
        for _ in range(image_turns.count(i)):  # one `Human: <image>` line per image of this turn
            out += [(text + HUMAN, False), (IMAGE, False)]
            text = ""
        out.append((text + HUMAN + turns[i][1] + AI, False))
        out += [(turns[i + 1][1], True), (EOS, True)]
        text = ""
    return out


def caption_segments(caption: str, system: Optional[str] = None) -> Segments:
    """An image–caption pair as one image turn: ``{S}\\nHuman: <image>\\nAI: ⟦caption</s>⟧``."""
    return [((system or SYSTEM) + HUMAN, False), (IMAGE, False), (AI, False), (caption, True), (EOS, True)]


def prompt(question: str, image: Union[bool, int] = False, history: Sequence[tuple[str, str]] = (),
           image_turn: int = 0, system: Optional[str] = None) -> str:
    """The generation prompt: `history` (complete human/assistant turns), then `question`, then the open
    ``"\\nAI: "``; with `image`, the ``Human: <image>`` line precedes turn `image_turn` (a human turn's index);
    an int `image` is a number of images, one ``Human: <image>`` line each (a multi-image prompt).

    `prompt("What is this?", image=True)` = the release's
    ``"{S}\\nHuman: <image>\\nHuman: What is this?\\nAI: "``. Past answers are rendered as text (no EOS).
    """
    turns = list(history) + [("human", question)]
    _check(turns)
    out = system or SYSTEM
    for i in range(0, len(turns), 2):
        if i == image_turn:
            out += (HUMAN + IMAGE) * int(image)
        out += HUMAN + turns[i][1] + AI
        if i + 1 < len(turns):
            out += turns[i + 1][1]
    return out
