"""From a stored record to one LLaVA training sequence with its visual tokens in place (LLaVA paper §4–5).

Hugging Face-style image tokens: every ``<image>`` segment of a template (`lav2_jax.systems.llava.conversation`)
becomes `n_image_tokens` copies of `image_token_id` in the token ids; the model overwrites those positions with
the image's visual tokens, so the sequence the model sees is exactly the token sequence (its length already
counts the image: a ``max_len`` budget includes the image tokens, e.g. 576 of LLaVA-1.5's 2048).

Token rule (LLaVA's `tokenizer_image_token` around images, a legacy LLaMA tokenizer around ``</s>``):
``ids = BOS + runs``; a text run starts after BOS, after an image and after an EOS and is encoded with the
tokenizer's dummy prefix (`tok.encode`); later segments of the same run continue it (`tok.encode_continuation`).
``tokens = ids[:-1]``, ``targets = ids[1:]``, ``loss_mask[k] = 1`` where ``targets[k]`` belongs to an answer
segment; image tokens never carry loss. No EOS is appended: the templates place their own (`vicuna_v1`) or none
(`plain`, `v0`).

Truncation keeps the first `max_len` positions (as LLaVA truncates the spliced sequence to 2048). A sample is
dropped (`tokenize` returns None, the pipeline counts it) when no answer token survives, or when the cut would
leave an image with part of its tokens (the model needs whole images).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from lav2_jax.data import images
from lav2_jax.data.samples import Tokenized, _text, kind_of, truncate
from lav2_jax.data.tokenizer import Tokenizer
from lav2_jax.systems.llava import conversation as ct


def encode(tok: Tokenizer, segments: Sequence[tuple[str, bool]], n_image_tokens: int, image_token_id: int
           ) -> tuple[list[int], list[bool]]:
    """BOS + segments → (ids, is_answer), image segments expanded to `n_image_tokens` × `image_token_id`."""
    ids, answer, run_start = [tok.bos_id], [False], True
    for text, is_answer in segments:
        if text == ct.IMAGE:
            if n_image_tokens <= 0:
                raise ValueError("an <image> segment needs n_image_tokens > 0 (the model's visual token count)")
            ids += [image_token_id] * n_image_tokens
            answer += [False] * n_image_tokens
            run_start = True
        elif text == ct.EOS:
            ids.append(tok.eos_id)
            answer.append(bool(is_answer))
            run_start = True
        elif text:
            piece = tok.encode(text) if run_start else tok.encode_continuation(text)
            ids += piece
            answer += [bool(is_answer)] * len(piece)
            run_start = False
    return ids, answer


def tokenize(tok: Tokenizer, segments: Sequence[tuple[str, bool]], max_len: int, n_image_tokens: int,
             image_token_id: int) -> Tokenized | None:
    """Tokens/targets/loss_mask truncated to `max_len`; None when no answer survives or an image would be cut."""
    ids, answer = encode(tok, segments, n_image_tokens, image_token_id)
    return truncate(ids, answer, max_len, n_image_tokens, image_token_id)


def image_turn(record: Mapping[str, Any]) -> int:
    """The turn that carries the image (-1: none). Datasets built before `image_turn` existed: the first turn."""
    if not bool(record.get("has_image", "captions" in record)):
        return -1
    value = record.get("image_turn")
    return 0 if value is None else int(value)


def record_segments(record: Mapping[str, Any], template: str, caption_index: int = 0):
    """Template segments of a stored record, or None when the record cannot be a sample of `template`
    (`plain` without an image). Instruction records become one-turn text-only conversations."""
    ct.check_template(template)
    kind = kind_of(record)
    if kind == "caption":
        captions = record["captions"]
        caption = _text(captions[caption_index % len(captions)])
        if template != "plain":
            raise ValueError(f"caption data trains with the plain template, not {template!r}")
        return ct.caption_segments(caption)
    if kind == "instruction":
        question, extra = _text(record["instruction"]), _text(record["input"])
        turns = [("human", question + ("\n" + extra if extra.strip() else "")), ("assistant", _text(record["output"]))]
        where, system = -1, None
    else:
        turns = [(_text(r), _text(v)) for r, v in zip(record["roles"], record["values"])]
        where, system = image_turn(record), _text(record.get("system", b"")) or None
    if template == "plain" and where < 0:
        return None
    return ct.training_segments(template, turns, where, system)


def tokenize_record(tok: Tokenizer, record: Mapping[str, Any], template: str, caption_index: int, max_len: int,
                    n_image_tokens: int, image_token_id: int) -> Tokenized | None:
    """`tokenize(record_segments(...))`: None when the record is no sample of `template` or is dropped."""
    segments = record_segments(record, template, caption_index)
    if segments is None:
        return None
    return tokenize(tok, segments, max_len, n_image_tokens, image_token_id)


def preprocess_image(src, size: int, aspect: str = "square", channel_order: str = "rgb", *, name: str | None = None
                     ) -> np.ndarray:
    """LLaVA's image preprocessing (no augmentation) → float32 [size, size, 3].

    `square`: the CLIP preprocessing (`images.preprocess`: bicubic short-side resize, centre crop, normalise).
    `pad` (LLaVA-1.5 `image_aspect_ratio`): first paste the image centred on a square canvas of its longer side
    filled with the mean colour ``int(255 · CLIP_MEAN)`` = (122, 116, 104) (`images.expand_to_square`), then the same.
    """
    if aspect not in ("square", "pad"):
        raise ValueError(f"image_aspect must be square or pad, got {aspect!r}")
    return images.preprocess(src, size, channel_order, name=name, aspect_ratio=aspect)
