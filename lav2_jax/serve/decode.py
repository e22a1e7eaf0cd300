"""A batched, step-wise decode of several requests at once, with per-row budgets and early stops.

`BatchDecode(bundle, prompts, images, budgets, temperature, top_p, seed)` runs the engine's prefill
(`lav2_jax.inference.engine.prefill_fn`) over all rows, then one jitted decode step (`engine.step_fn`) per
`advance()`: the same functions `lav2 generate` streams with (`lav2_jax.inference.generation.stream`), for B rows
instead of one, so a greedy row's tokens equal `lav2 generate`'s for the same prompt. Chosen over the single
`generate_fn` call (prefill + `lax.while_loop`) because streamed and non-streamed rows share one engine call,
every row's tokens reach its client as they are produced, and a row can be stopped between steps (a stop string,
a client that went away): `advance(stop=[i, …])` marks those rows done on the device, and the loop ends as soon
as every row is done (a row alone in its call stops the computation).

Shapes: the batch bucket B and prompt bucket T of `generation.prepare`; `poll()` → (tok [n], new [n], done [n])
for the n real rows: the latest token of each row, whether it was produced by the last step, whether the row is
done (EOS, budget, or stopped).

`StopStreamer` is `lav2_jax.inference.streaming.TextStreamer` with several stop strings (OpenAI `stop` plus the
template's separator): text from the earliest stop string on is never emitted.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lav2_jax.inference import engine
from lav2_jax.inference.generation import decode_view, place, prepare, sampling_spec
from lav2_jax.inference.streaming import TextStreamer


class StopStreamer(TextStreamer):
    """Incremental detokenizer that ends at the earliest of several stop strings."""

    def __init__(self, tokenizer, stops: Sequence[str] = (), lstrip: bool = False):
        super().__init__(tokenizer, stop=None, lstrip=lstrip)
        self.stops = tuple(s for s in stops if s)

    def _text(self) -> str:
        text = self.tokenizer.decode(self.ids)
        text = text.lstrip() if self.lstrip else text
        cuts = [text.index(s) for s in self.stops if s in text]
        if cuts:
            self.stopped = True
            text = text[:min(cuts)]
        return text

    def _held_back(self, text: str) -> int:
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        if text.endswith("\ufffd"):
            hold = max(hold, len(text) - len(text.rstrip("\ufffd")))
        return hold


class BatchDecode:
    """Prefill on construction, then `advance()` one decode step at a time until `finished`."""

    def __init__(self, bundle, prompts: Sequence[str], images: Optional[Sequence[Optional[np.ndarray]]],
                 budgets: Sequence[int], temperature: float, top_p: float, seed: int):
        tok = bundle.tokenizer
        model, params = decode_view(bundle, bundle.model, bundle.params, None)
        if images is not None and all(im is None for im in images):
            images = None
        batch = prepare(model, tok, prompts, images, max(budgets), 1)
        batch.budgets[:batch.n] = np.minimum(np.asarray(budgets, np.int32), batch.budgets[:batch.n])
        params, inputs = place(model, params, batch, None)
        self.n, self.new_len, self.eos_id = batch.n, batch.new_len, tok.eos_id
        self.model, self.params = model, params
        self.spec = sampling_spec(batch, tok, temperature, top_p, seed)
        self.state = engine.prefill_fn(model, self.spec, params, **inputs)
        self.steps = 1
        self._seen = np.zeros((self.n,), np.int32)
        self._host()

    def _host(self) -> None:
        tok, count, done, step = jax.device_get((self.state.tok, self.state.count, self.state.done, self.state.step))
        count = np.asarray(count)[:self.n]
        self._tok, self._done = np.asarray(tok)[:self.n], np.asarray(done)[:self.n]
        self._new = count > self._seen
        self._seen = count
        self._step = int(step)

    def poll(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._tok, self._new, self._done

    @property
    def finished(self) -> bool:
        return bool(self._done.all()) or self._step >= self.new_len

    def advance(self, stop: Sequence[int] = ()) -> bool:
        """Marks rows `stop` done, then runs one decode step unless every row is done. False when finished."""
        if len(stop):
            mask = np.zeros(self.state.done.shape, bool)
            mask[list(stop)] = True
            self._done = self._done | mask[:self.n]
            self.state = self.state.replace(done=self.state.done | jnp.asarray(mask))
        if self.finished:
            return False
        self.state = engine.step_fn(self.model, self.spec, self.params, self.state)
        self.steps += 1
        self._host()
        return True
