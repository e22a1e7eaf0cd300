"""Training a small LLaMA-like sentencepiece tokenizer, for runs that come without one of the user's.

`train_sentencepiece(path, extra, vocab_size, byte_fallback)` writes a BPE `tokenizer.model` trained on a fixed
base corpus (an Alpaca prompt, the caption prompt, a chat turn and two plain sentences, repeated) plus `extra`.
Used by `lav2_jax.train.export` (a synthetic run's checkpoint gets a tokenizer of exactly the model's vocabulary),
the demo's tokenizer (`lav2_jax.demo.data`), and tests and benchmarks (through `lav2_jax.data.testing`).
"""

from __future__ import annotations

import io
from typing import Iterable

import sentencepiece as spm

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
