"""The prompt format of each system, for the inference front ends (`lav2 generate`, `lav2 chat`, `lav2 eval`).

`adapter.system` picks the format: `lav2` (LLaMA-Adapter V2, and the default for any system without its own
entry here) uses `lav2_jax.core.templates` (Alpaca for single prompts, the ``###`` chat template); `owl` uses
`lav2_jax.systems.owl.templates` (``Human:`` / ``AI:``, the image as its own ``Human: <image>`` line, which spliced
systems need: the image's visual tokens are written where the prompt says ``<image>``); `llava` uses the
LLaVA-1.5 `vicuna_v1` template of `lav2_jax.systems.llava.conversation` (``USER: <image>\n… ASSISTANT:``, the image
at the front of the first human turn, replies ending at ``</s>``).

  instruction_prompt(adapter, instruction, input_text=None, image=False)  one question → final prompt string
  chat_prompt(adapter, turns, system=None, image=False)   alternating turns ending with a human turn → prompt
  chat_stop(adapter)                                      the text that ends a reply in chat
  caption_prompt(adapter)                                 the prompt that asks for an image's caption
  from_alpaca(adapter, prompt, image=False)               an Alpaca prompt re-rendered for the system (eval)

`image` may be a number of images for `owl` (one ``Human: <image>`` line each, a multi-image prompt).
"""

from __future__ import annotations

from typing import Optional, Sequence

from lav2_jax.systems.llava import conversation as conversation_templates
from lav2_jax.systems.owl import templates as owl_templates
from lav2_jax.core import templates

OWL_CAPTION_QUESTION = "Describe the image briefly."
LLAVA_TEMPLATE = "vicuna_v1"
LLAVA_CAPTION_QUESTION = "Provide a one-sentence caption for the provided image."


def _system(adapter) -> str:
    return getattr(adapter, "system", "lav2") if adapter is not None else "lav2"


def instruction_prompt(adapter, instruction: str, input_text: Optional[str] = None, image: bool = False) -> str:
    if _system(adapter) == "owl":
        question = instruction + ("\n" + input_text if input_text and input_text.strip() else "")
        return owl_templates.prompt(question, image=image)
    if _system(adapter) == "llava":
        question = instruction + ("\n" + input_text if input_text and input_text.strip() else "")
        return _llava_prompt([("human", question)], image)
    return templates.alpaca(instruction, input_text)


def _llava_prompt(turns, image: bool, system: Optional[str] = None) -> str:
    return conversation_templates.prompt(LLAVA_TEMPLATE, list(turns), 0 if image else -1, system)


def chat_prompt(adapter, turns: Sequence[tuple[str, str]], system: Optional[str] = None, image: bool = False) -> str:
    if _system(adapter) == "owl":
        turns = list(turns)
        return owl_templates.prompt(turns[-1][1], image=image, history=turns[:-1], system=system)
    if _system(adapter) == "llava":
        return _llava_prompt(turns, image, system)
    return templates.chat_prompt(turns, system)


def chat_stop(adapter) -> str:
    if _system(adapter) == "llava":
        return conversation_templates.stop_strings(LLAVA_TEMPLATE)[0]
    return owl_templates.STOP_STRINGS[0] if _system(adapter) == "owl" else templates.CHAT_SEP


def caption_prompt(adapter) -> str:
    if _system(adapter) == "owl":
        return owl_templates.prompt(OWL_CAPTION_QUESTION, image=True)
    if _system(adapter) == "llava":
        return _llava_prompt([("human", LLAVA_CAPTION_QUESTION)], True)
    return templates.caption_prompt()


def _alpaca_pattern(fmt: str):
    import re

    parts = re.split(r"\{(instruction|input)\}", fmt)
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.*)" for i, p in enumerate(parts))
    return re.compile(regex + r"\Z", re.DOTALL)


def from_alpaca(adapter, prompt_text: str, image: bool = False) -> str:
    """An Alpaca-formatted prompt (`templates.alpaca`, what the benchmarks of `lav2_jax.eval` write) in the format
    of `adapter`'s system: unchanged for LLaMA-Adapter V2 (and for text that is not an Alpaca prompt)."""
    if _system(adapter) not in ("owl", "llava"):
        return prompt_text
    for fmt in (templates.ALPACA_WITH_INPUT, templates.ALPACA_NO_INPUT):
        m = _alpaca_pattern(fmt).match(prompt_text)
        if m:
            return instruction_prompt(adapter, m.group("instruction"), m.groupdict().get("input"), image)
    return prompt_text
