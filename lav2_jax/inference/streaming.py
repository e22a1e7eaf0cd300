"""Token ids → text pieces as they are produced, with an optional stop string (the streaming CLI and chat).

`TextStreamer(tokenizer, stop="###")`: `push(token_id)` returns the text that became final with this token;
`finish()` the rest. Text is re-decoded from all ids so far (sentencepiece joins pieces and bytes across tokens)
and only the part past what was already emitted is returned. Held back until the next token: an incomplete UTF-8
sequence (decoded as U+FFFD) and a trailing partial match of the stop string (e.g. "#" or "##" before "###").
Once the stop string appears, `stopped` is True and nothing from it onwards is ever emitted.
"""

from __future__ import annotations

from typing import Iterator, Optional

from lav2_jax.inference.generation import stream


class TextStreamer:
    """Incremental detokenizer for one sequence."""

    def __init__(self, tokenizer, stop: Optional[str] = None, lstrip: bool = False):
        self.tokenizer, self.stop, self.lstrip = tokenizer, stop, lstrip
        self.ids: list[int] = []
        self.emitted = ""
        self.stopped = False

    def _text(self) -> str:
        text = self.tokenizer.decode(self.ids)
        text = text.lstrip() if self.lstrip else text
        if self.stop and self.stop in text:
            self.stopped = True
            text = text[:text.index(self.stop)]
        return text

    def _held_back(self, text: str) -> int:
        """How many trailing characters may still change (partial stop string, incomplete character)."""
        hold = 0
        if self.stop:
            for k in range(min(len(self.stop) - 1, len(text)), 0, -1):
                if text.endswith(self.stop[:k]):
                    hold = k
                    break
        if text.endswith("\ufffd"):
            hold = max(hold, len(text) - len(text.rstrip("\ufffd")))
        return hold

    def _emit(self, text: str) -> str:
        if not text.startswith(self.emitted):  # the decoded prefix changed (rare): emit nothing until it settles
            return ""
        piece, self.emitted = text[len(self.emitted):], text
        return piece

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(int(token_id))
        text = self._text()
        if not self.stopped:
            text = text[:len(text) - self._held_back(text)]
        return self._emit(text)

    def finish(self) -> str:
        """The held-back tail once generation has ended."""
        return "" if self.stopped else self._emit(self._text())

    @property
    def text(self) -> str:
        return self.emitted


def stream_text(bundle, prompt: str, image=None, *, stop: Optional[str] = None, lstrip: bool = False,
                **kwargs) -> Iterator[str]:
    """Text pieces of one prompt's continuation as they are produced; stops early at `stop` (not included).

    `kwargs` go to `lav2_jax.inference.generation.stream` (max_new_tokens, temperature, top_p, seed, mesh).
    """
    streamer = TextStreamer(bundle.tokenizer, stop=stop, lstrip=lstrip)
    tokens = stream(bundle, prompt, image, **kwargs)
    try:
        for token in tokens:
            piece = streamer.push(token)
            if piece:
                yield piece
            if streamer.stopped:
                return
        tail = streamer.finish()
        if tail:
            yield tail
    finally:
        tokens.close()
