"""From a stored record to one mPLUG-Owl training sequence (docs/design.md §5.3; mPLUG-Owl paper §4).

Segments come from `lav2_jax.systems.owl.templates`. Token rule (the release's): one BOS, then every text segment is
tokenized on its own (`tok.encode`: the dummy prefix, no special tokens), an `IMAGE` segment becomes
`n_image_tokens` (Q + 1) copies of `image_token_id`, an `EOS` segment the tokenizer's EOS id. ``tokens =
ids[:-1]``, ``targets = ids[1:]``, ``loss_mask[k] = 1`` where ``targets[k]`` belongs to an answer (the answers and
the EOS after each); image tokens, system text, ``Human:`` turns and padding carry none.

Truncation keeps the first `max_len` positions. A sample is dropped (None, the pipeline counts it) when no answer
token survives (the release would give a NaN loss for it) or when the cut would split an image's tokens. Multi-image
records (several ``Human: <image>`` lines): image j (`record_images` order) owns the j-th run of placeholders; an
image whose run the cut removed is not used. Batches (pipeline `max_images` > 1,
`lav2_jax.data.images.stack_image_slots`): ``images`` float32 [B, max_images, H, W, 3], sample i's k images in slots
0..k-1 (the model splices slot j at the sample's j-th run, `lav2_jax.model.splice`); ``has_image`` bool
[B, max_images] marks them. The other slots are zeros marked False; no placeholder refers to them, so neither
attention nor the loss sees them (the encoder still runs on them: static shapes). A sample with more than
`max_images` images is dropped and counted like a truncation drop; with packing a sample's k images take k
consecutive slots of its row. The pipeline reaches these through the Owl `System` (`lav2_jax.systems.owl.system`):
`tokenize_sample` (tokens and image count, that drop) and `sample_images` (a sample's image fields).

Images (`preprocess_image`): training = RandomResizedCrop(size, scale 0.5–1, bicubic) + horizontal flip (p 0.5),
evaluation = a bicubic resize to size × size (no crop); then the CLIP normalisation.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from lav2_jax.data import images
from lav2_jax.core.templates import EOS, IMAGE
from lav2_jax.data.samples import Tokenized, _text, kind_of, truncate
from lav2_jax.data.tokenizer import Tokenizer
from lav2_jax.systems.owl import templates as ot

TRAIN_SCALE = (0.5, 1.0)


def encode(tok: Tokenizer, segments: Sequence[tuple[str, bool]], n_image_tokens: int, image_token_id: int
           ) -> tuple[list[int], list[bool]]:
    """BOS + segments → (ids, is_answer); each text segment tokenized separately."""
    ids, answer = [tok.bos_id], [False]
    for text, is_answer in segments:
        if text == IMAGE:
            if n_image_tokens <= 0:
                raise ValueError("an <image> segment needs n_image_tokens > 0 (the model's visual token count)")
            piece = [image_token_id] * n_image_tokens
            is_answer = False
        elif text == EOS:
            piece = [tok.eos_id]
        else:
            piece = list(tok.encode(text)) if text else []
        ids += piece
        answer += [bool(is_answer)] * len(piece)
    return ids, answer


def tokenize(tok: Tokenizer, segments: Sequence[tuple[str, bool]], max_len: int, n_image_tokens: int,
             image_token_id: int) -> Optional[Tokenized]:
    """Tokens/targets/loss_mask truncated to `max_len`; None when no answer survives or an image would be cut."""
    return truncate(*encode(tok, segments, n_image_tokens, image_token_id), max_len, n_image_tokens, image_token_id)


def record_segments(record: Mapping[str, Any], caption_index: int = 0):
    """Owl template segments of a stored record (conversation, instruction = one text-only turn, caption)."""
    kind = kind_of(record)
    if kind == "caption":
        captions = record["captions"]
        return ot.caption_segments(_text(captions[caption_index % len(captions)]))
    if kind == "instruction":
        question, extra = _text(record["instruction"]), _text(record["input"])
        turns = [("human", question + ("\n" + extra if extra.strip() else "")), ("assistant", _text(record["output"]))]
        return ot.training_segments(turns)
    turns = [(_text(r), _text(v)) for r, v in zip(record["roles"], record["values"])]
    has_image = bool(record.get("has_image", False))
    where = int(record.get("image_turn", 0) if record.get("image_turn") is not None else 0) if has_image else -1
    more = [int(t) for t in np.asarray(record.get("more_image_turns", ()), np.int64).reshape(-1)] if has_image else []
    return ot.training_segments(turns, [where, *more], _text(record.get("system", b"")) or None)


def record_images(record: Mapping[str, Any]) -> list:
    """The encoded images of a stored record in placeholder order: `image`, then `more_images` (multi-image)."""
    if not bool(record.get("has_image", "captions" in record)):
        return []
    return [record["image"], *list(record.get("more_images", ()))]


def tokenize_record(tok: Tokenizer, record: Mapping[str, Any], caption_index: int, max_len: int,
                    n_image_tokens: int, image_token_id: int) -> Optional[Tokenized]:
    return tokenize(tok, record_segments(record, caption_index), max_len, n_image_tokens, image_token_id)


def tokenize_sample(tok: Tokenizer, record: Mapping[str, Any], caption_index: int, max_len: int,
                    n_image_tokens: int, image_token_id: int, max_images: int) -> tuple[Optional[Tokenized], int]:
    """(`tokenize_record`, its image count) for the pipeline; (None, 0) — dropped, counted — also when the sample
    keeps more images than the batch has slots for (`max_images`)."""
    out = tokenize_record(tok, record, caption_index, max_len, n_image_tokens, image_token_id)
    n_images = 0 if out is None else int((out.tokens == image_token_id).sum()) // n_image_tokens
    return (None, 0) if out is None or n_images > max_images else (out, n_images)


def sample_images(record: Mapping[str, Any], n_images: int, size: int, rng: Optional[np.random.Generator],
                  channel_order: str, name: Optional[str] = None) -> dict[str, np.ndarray]:
    """The image fields of a pipeline sample: `images` float32 [n_images, size, size, 3], the record's first
    `n_images` images (`record_images` order: image j fills the j-th placeholder run) through `preprocess_image`
    (augmented when `rng` is given), and `image` [size, size, 3], the first of them (zeros when there is none)."""
    if not n_images:
        return {"image": np.zeros((size, size, 3), np.float32), "images": np.zeros((0, size, size, 3), np.float32)}
    stack = np.stack([preprocess_image(src, size, rng, channel_order, name=name)
                      for src in record_images(record)[:n_images]])
    return {"images": stack, "image": stack[0]}


def preprocess_image(src, size: int, rng: Optional[np.random.Generator] = None, channel_order: str = "rgb", *,
                     name: Optional[str] = None) -> np.ndarray:
    """float32 [size, size, 3]: training augmentation when `rng` is given, else the evaluation resize."""
    img = src if isinstance(src, Image.Image) else images.decode(src, name=name)
    if rng is None:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    else:
        box = images.random_resized_crop_box(img.width, img.height, rng, scale=TRAIN_SCALE)
        img = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return images.normalize(np.asarray(img), channel_order)
