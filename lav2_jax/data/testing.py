"""Small synthetic inputs for tests and benchmarks: a tiny sentencepiece model, images, source files.

Nothing is downloaded; everything is generated from a seed into a folder the caller owns.
"""

from __future__ import annotations

import io
import json
import os
from typing import Iterable

import numpy as np
from PIL import Image

from lav2_jax.core import templates

_CORPUS = (
    templates.alpaca("Give three tips for staying healthy.", "Eat well, sleep, move."),
    templates.caption_prompt(),
    templates.CHAT_SYSTEM + "###Human: What is in the picture?###Assistant: A dog on a beach.",
    "A red bus drives past a tall building while two people wait at the stop.",
    "The quick brown fox jumps over the lazy dog. 0123456789 ,.;:!?'\"()[]{}<>/\\-_=+*&^%$#@~`|",
)


def train_sentencepiece(path: str, extra: Iterable[str] = (), vocab_size: int = 400,
                        byte_fallback: bool = True) -> str:
    """Train a LLaMA-like sentencepiece BPE (BOS 1, EOS 2, unk 0, byte fallback, identity normaliser) at `path`.

    `byte_fallback=False` (unknown characters → unk) gives exactly `vocab_size` pieces, also below the 259 that
    byte fallback needs: a tokenizer for a model of any vocabulary size (`lav2_jax.train.export`)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(_CORPUS) * 8 + list(extra)), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=byte_fallback, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, hard_vocab_limit=not byte_fallback, minloglevel=2, num_threads=1,
        **({} if byte_fallback else {"character_coverage": 1.0}))
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path


def image_bytes(width: int, height: int, seed: int = 0, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """A random smooth-ish image encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR)
    noise = rng.integers(-20, 21, (height, width, 3))
    img = Image.fromarray(np.clip(np.asarray(img).astype(int) + noise, 0, 255).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: str, width: int, height: int, seed: int = 0, fmt: str = "PNG") -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(image_bytes(width, height, seed, fmt))
    return path


def write_jsonl(path: str, records: Iterable[object]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path
