"""Prompt templates of docs/design.md §3.3.2, shared by training data (`lav2_jax.data`) and inference.

Every string here is the exact text of docs/design.md §3.3.2; do not reformat.

* `alpaca(instruction, input=None)` — the Alpaca prompt, ending in ``"### Response:"``. An empty or
  whitespace-only `input` selects the no-input form (Alpaca data stores "no input" as ``""``).
* `caption_prompt()` — the caption instruction ``"Generate caption of this image"`` in the no-input template.
* Chat (the 65B chat model's format: system text, separator ``"###"``, roles ``Human`` / ``Assistant``)::

      {system}###Human: {h1}###Assistant: {a1}###Human: {h2}###Assistant: {a2}<EOS>

  `chat_prompt(turns)` renders the text up to and including the final ``"###Assistant:"`` for generation.

Training sequences are *segments*: a list of ``(text, is_answer)`` whose concatenation is the full text
(`instruction_segments`, `caption_segments`, `chat_segments`). The loss covers answer segments and the final EOS.
Decision (documented for inference): the Alpaca/caption answer follows ``"### Response:"`` with no
separator, exactly ``prompt + answer``; in chat, an assistant answer segment is ``" " + text`` (the space after
``"Assistant:"``) and, for every assistant turn but the last, also the following ``"###"`` so the model learns to
end its turn; the last turn ends with EOS. Generation therefore stops at EOS or at the text ``"###"``.

Systems that splice images into the token sequence (LLaVA, mPLUG-Owl) use two *special segments*, never plain
text: `IMAGE` (``"<image>"``, the image's placeholder ids) and `EOS` (``"</s>"``, the tokenizer's EOS id).
"""

from __future__ import annotations

import re
from typing import Sequence

ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:"
)
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
CAPTION_INSTRUCTION = "Generate caption of this image"
CHAT_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
CHAT_SEP = "###"
HUMAN = "Human"
ASSISTANT = "Assistant"
ROLES = ("human", "assistant")

Segments = list[tuple[str, bool]]

IMAGE = "<image>"
EOS = "</s>"
SPECIAL = (IMAGE, EOS)


def alpaca(instruction: str, input: str | None = None) -> str:  # noqa: A002 - the field's name in Alpaca data
    """The Alpaca prompt of docs/design.md §3.3.2 (with the input form when `input` has non-blank text)."""
    if input is not None and input.strip():
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def render(segments: Segments) -> str:
    """The segments' text, concatenated: what the model reads (special segments such as ``<image>`` or ``</s>``
    written as their text)."""
    return "".join(t for t, _ in segments)


def caption_prompt() -> str:
    """`alpaca("Generate caption of this image")`: the prompt of every caption sample."""
    return alpaca(CAPTION_INSTRUCTION)


def instruction_segments(instruction: str, input: str | None, output: str) -> Segments:  # noqa: A002
    """`[(alpaca(instruction, input), False), (output, True)]`."""
    return [(alpaca(instruction, input), False), (output, True)]


def caption_segments(caption: str) -> Segments:
    """`[(caption_prompt(), False), (caption, True)]`."""
    return [(caption_prompt(), False), (caption, True)]


def _check_turns(turns: Sequence[tuple[str, str]], last_role: str) -> None:
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    for i, (role, _) in enumerate(turns):
        expected = ROLES[i % 2]
        if role != expected:
            raise ValueError(f"turn {i} has role {role!r}, expected {expected!r} (turns alternate human/assistant)")
    if turns[-1][0] != last_role:
        raise ValueError(f"the last turn must be {last_role!r}")


def chat_segments(turns: Sequence[tuple[str, str]], system: str | None = None) -> Segments:
    """Training segments of a conversation `[(role, text), ...]`, roles alternating "human"/"assistant".

    The conversation must start with a human turn and end with an assistant turn.
    """
    _check_turns(turns, "assistant")
    segments: Segments = []
    for i in range(0, len(turns), 2):
        # The first prompt carries the system text and a separator; later ones follow an answer ending in "###".
        head = (system if system is not None else CHAT_SYSTEM) + CHAT_SEP if i == 0 else ""
        answer = " " + turns[i + 1][1] + (CHAT_SEP if i + 2 < len(turns) else "")
        segments += [(f"{head}{HUMAN}: {turns[i][1]}{CHAT_SEP}{ASSISTANT}:", False), (answer, True)]
    return segments


def chat_prompt(turns: Sequence[tuple[str, str]], system: str | None = None) -> str:
    """Generation prompt: the conversation so far (ending with a human turn) followed by ``"###Assistant:"``."""
    _check_turns(turns, "human")
    if len(turns) == 1:
        return chat_segments([*turns, ("assistant", "")], system)[0][0]
    text = render(chat_segments(turns[:-1], system))
    return f"{text}{CHAT_SEP}{HUMAN}: {turns[-1][1]}{CHAT_SEP}{ASSISTANT}:"


def _alpaca_pattern(fmt: str) -> re.Pattern:
    parts = re.split(r"\{(instruction|input)\}", fmt)
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.*)" for i, p in enumerate(parts))
    return re.compile(regex + r"\Z", re.DOTALL)


_ALPACA_PATTERNS = (_alpaca_pattern(ALPACA_WITH_INPUT), _alpaca_pattern(ALPACA_NO_INPUT))


def question_with_input(instruction: str, input_text: str | None) -> str:
    """One question from an instruction and its optional Input field (the instruction, then the input on its own
    line when it has text), for prompt formats without a separate Input field (LLaVA, mPLUG-Owl)."""
    return instruction + ("\n" + input_text if input_text and input_text.strip() else "")


def parse_alpaca(prompt_text: str) -> tuple[str, str | None] | None:
    """(instruction, input or None) of a prompt written by `alpaca`, or None for any other text."""
    for pattern in _ALPACA_PATTERNS:
        m = pattern.match(prompt_text)
        if m:
            return m.group("instruction"), m.groupdict().get("input")
    return None
