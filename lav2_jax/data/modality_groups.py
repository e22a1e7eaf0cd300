"""LLaVA-1.5's `group_by_modality_length` (stage 2; docs/design.md §4.3 "length grouping"): every global batch
is drawn from one modality — all samples with an image, or all text-only ones — and is spread over the data
processes by length.

`modality_lengths(source)` → (has_image bool [N], length int32 [N]): per record, whether it has an image and its
length as LLaVA measures it (the whitespace-separated words of every turn). `lav2 data build --kind conversation`
stores them beside the records (`modality_lengths.train.npz`, in the order the records are read back); a dataset without
the file is measured when the pipeline opens it (one pass over the records).

`epoch_order(has_image, lengths, group, seed, epoch)` → int64 [(N // group) · group], one epoch's record order,
`group` = the global batch:

  1. the records of each modality are permuted and cut into blocks of `group` (the megabatches);
  2. the full blocks of both modalities are permuted together;
  3. what is left of each modality (< `group` each) is joined into one mixed block at the end when it fills one,
     as LLaVA's last batch is (the rest of the epoch, < `group` records, is left out and differs every epoch);
  4. each block is sorted by length, longest first.

`ModalityGroupedDataset` (a grain `MapDataset`) serves process `index` of `count` its rows of that order: row r of
block b is the block's element `r · count + index`, so the processes' rows interleave through the length order and
get equally long samples (the role of LLaVA's `split_to_even_chunks`). It is a pure function of (seed, epoch,
position), so grain's iterator state checkpoints it exactly like the plain shuffle (`lav2_jax.data.pipeline`).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import grain
import numpy as np

from lav2_jax.data.records import open_source

LENGTHS_FILE = "modality_lengths.{split}.npz"


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return " ".join(_text(v) for v in value.reshape(-1))
    if isinstance(value, (list, tuple)):
        return " ".join(_text(v) for v in value)
    return value if isinstance(value, str) else ""


TEXT_FIELDS = ("system", "values", "instruction", "input", "output", "captions")


def record_length(record: dict) -> tuple[bool, int]:
    """(has an image, words of its text) of one stored record (conversation, instruction or caption)."""
    has_image = bool(record.get("has_image", "captions" in record))
    words = sum(len(_text(record[k]).split()) for k in TEXT_FIELDS if k in record)
    return has_image, words


def modality_lengths(source, path: str | None = None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(has_image [N] bool, length [N] int32) of a random-access source: the file stored for `split` in `path`
    (the dataset's folder) when it has one of N records, else one pass over the records."""
    n = len(source)
    stored = os.path.join(path, LENGTHS_FILE.format(split=split)) if path is not None else ""
    if stored and os.path.isfile(stored):
        with np.load(stored) as f:
            if len(f["has_image"]) == n:
                return f["has_image"].astype(bool), f["lengths"].astype(np.int32)
    pairs = [record_length(source[i]) for i in range(n)]
    return np.array([p[0] for p in pairs], bool).reshape(n), np.array([p[1] for p in pairs], np.int32).reshape(n)


def write_lengths(directory: str, split: str = "train") -> str:
    """Measures split `split` of the dataset in `directory` (a `lav2 data build` output) and stores the result."""
    has_image, lengths = modality_lengths(open_source(directory, split))
    path = os.path.join(directory, LENGTHS_FILE.format(split=split))
    tmp = path + ".tmp.npz"
    np.savez(tmp, has_image=has_image, lengths=lengths)
    os.replace(tmp, path)
    return path


def epoch_order(has_image: np.ndarray, lengths: np.ndarray, group: int, seed: int, epoch: int) -> np.ndarray:
    """One epoch's record order (module docstring): blocks of `group` records, each of one modality except
    possibly the last, each sorted longest first."""
    rng = np.random.default_rng([seed, epoch])
    blocks, rest = [], []
    for sub in (np.flatnonzero(has_image), np.flatnonzero(~has_image)):
        sub = rng.permutation(sub)
        full = len(sub) // group * group
        blocks += [sub[i:i + group] for i in range(0, full, group)]
        rest.append(sub[full:])
    blocks = [blocks[i] for i in rng.permutation(len(blocks))]
    tail = np.concatenate(rest)
    if len(tail) >= group:
        blocks.append(tail[:group])
    if not blocks:
        return np.zeros((0,), np.int64)
    out = np.stack(blocks)
    by_length = np.argsort(-lengths[out], axis=1, kind="stable")
    return np.take_along_axis(out, by_length, axis=1).reshape(-1).astype(np.int64)


class ModalityGroupedDataset(grain.MapDataset):
    """`parent` (every record of the dataset) in the grouped order, rows of process `index` of `count`
    (`batch_size` per process and block); one epoch is `len(self)` rows, index i ≥ len is epoch i // len."""

    def __init__(self, parent: grain.MapDataset, has_image: np.ndarray, lengths: np.ndarray, batch_size: int,
                 index: int, count: int, seed: int):
        super().__init__(parent)
        self._has_image, self._lengths = np.asarray(has_image, bool), np.asarray(lengths, np.int32)
        self._batch, self._index, self._count, self._seed = int(batch_size), int(index), int(count), int(seed)
        self._group = self._batch * self._count
        self._length = len(parent) // self._group * self._batch
        if self._length == 0:
            raise ValueError(f"{len(parent)} records cannot fill one global batch of {self._group} "
                             "(group_by_modality_length)")

    @property
    def left_out(self) -> int:
        """Records left out of every epoch (which ones changes per epoch)."""
        return len(self._parent) - self._length * self._count

    @functools.lru_cache(maxsize=2)
    def _order(self, epoch: int) -> np.ndarray:
        return epoch_order(self._has_image, self._lengths, self._group, self._seed, epoch)

    def record_index(self, index: int) -> int:
        """The record that position `index` (counted over epochs) of this process reads."""
        epoch, pos = divmod(int(index), self._length)
        block, row = divmod(pos, self._batch)
        return int(self._order(epoch)[block * self._group + row * self._count + self._index])

    def __len__(self) -> int:
        return self._length

    def __str__(self) -> str:
        return f"ModalityGroupedDataset(group={self._group}, index={self._index})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self.record_index(index)]
