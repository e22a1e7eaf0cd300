"""Multi-turn chat with the chat template of docs/design.md §3.3.2 (`lav2_jax.core.templates.chat_prompt`; mPLUG-Owl
checkpoints use their own, `lav2_jax.inference.prompts`).

Each reply is generated from the whole conversation rendered by `chat_prompt(turns, system)` (system text, "###"
separators, roles Human / Assistant, ending in "###Assistant:"), encoded with BOS and no EOS. Generation stops at
EOS or at the text "###" (the model learnt to end a turn with it: `lav2_jax.core.templates`); the reply is stored
stripped, so the next prompt renders it as " {reply}###" exactly as in training.

Context: the rendered prompt plus `max_new_tokens` must fit the model's `max_seq_len`. When it does not, the
oldest (human, assistant) pairs are dropped, one pair at a time, and `on_notice` is called with a one-line notice;
the newest human message is never dropped (if it alone does not fit, `PromptTooLong`). With too little room left
for `max_new_tokens`, the reply is cut at the context (as `generate` does).
With an image, every turn's prompt is generated with that image; a stack [k, H, W, 3] (mPLUG-Owl) gives the first
human turn k `Human: <image>` lines.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterator, Optional

from lav2_jax.inference import prompts as system_templates
from lav2_jax.inference.generation import PromptTooLong, encode_prompts
from lav2_jax.inference.streaming import stream_text


def _stderr_notice(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ChatSession:
    """A conversation with one bundle. `ask(text)` → reply; `ask_stream(text)` yields reply pieces."""

    def __init__(self, bundle, image=None, system: Optional[str] = None, max_new_tokens: int = 256,
                 temperature: float = 0.1, top_p: float = 0.75, seed: int = 0,
                 on_notice: Callable[[str], None] = _stderr_notice):
        self.bundle, self.image, self.system = bundle, image, system
        self.max_new_tokens, self.temperature, self.top_p, self.seed = max_new_tokens, temperature, top_p, seed
        self.on_notice = on_notice
        self.turns: list[tuple[str, str]] = []  # alternating ("human", text), ("assistant", text)
        self.dropped = 0  # (human, assistant) pairs dropped so far

    @property
    def context(self) -> int:
        return self.bundle.model.config.max_seq_len

    def _render(self, turns) -> str:
        """The prompt of `turns` in the bundle's system format (`lav2_jax.inference.prompts`)."""
        images = 0 if self.image is None else len(self.image) if getattr(self.image, "ndim", 3) == 4 else 1
        return system_templates.chat_prompt(self.bundle.model.adapter, turns, self.system, images)

    def _length(self, turns) -> int:
        return len(encode_prompts(self.bundle.tokenizer, [self._render(turns)])[0])

    def prompt_for(self, message: str) -> str:
        """The generation prompt for `message` after the history; drops the oldest turns that do not fit."""
        turns = [*self.turns, ("human", message)]
        dropped = 0
        while len(turns) > 1 and self._length(turns) + self.max_new_tokens > self.context:
            turns = turns[2:]
            dropped += 1
        n = self._length(turns)
        if n >= self.context:
            raise PromptTooLong(f"the message is {n} tokens long with the chat template; the model's context is "
                                f"{self.context} tokens")
        if dropped:
            self.dropped += dropped
            self.on_notice(f"[history: dropped the oldest {dropped} exchange(s) to fit the {self.context}-token "
                           "context]")
        self.turns = turns[:-1]
        return self._render(turns)

    def ask_stream(self, message: str) -> Iterator[str]:
        """Yields the reply's text pieces; the reply joins the history when the generator is exhausted or closed."""
        prompt = self.prompt_for(message)
        pieces: list[str] = []
        try:
            stop = system_templates.chat_stop(self.bundle.model.adapter)
            for piece in stream_text(self.bundle, prompt, self.image, stop=stop, lstrip=True,
                                     max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                     top_p=self.top_p, seed=self.seed + len(self.turns)):
                pieces.append(piece)
                yield piece
        finally:
            self.turns += [("human", message), ("assistant", "".join(pieces).strip())]

    def ask(self, message: str) -> str:
        for _ in self.ask_stream(message):
            pass
        return self.turns[-1][1]
