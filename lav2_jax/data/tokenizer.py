"""One tokenizer interface over sentencepiece (LLaMA-1/2 `tokenizer.model`) and Hugging Face `tokenizers` (LLaMA-3).

`load_tokenizer(path)` accepts a sentencepiece `.model` file, a directory holding `tokenizer.model`, or a
directory holding a Hugging Face `tokenizer.json` (special tokens from `tokenizer_config.json` when present).

Interface (both classes): `encode(text, bos=False, eos=False) -> list[int]`, `decode(ids) -> str`,
`encode_continuation(text)`, `bos_id`, `eos_id`, `pad_id`, `vocab_size`. Both pickle cheaply (grain workers).

* sentencepiece: BOS 1 / EOS 2 as stored in the model. `encode` adds sentencepiece's dummy-prefix space like the
  release; `encode_continuation` encodes text that *continues* a previous segment, i.e. without the dummy prefix,
  so that `decode(encode(a) + encode_continuation(b)) == a + b` (template strings round-trip exactly).
* Hugging Face: `encode` never adds the tokenizer's own special tokens (BOS/EOS only when asked); byte-level BPE
  (LLaMA-3) has no dummy prefix, so `encode_continuation == encode`.
* `pad_id` is 0 for both (the batch contract of `lav2_jax.data.pipeline`: padding is masked out of the loss).

`check_vocab(tok, vocab_size, ...)` is the one test that a tokenizer fits a model (`VocabularyError` otherwise):
an id >= the model's `vocab_size` would reach the embedding gather, which gives NaN (`jnp.take` fills out-of-range
rows) or garbage without any error. Training (`lav2_jax.train.data.check_tokenizer`) and `load_pretrained` call it.
"""

from __future__ import annotations

import json
import os
from typing import Protocol, Sequence

PAD_ID = 0


class Tokenizer(Protocol):
    bos_id: int
    eos_id: int
    pad_id: int
    vocab_size: int

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...

    def encode_continuation(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class TokenizerError(ValueError):
    """A tokenizer path that is missing or holds no readable tokenizer (the message names the path)."""


class VocabularyError(TokenizerError):
    """The tokenizer has more pieces than the model's vocabulary embeds (the message names both sources)."""


def check_vocab(tok: Tokenizer, vocab_size: int, tokenizer_where: str, model_where: str,
                image_token_id: int | None = None) -> None:
    """`VocabularyError` unless every id `tok` can produce (0 .. tok.vocab_size - 1) is a row of the model's
    embedding [vocab_size, D]. The one id allowed past it is a spliced system's image placeholder
    (`image_token_id`, e.g. an `<image>` token added right after the vocabulary): placeholders are never embedded
    (`lav2_jax.model.splice.embed_ids`). A tokenizer smaller than the vocabulary is fine (padded vocabularies)."""
    pieces = int(tok.vocab_size)
    if pieces <= vocab_size or (pieces == vocab_size + 1 and image_token_id == vocab_size):
        return
    raise VocabularyError(f"the tokenizer {tokenizer_where} has {pieces} pieces but the model's vocab_size is "
                          f"{vocab_size} ({model_where}): ids >= {vocab_size} have no embedding row; use the "
                          "tokenizer the model was made with, or a model whose vocab_size covers the tokenizer")


def _wrap(ids: list[int], bos: bool, eos: bool, bos_id: int, eos_id: int) -> list[int]:
    return ([bos_id] if bos else []) + ids + ([eos_id] if eos else [])


class SentencePieceTokenizer:
    """sentencepiece model (LLaMA-1/2). `model` is a path to `tokenizer.model`."""

    pad_id = PAD_ID

    def __init__(self, model: str | os.PathLike):
        self.path = os.fspath(model)
        try:
            with open(self.path, "rb") as f:
                self._proto = f.read()
        except OSError as e:
            raise TokenizerError(f"{self.path}: cannot read sentencepiece model: {e.strerror or e}") from None
        self._load()

    def _load(self) -> None:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2

        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._proto)
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"{self.path}: not a sentencepiece model: {e}") from None
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(self._proto)
        proto.normalizer_spec.add_dummy_prefix = False
        self._sp_cont = spm.SentencePieceProcessor()
        self._sp_cont.LoadFromSerializedProto(proto.SerializeToString())
        self.bos_id = int(self._sp.bos_id())
        self.eos_id = int(self._sp.eos_id())
        self.vocab_size = int(self._sp.vocab_size())
        if self.bos_id < 0 or self.eos_id < 0:
            raise TokenizerError(f"{self.path}: the sentencepiece model defines no BOS/EOS piece")

    def __getstate__(self):
        return {"path": self.path, "proto": self._proto}

    def __setstate__(self, state):
        self.path, self._proto = state["path"], state["proto"]
        self._load()

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return _wrap(list(self._sp.encode(text)), bos, eos, self.bos_id, self.eos_id)

    def encode_continuation(self, text: str) -> list[int]:
        return list(self._sp_cont.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])


class HFTokenizer:
    """Hugging Face `tokenizers` from a local directory with `tokenizer.json` (LLaMA-3)."""

    pad_id = PAD_ID
    _BOS_NAMES = ("<|begin_of_text|>", "<s>")
    _EOS_NAMES = ("<|end_of_text|>", "</s>")

    def __init__(self, directory: str | os.PathLike):
        self.path = os.fspath(directory)
        self._load()

    def _special(self, config: dict, key: str, names: tuple[str, ...]) -> int:
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        candidates = ([value] if isinstance(value, str) else []) + list(names)
        for name in candidates:
            tid = self._tok.token_to_id(name)
            if tid is not None:
                return int(tid)
        raise TokenizerError(f"{self.path}: no {key} among {candidates} in tokenizer.json")

    def _load(self) -> None:
        from tokenizers import Tokenizer as _HF

        tok_file = os.path.join(self.path, "tokenizer.json")
        try:
            self._tok = _HF.from_file(tok_file)
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception subclasses
            raise TokenizerError(f"{tok_file}: cannot load Hugging Face tokenizer: {e}") from None
        config: dict = {}
        cfg_file = os.path.join(self.path, "tokenizer_config.json")
        if os.path.exists(cfg_file):
            try:
                with open(cfg_file, encoding="utf-8") as f:
                    config = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise TokenizerError(f"{cfg_file}: unreadable tokenizer config: {e}") from None
        self.bos_id = self._special(config, "bos_token", self._BOS_NAMES)
        self.eos_id = self._special(config, "eos_token", self._EOS_NAMES)
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        self._load()

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return _wrap(list(ids), bos, eos, self.bos_id, self.eos_id)

    def encode_continuation(self, text: str) -> list[int]:
        return self.encode(text)

    def token_to_id(self, token: str):
        """The id of a token of the vocabulary (added tokens included), or None."""
        tid = self._tok.token_to_id(token)
        return None if tid is None else int(tid)

    def post_processor_adds_bos(self) -> bool:
        """Whether `tokenizer.json`'s post-processor puts BOS first (what transformers' tokenizer call does)."""
        return self._tok.encode("", add_special_tokens=True).ids[:1] == [self.bos_id]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def load_tokenizer(path: str | os.PathLike) -> SentencePieceTokenizer | HFTokenizer:
    """A sentencepiece `.model` file, or a directory with `tokenizer.json` (preferred) or `tokenizer.model`."""
    p = os.fspath(path)
    if os.path.isdir(p):
        if os.path.exists(os.path.join(p, "tokenizer.json")):
            return HFTokenizer(p)
        if os.path.exists(os.path.join(p, "tokenizer.model")):
            return SentencePieceTokenizer(os.path.join(p, "tokenizer.model"))
        raise TokenizerError(f"{p}: directory has neither tokenizer.json nor tokenizer.model")
    if os.path.isfile(p):
        return SentencePieceTokenizer(p)
    raise TokenizerError(f"{p}: no such tokenizer file or directory")


def encode_segments(tok: Tokenizer, segments: Sequence[tuple[str, bool]]) -> tuple[list[int], list[bool]]:
    """BOS + segments + EOS → (ids, is_answer). The first segment gets the dummy prefix, later ones continue it.

    `is_answer[k]` is True for tokens of answer segments and for the final EOS; False for BOS and prompts.
    """
    ids, answer = [tok.bos_id], [False]
    for k, (text, is_answer) in enumerate(segments):
        if not text:
            continue
        seg = tok.encode(text) if k == 0 else tok.encode_continuation(text)
        ids += seg
        answer += [is_answer] * len(seg)
    ids.append(tok.eos_id)
    answer.append(True)
    return ids, answer
