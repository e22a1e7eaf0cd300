"""LLaVA's conversation templates (LLaVA paper §5; LLaVA-1.5): `plain`, `vicuna_v1`, `llava_v1` and the v0 ``###``
template, as loss-annotated segments shared by training data (`lav2_jax.systems.llava.samples`) and generation.

A conversation is ``[(role, text), ...]`` with roles alternating ``"human"`` / ``"assistant"``, starting with a
human turn. `image_turn` is the index of the turn that carried ``<image>`` in the source (-1: none); as in LLaVA's
training data preparation its text becomes ``"<image>\\n" + text`` (the placeholder moved to the turn's front).

Segments are ``(text, is_answer)`` pairs whose concatenation is the sample. Two texts are *special segments*,
never plain text: `IMAGE` (``"<image>"``, the image's visual tokens) and `EOS` (``"</s>"``, the tokenizer's EOS
id, LLaVA's `sep2`). Tokenization (`lav2_jax.systems.llava.samples.encode`) starts a new text run after BOS, an
image or an EOS (each run gets the tokenizer's dummy prefix, like LLaVA's per-chunk tokenization around the image
and a legacy LLaMA tokenizer after ``</s>``); the other segment boundaries fall right before a space, where
sentencepiece never merges across, so the tokens are those of the whole string.

Rendered samples (``{S}`` the system text; loss on the parts in ⟦ ⟧, nothing on image tokens, system text, human
turns or role tags):

* ``plain`` (stage 1): ``<image>⟦caption\\n⟧`` — the human text is discarded, no system, no EOS.
* ``vicuna_v1`` / ``llava_v1`` (LLaVA-1.5 stage 2; the two differ only in the system text):
  ``{S} USER: <image>\\nq1 ASSISTANT:⟦ a1</s>⟧USER: q2 ASSISTANT:⟦ a2</s>⟧``
  (system + " ", then ``ROLE: msg`` followed by sep " " after user turns and sep2 "</s>" after assistant turns;
  the loss starts at the reply's first token, which carries the space after ``ASSISTANT:``, and includes the
  reply's ``</s>``).
* ``v0`` (the LLaVA paper's ``###`` template, in the training form ``"### Human: …\\n### Assistant: …\\n"``):
  ``{S}\\n\\n### Human: <image>\\nq1\\n### Assistant:⟦ a1\\n###⟧ Human: q2\\n### Assistant:⟦ a2\\n###⟧`` —
  each reply is followed by its turn end ``"\\n"`` and the next ``###`` (the stop string generation looks for).
  Deviation, on purpose: the original derives the v0 mask by counting separately tokenized turns, which also
  leaves the ``### Assistant:`` tag and two tokens of every human turn in the loss; here the loss is exactly the
  replies and their stop marker, like the v1 rule.

`prompt(template, turns, image_turn)` renders a conversation that ends with a human turn plus the open assistant
tag (``" ASSISTANT:"``, ``"\\n### Assistant:"``; ``plain``: just ``"<image>"``) as one string with literal
``<image>`` / ``</s>``, for generation; `stop_strings(template)` are the texts that end a reply.
"""

from __future__ import annotations

from typing import Sequence

# IMAGE, EOS (the special segments) and render: part of this module's API
from lav2_jax.core.templates import CHAT_SYSTEM, EOS, IMAGE, ROLES, SPECIAL, Segments, render  # noqa: F401

VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAVA_V1_SYSTEM = CHAT_SYSTEM  # "... a curious human ... the human's questions."
V0_SYSTEM = CHAT_SYSTEM

TEMPLATES = ("plain", "vicuna_v1", "llava_v1", "v0")
_SYSTEMS = {"vicuna_v1": VICUNA_V1_SYSTEM, "llava_v1": LLAVA_V1_SYSTEM, "v0": V0_SYSTEM, "plain": ""}


def check_template(name: str) -> str:
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; known: {', '.join(TEMPLATES)}")
    return name


def _check_turns(turns: Sequence[tuple[str, str]], last_role: str) -> None:
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    for i, (role, _) in enumerate(turns):
        if role != ROLES[i % 2]:
            raise ValueError(f"turn {i} has role {role!r}, expected {ROLES[i % 2]!r} (turns alternate human/assistant)")
    if turns[-1][0] != last_role:
        raise ValueError(f"the last turn must be {last_role!r}")


def _with_image(text: str, here: bool, before: str, after: str, is_answer: bool = False) -> Segments:
    """`before + text + after` as segments, with the image moved to the front of `text` when `here`."""
    if not here:
        return [(before + text + after, is_answer)]
    out: Segments = [(before, False)] if before else []
    return out + [(IMAGE, False), ("\n" + text + after, is_answer)]


def _merge(segments: Segments) -> Segments:
    """Joins neighbouring plain-text segments of equal `is_answer` (no special segment is ever merged)."""
    out: Segments = []
    for text, ans in segments:
        if not text:
            continue
        if out and out[-1][1] == ans and text not in SPECIAL and out[-1][0] not in SPECIAL:
            out[-1] = (out[-1][0] + text, ans)
        else:
            out.append((text, ans))
    return out


# template: (head of the first turn, head of later turns, human role tag, open assistant tag, reply end, EOS?)
_STYLES = {
    "vicuna_v1": ("{system} ", "", "USER: ", " ASSISTANT:", "", True),
    "llava_v1": ("{system} ", "", "USER: ", " ASSISTANT:", "", True),
    "v0": ("{system}\n\n### ", " ", "Human: ", "\n### Assistant:", "\n###", False),
}


def _conversation(template: str, turns, image_turn: int, system: str) -> Segments:
    head0, head, human, tag, end, eos = _STYLES[template]
    segs: Segments = []
    for i in range(0, len(turns), 2):
        lead = head0.format(system=system) if i == 0 else head
        segs += _with_image(turns[i][1], image_turn == i, lead + human, tag)
        if i + 1 < len(turns):
            segs += _with_image(turns[i + 1][1], image_turn == i + 1, " ", end, is_answer=True)
            if eos:
                segs.append((EOS, True))
    return _merge(segs)


def training_segments(template: str, turns: Sequence[tuple[str, str]], image_turn: int = -1,
                      system: str | None = None) -> Segments:
    """Loss-annotated segments of a finished conversation (it ends with an assistant turn).

    `system` replaces the template's system text when not None/empty. `plain` uses the first assistant reply as
    the caption and needs an image (`image_turn` >= 0): LLaVA's stage-1 samples are image–caption pairs.
    """
    check_template(template)
    _check_turns(turns, "assistant")
    if template == "plain":
        if image_turn < 0:
            raise ValueError("the plain template needs an image (stage-1 samples are image-caption pairs)")
        return caption_segments(turns[1][1])
    return _conversation(template, turns, image_turn, system or _SYSTEMS[template])


def caption_segments(caption: str) -> Segments:
    """The `plain` sample of an image–caption pair: ``<image>`` + caption + ``"\\n"``, loss on caption + newline."""
    return [(IMAGE, False), (caption + "\n", True)]



def prompt_segments(template: str, turns: Sequence[tuple[str, str]], image_turn: int = -1,
                    system: str | None = None) -> Segments:
    """Segments of a generation prompt: the conversation so far (ending with a human turn), the open assistant tag."""
    check_template(template)
    _check_turns(turns, "human")
    if template == "plain":
        return [(IMAGE, False)]
    return _conversation(template, turns, image_turn, system or _SYSTEMS[template])


def prompt(template: str, turns: Sequence[tuple[str, str]], image_turn: int = -1, system: str | None = None) -> str:
    """`prompt_segments` as one string with literal ``<image>`` / ``</s>``."""
    return render(prompt_segments(template, turns, image_turn, system))


def stop_strings(template: str) -> tuple[str, ...]:
    """Texts that end an assistant reply (besides the EOS token)."""
    check_template(template)
    return {"plain": ("\n",), "v0": ("###",)}.get(template, (EOS,))
