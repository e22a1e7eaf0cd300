"""A deterministic in-memory batch source with the data pipeline's batch contract (`lav2_jax.data.pipeline`).

For tests, benchmarks and `configs/tiny_joint.py`: every example is a pure function of (seed, stream, index), so
a batch is a pure function of (seed, step) and the iterator state is just the step (`get_state`/`set_state`,
JSON-serialisable like the grain iterators). With `num_examples` set the examples cycle through a small fixed
dataset; otherwise every index is a fresh example. `answer_vocab` > 0 draws answer tokens from the first
`answer_vocab` ordinary words only, a regularity the adapters alone can learn quickly (the loss-falls test).

Each host can take its own rows of the global batch (`rows=(start, stop)`), so several processes together feed
exactly the batch one process would.

Example layout (length `seq_len + 1` before the shift): BOS, `prompt_len` prompt tokens, answer tokens, EOS, padding;
`loss_mask` is 1 on the answer tokens and the EOS (targets side), 0 elsewhere. With `image_tokens` (spliced models,
LLaVA) the prompt opens with that many `image_token_id` placeholders.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

BOS, EOS, PAD = 1, 2, 0
STREAM_IDS = {"caption": 1, "instruction": 2, "train": 3}


class SyntheticStream:
    """Batches `{tokens, targets, loss_mask, has_image[, images]}` of one stream (numpy, per the contract)."""

    def __init__(self, name: str, global_batch: int, seq_len: int, vocab: int, *, image_size: int = 0,
                 seed: int = 0, num_examples: int | None = None, prompt_len: int | None = None,
                 rows: tuple[int, int] | None = None, answer_vocab: int = 0, image_tokens: int = 0,
                 image_token_id: int = -1):
        self.answer_vocab = answer_vocab
        self.image_tokens, self.image_token_id = image_tokens, image_token_id
        self.name, self.global_batch, self.seq_len, self.vocab = name, global_batch, seq_len, vocab
        self.image_size, self.seed, self.num_examples = image_size, seed, num_examples
        self.prompt_len = seq_len // 3 if prompt_len is None else prompt_len
        self.rows = rows or (0, global_batch)
        self.step = 0

    def example(self, index: int) -> dict[str, Any]:
        if self.num_examples:
            index %= self.num_examples
        rng = np.random.default_rng([self.seed, STREAM_IDS.get(self.name, 9), index])
        T = self.seq_len
        answer_len = int(rng.integers(max(1, (T - self.prompt_len) // 2), T - self.prompt_len - 1))
        prompt = rng.integers(3, self.vocab, size=self.prompt_len)
        answer = rng.integers(3, 3 + self.answer_vocab if self.answer_vocab else self.vocab, size=answer_len)
        if self.image_tokens:  # spliced models (LLaVA): the image's placeholders open the prompt
            if self.image_tokens >= self.prompt_len:
                raise ValueError(f"{self.image_tokens} image tokens do not fit a {self.prompt_len}-token prompt")
            prompt[:self.image_tokens] = self.image_token_id
        body = np.concatenate([prompt, answer])
        seq = np.concatenate([[BOS], body, [EOS]]).astype(np.int32)  # length prompt + answer + 2 <= T + 1
        tokens = np.full(T, PAD, np.int32)
        targets = np.full(T, PAD, np.int32)
        mask = np.zeros(T, np.float32)
        n = len(seq) - 1
        tokens[:n], targets[:n] = seq[:-1], seq[1:]
        mask[self.prompt_len:n] = 1.0  # targets: answer tokens and the EOS
        out = {"tokens": tokens, "targets": targets, "loss_mask": mask, "has_image": self.image_size > 0}
        if self.image_size:
            out["image"] = rng.standard_normal((self.image_size, self.image_size, 3)).astype(np.float32)
        return out

    def batch(self, step: int) -> dict[str, np.ndarray]:
        start, stop = self.rows
        examples = [self.example(step * self.global_batch + r) for r in range(start, stop)]
        out = {k: np.stack([e[k] for e in examples]) for k in ("tokens", "targets", "loss_mask")}
        out["has_image"] = np.asarray([e["has_image"] for e in examples], np.bool_)
        if self.image_size:
            out["images"] = np.stack([e["image"] for e in examples])
        return out

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        b = self.batch(self.step)
        self.step += 1
        return b

    def get_state(self) -> dict[str, Any]:
        return {"step": self.step}

    def set_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


class MultiStream:
    """Several named streams advanced together: yields `{name: batch}` (the joint recipe's step input)."""

    def __init__(self, streams: Sequence[SyntheticStream] | dict):
        self.streams = dict(streams) if isinstance(streams, dict) else {s.name: s for s in streams}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, dict[str, np.ndarray]]:
        return {k: next(s) for k, s in self.streams.items()}

    def get_state(self) -> dict[str, Any]:
        return {k: s.get_state() for k, s in self.streams.items()}

    def set_state(self, state: dict[str, Any]) -> None:
        for k, s in self.streams.items():
            s.set_state(state[k])
