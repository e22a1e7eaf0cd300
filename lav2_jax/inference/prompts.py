"""The prompt format of each system, for the inference front ends (`lav2 generate`, `lav2 chat`, `lav2 eval`,
`lav2 serve`): each function asks the adapter's system (`lav2_jax.core.registry.of(adapter)`, the `System` prompt
hooks; `lav2` for None, a language-only model).

  instruction_prompt(adapter, instruction, input_text=None, image=False)  one question → final prompt string
  chat_prompt(adapter, turns, system=None, image=False)   alternating turns ending with a human turn → prompt
  chat_stop(adapter)                                      the text that ends a reply in chat
  caption_prompt(adapter)                                 the prompt that asks for an image's caption
  from_alpaca(adapter, prompt, image=False)               an Alpaca prompt re-rendered for the system (eval)

The formats: LLaMA-Adapter V2 `lav2_jax.core.templates` (Alpaca for single prompts, the ``###`` chat template);
mPLUG-Owl `lav2_jax.systems.owl.templates` (``Human:`` / ``AI:``, the image as its own ``Human: <image>`` line,
which spliced systems need: the image's visual tokens are written where the prompt says ``<image>``); LLaVA the
LLaVA-1.5 `vicuna_v1` template of `lav2_jax.systems.llava.conversation` (``USER: <image>\\n… ASSISTANT:``, the image
at the front of the first human turn, replies ending at ``</s>``). `image` may be a number of images for a system
whose prompts hold several (`System.max_images`; mPLUG-Owl: one ``Human: <image>`` line each).
"""

from __future__ import annotations

from typing import Optional, Sequence

from lav2_jax.core import registry


def instruction_prompt(adapter, instruction: str, input_text: Optional[str] = None, image: bool = False) -> str:
    return registry.of(adapter).instruction_prompt(adapter, instruction, input_text, image)


def chat_prompt(adapter, turns: Sequence[tuple[str, str]], system: Optional[str] = None, image: bool = False) -> str:
    return registry.of(adapter).chat_prompt(adapter, turns, system, image)


def chat_stop(adapter) -> str:
    return registry.of(adapter).chat_stop(adapter)


def caption_prompt(adapter) -> str:
    return registry.of(adapter).caption_prompt(adapter)


def from_alpaca(adapter, prompt_text: str, image: bool = False) -> str:
    """An Alpaca-formatted prompt (`templates.alpaca`, what the benchmarks of `lav2_jax.eval` write) in the format
    of `adapter`'s system: unchanged for LLaMA-Adapter V2 (and for text that is not an Alpaca prompt)."""
    return registry.of(adapter).from_alpaca(adapter, prompt_text, image)
