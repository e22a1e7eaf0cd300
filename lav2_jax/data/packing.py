"""Sequence packing: several samples per row up to `max_len` (`PipelineConfig.packing=True`).

Instead of padding every sample to its batch's bucket, the samples are laid back to back: sample after sample goes
to the first row of the batch with room for it (first fit, in arrival order); the first sample that fits no row
closes the batch and opens the next. The packed batch extends the contract of `lav2_jax.data.pipeline`:

==============  =================  ==========================================================================
``tokens``,     as unpacked        each sample's own tokens / shifted targets / mask, one after the other, so
``targets``,                       the loss never crosses samples: a sample's last input predicts its own EOS
``loss_mask``
``segment_ids`` int32 [B, T]       1..S: the sample's slot in its row; 0 for padding
``positions``   int32 [B, T]       position within the sample (RoPE restarts at 0 for every sample)
``images``      f32 [B,S,H,W,3]    image streams: sample s of a row uses slot s-1 (zeros where none)
``has_image``   bool [B, S]        image streams; bool [B] (all False) for instruction streams, as unpacked
==============  =================  ==========================================================================

`T` is the smallest bucket holding the longest row. Image streams hold at most `max_segments` samples per row
(the image slots S); text streams have no such cap. The model keeps attention and visual prompts inside each
segment (`lav2_jax.model.segments`).

Spliced streams (LLaVA, mPLUG-Owl: `spliced=True`, the sample's placeholder ids are in its tokens): the model writes
image k of a row over the row's k-th run of placeholders (`lav2_jax.model.splice`), so the images are packed in
the order of the row's image-bearing samples: slot j holds the j-th image of the row, `has_image` [B, S] marks the
filled slots, and text-only samples take no slot; a multi-image sample (mPLUG-Owl, `images` [k, H, W, 3]) takes k
consecutive slots. `max_segments` then caps the images per row, not the samples.
Each segment's visual tokens thus land on its own placeholders, attention stays inside the segment, and every
sample carries its own targets: its per-token losses equal those of the sample alone in a row.

Checkpointing: the iterator's state is its parent's state *before* the sample that closed the last batch (that
sample is held, not yet emitted), so a restored iterator re-reads it and continues with exactly the same batches.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import grain
import numpy as np

from lav2_jax.data.tokenizer import PAD_ID

DROPPED_KEY = "_n_dropped"
SAMPLES_KEY = "_n_samples"


def _n_images(sample: dict[str, Any]) -> int:
    """Images a sample brings: its stacked `images` [k, H, W, 3] (mPLUG-Owl), else one when `has_image`."""
    return len(sample["images"]) if "images" in sample else int(bool(sample["has_image"]))


class Packer:
    """Fills one batch of `batch_size` rows, first fit; `add` returns False when the sample fits no row."""

    def __init__(self, batch_size: int, max_len: int, buckets: Sequence[int], with_images: bool,
                 max_segments: Optional[int], spliced: bool = False):
        self.batch_size, self.max_len, self.buckets = batch_size, max_len, tuple(buckets)
        self.with_images, self.max_segments, self.spliced = with_images, max_segments, spliced
        self.rows: list[list[dict[str, Any]]] = [[] for _ in range(batch_size)]
        self.used = [0] * batch_size

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows)

    def add(self, sample: dict[str, Any]) -> bool:
        n = len(sample["tokens"])
        for i, row in enumerate(self.rows):
            taken = sum(_n_images(e) for e in row) if self.spliced else len(row)  # slots in use
            wants = _n_images(sample) if self.spliced else 1
            full = self.max_segments is not None and wants and taken + wants > self.max_segments
            if not full and self.used[i] + n <= self.max_len:
                row.append(sample)
                self.used[i] += n
                return True
        return False

    def batch(self) -> dict[str, np.ndarray]:
        t = next(b for b in self.buckets if b >= max(max(self.used), 1))
        B = self.batch_size
        out = {"tokens": np.full((B, t), PAD_ID, np.int32), "targets": np.full((B, t), PAD_ID, np.int32),
               "loss_mask": np.zeros((B, t), np.float32), "segment_ids": np.zeros((B, t), np.int32),
               "positions": np.zeros((B, t), np.int32)}
        if self.with_images:
            S = self.max_segments
            first = next(s for row in self.rows for s in row)
            out["images"] = np.zeros((B, S) + first["image"].shape, np.float32)
            out["has_image"] = np.zeros((B, S), np.bool_)
        else:
            out["has_image"] = np.zeros((B,), np.bool_)
        for i, row in enumerate(self.rows):
            start, slot = 0, 0
            for s, e in enumerate(row):
                n = len(e["tokens"])
                span = slice(start, start + n)
                for key in ("tokens", "targets", "loss_mask"):
                    out[key][i, span] = e[key]
                out["segment_ids"][i, span] = s + 1
                out["positions"][i, span] = np.arange(n)
                if self.with_images and self.spliced:  # slot j: the row's j-th image (its j-th placeholder run)
                    k = _n_images(e)
                    out["images"][i, slot:slot + k] = e["images"] if "images" in e else e["image"][None]
                    out["has_image"][i, slot:slot + k] = True
                    slot += k
                elif self.with_images:
                    out["images"][i, s] = e["image"]
                    out["has_image"][i, s] = e["has_image"]
                start += n
            out["positions"][i, start:] = np.arange(t - start)  # padding: a segment of its own (id 0)
        out[DROPPED_KEY] = np.int64(sum(e[DROPPED_KEY] for row in self.rows for e in row))
        out[SAMPLES_KEY] = np.int64(len(self))
        return out


class _PackIterator(grain.DatasetIterator):
    def __init__(self, parent, make_packer, drop_remainder: bool):
        super().__init__(parent)
        self._make, self._drop_remainder = make_packer, drop_remainder
        self._held: Optional[tuple[Any, dict]] = None  # (parent state before it, sample) of the closing sample

    def __next__(self) -> dict[str, np.ndarray]:
        packer = self._make()
        while True:
            if self._held is None:
                state = self._parent.get_state()
                try:
                    sample = next(self._parent)
                except StopIteration:
                    if len(packer) == 0 or self._drop_remainder:
                        raise
                    return packer.batch()
                self._held = (state, sample)
            if not packer.add(self._held[1]):
                if len(packer) == 0:
                    raise ValueError(f"a sample of {len(self._held[1]['tokens'])} tokens fits no packed row")
                return packer.batch()
            self._held = None

    def get_state(self):
        return {"parent": self._held[0] if self._held is not None else self._parent.get_state()}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self._held = None


class PackedBatches(grain.IterDataset):
    """grain stage: variable-length samples (with their drop counts) → packed batches (see the module docstring)."""

    def __init__(self, parent, batch_size: int, max_len: int, buckets: Sequence[int], with_images: bool,
                 max_segments: int, drop_remainder: bool = True, spliced: bool = False):
        super().__init__(parent)
        if with_images and max_segments < 1:
            raise ValueError(f"packing an image stream needs max_segments ≥ 1, got {max_segments}")
        segs = max_segments if with_images else None
        self._make = lambda: Packer(batch_size, max_len, buckets, with_images, segs, spliced)  # noqa: E731
        self._drop_remainder = drop_remainder

    def __iter__(self):
        return _PackIterator(self._parent.__iter__(), self._make, self._drop_remainder)
