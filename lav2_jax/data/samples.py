"""From a stored record to one training sequence: template (docs/design.md §3.3.2), tokens, targets, loss mask,
truncation.

Shared by the builder (to drop over-long samples at build time) and the grain pipeline (at run time), so both
apply the same rule.

A sample is ``ids = BOS + prompt + answer + EOS`` (chat: several prompt/answer segments). With ``n = len(ids)``:
``tokens = ids[:-1]``, ``targets = ids[1:]``, ``loss_mask[k] = 1`` where ``targets[k]`` is an answer token or the
final EOS — all int32/float32 of length ``n - 1``. Truncation keeps the first `max_len` positions; a sample whose
truncated `loss_mask` is all zero (no answer token left) is dropped (`tokenize` returns None) and counted by the
caller.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from lav2_jax.core import templates
from lav2_jax.data.tokenizer import Tokenizer, encode_segments

KINDS = ("instruction", "conversation", "caption")


class Tokenized(NamedTuple):
    tokens: np.ndarray  # int32 [n]
    targets: np.ndarray  # int32 [n]
    loss_mask: np.ndarray  # float32 [n]


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def kind_of(record: Mapping[str, Any]) -> str:
    """The dataset kind from a record's fields (instruction / conversation / caption)."""
    if "instruction" in record:
        return "instruction"
    if "roles" in record:
        return "conversation"
    if "captions" in record:
        return "caption"
    raise ValueError(f"record with fields {sorted(record)} is of no known kind {KINDS}")


def record_segments(record: Mapping[str, Any], caption_index: int = 0) -> templates.Segments:
    """Template segments of a stored record (str or bytes fields). `caption_index` picks a caption."""
    kind = kind_of(record)
    if kind == "instruction":
        return templates.instruction_segments(
            _text(record["instruction"]), _text(record["input"]), _text(record["output"]))
    if kind == "conversation":
        turns = [(_text(r), _text(v)) for r, v in zip(record["roles"], record["values"])]
        system = _text(record.get("system", b"")) or None
        return templates.chat_segments(turns, system)
    captions = record["captions"]
    return templates.caption_segments(_text(captions[caption_index % len(captions)]))


def tokenize(tok: Tokenizer, segments: templates.Segments, max_len: int) -> Tokenized | None:
    """Tokens/targets/loss_mask truncated to `max_len`, or None when no answer token survives truncation."""
    return truncate(*encode_segments(tok, segments), max_len)


def truncate(ids: Sequence[int], answer: Sequence[bool], max_len: int, n_image_tokens: int = 0,
             image_token_id: int = -1) -> Tokenized | None:
    """`ids` (BOS first) with per-id answer flags → tokens/targets/loss_mask of the first `max_len` positions;
    None when no answer survives, or when the cut would split an image's `n_image_tokens` placeholder ids
    (`image_token_id`; the spliced systems' samples)."""
    ids_arr = np.asarray(ids, np.int32)
    mask = np.asarray(answer[1:], np.float32)[:max_len]
    if not mask.any():
        return None
    tokens = ids_arr[:-1][:max_len]
    if n_image_tokens > 0 and int((tokens == image_token_id).sum()) % n_image_tokens:
        return None
    return Tokenized(tokens, ids_arr[1:][:max_len], mask)
