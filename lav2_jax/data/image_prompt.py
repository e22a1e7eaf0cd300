"""Prompts with `<image>` for spliced systems (LLaVA, mPLUG-Owl): each `<image>` becomes `n_tokens` placeholder ids.

`ImagePromptTokenizer(base, image_token_id, n_tokens)` wraps a `lav2_jax.data.tokenizer` tokenizer with the same
interface (`encode`, `encode_continuation`, `decode`, `bos_id`, `eos_id`, `pad_id`, `vocab_size`); text without
`<image>` encodes exactly as with `base`. Two rules, chosen by what the tokenizer knows (docs/design.md §4.2):

* `added` — a Hugging Face `tokenizer.json` with `<image>` as an added token whose id is `image_token_id`
  (`llava-hf/...`): the text is expanded to `n_tokens` copies of `<image>` and tokenized whole, which is what
  transformers' `LlavaProcessor` does, so ids match the processor exactly.
* `split` — any other tokenizer (the original repo's sentencepiece `tokenizer.model`, 32000 words, no `<image>`
  entry): the text is split on `<image>`, each piece tokenized on its own (with the dummy prefix, as the original's
  per-piece tokenizer call), and `n_tokens` ids inserted between pieces.

`load_image_tokenizer(path, splice)` loads the tokenizer of a checkpoint or HF directory and wraps it; the pad id
comes from `tokenizer_config.json` (`pad_token`), whether BOS is added from its `add_bos_token`, else from what
`tokenizer.json`'s post-processor does (sentencepiece: always).
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

from lav2_jax.data.tokenizer import load_tokenizer

IMAGE_TOKEN = "<image>"


class ImagePromptTokenizer:
    """A tokenizer whose `encode` turns every `<image>` into `n_tokens` ids `image_token_id`."""

    def __init__(self, base, image_token_id: int, n_tokens: int, *, pad_id: Optional[int] = None,
                 add_bos: bool = True):
        self.base = base
        self.image_token_id = int(image_token_id)
        self.n_tokens = int(n_tokens)
        self.add_bos = add_bos
        self.bos_id, self.eos_id, self.vocab_size = base.bos_id, base.eos_id, base.vocab_size
        self.pad_id = base.pad_id if pad_id is None else int(pad_id)
        token_id = getattr(base, "token_to_id", lambda _: None)(IMAGE_TOKEN)
        self.rule = "added" if token_id is not None and int(token_id) == self.image_token_id else "split"

    @property
    def path(self):
        return self.base.path

    def _expand(self, text: str, first: bool) -> list[int]:
        if self.rule == "added":
            text = text.replace(IMAGE_TOKEN, IMAGE_TOKEN * self.n_tokens)
            return self.base.encode(text) if first else self.base.encode_continuation(text)
        ids: list[int] = []
        for k, piece in enumerate(text.split(IMAGE_TOKEN)):
            if k:
                ids += [self.image_token_id] * self.n_tokens
            if piece:
                ids += self.base.encode(piece) if (first or k) else self.base.encode_continuation(piece)
        return ids

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._expand(text, first=True)
        return ([self.bos_id] if bos and self.add_bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_continuation(self, text: str) -> list[int]:
        return self._expand(text, first=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.base.decode([int(i) for i in ids if int(i) != self.image_token_id])


def _tokenizer_config(path: str) -> dict:
    cfg = os.path.join(path, "tokenizer_config.json") if os.path.isdir(path) else ""
    if not cfg or not os.path.isfile(cfg):
        return {}
    try:
        with open(cfg, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg}: unreadable tokenizer config: {e}") from None


def load_image_tokenizer(path, splice) -> ImagePromptTokenizer:
    """The tokenizer at `path` (file or directory) wrapped for `splice` (a `SpliceConfig`)."""
    path = os.fspath(path)
    base = load_tokenizer(path)
    config = _tokenizer_config(path)
    pad = config.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    pad_id = getattr(base, "token_to_id", lambda _: None)(pad) if isinstance(pad, str) else None
    add_bos = config.get("add_bos_token")
    if add_bos is None:
        add_bos = base.post_processor_adds_bos() if hasattr(base, "post_processor_adds_bos") else True
    return ImagePromptTokenizer(base, splice.image_token_id, splice.n_tokens, pad_id=pad_id, add_bos=bool(add_bos))
