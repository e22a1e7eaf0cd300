"""Conversion plans: which source tensors make each leaf of our parameter tree, checked before anything is written.

A `LeafPlan` names an output leaf (path, shape, dtype, stacked over layers or not) and its `Piece`s; a piece reads
some source tensors (`Ref`: file + key + the shape the model config implies) and combines them (`fn`: concatenate
model-parallel shards, permute RoPE rows, transpose to [in, out]). `check_plan` validates everything from file
headers alone — every referenced key exists with the implied shape, no source key is left unused, the plan covers
the model's parameter tree exactly — raising ValueError with file and key. `write_checkpoint` then streams the
pieces into the `base` / `adapter` items (`lav2_jax.checkpoint.stream`) inside an atomic directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Iterable, Optional

import numpy as np
from flax import traverse_util

from lav2_jax.checkpoint.atomic import atomic_directory
from lav2_jax.checkpoint.layout import ADAPTER_ITEM, BASE_ITEM, write_config
from lav2_jax.checkpoint.pretrained import adapter_mask, copy_tokenizer
from lav2_jax.checkpoint.stream import ItemWriter
from lav2_jax.model.factory import abstract_params

Fn = Callable[[list], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Ref:
    file: object  # sources.TensorFile
    key: str
    shape: tuple  # the shape the configuration implies

    def __str__(self):
        return f"{self.file.path}: {self.key}"


@dataclasses.dataclass
class Piece:
    refs: list
    fn: Fn
    index: Optional[int] = None  # layer slice of a stacked leaf; None: the whole leaf


@dataclasses.dataclass
class LeafPlan:
    key: tuple
    shape: tuple
    pieces: list
    stacked: bool = False
    dtype: object = None  # set by check_plan from the model (frozen: weight dtype; trainable: float32)


def single(key: tuple, shape: tuple, refs: list, fn: Fn) -> LeafPlan:
    return LeafPlan(key, tuple(shape), [Piece(refs, fn)])


def stacked(key: tuple, shape: tuple, per_layer: Iterable[tuple[list, Fn]]) -> LeafPlan:
    """A leaf stacked over layers; `per_layer` yields (refs, fn) for layer 0, 1, ...; `shape` excludes the layers."""
    pieces = [Piece(refs, fn, i) for i, (refs, fn) in enumerate(per_layer)]
    return LeafPlan(key, (len(pieces),) + tuple(shape), pieces, stacked=True)


def model_targets(model) -> tuple[dict, dict]:
    """({leaf path: ShapeDtypeStruct}, {leaf path: item name}) of a Transformer: what a plan must produce."""
    shapes = traverse_util.flatten_dict(abstract_params(model))
    mask = adapter_mask(model, abstract_params(model))
    return shapes, {k: ADAPTER_ITEM if mask[k] else BASE_ITEM for k in shapes}


def check_plan(plan: list, sources: list, shapes: dict, config_source: str = "the configuration") -> None:
    """Validates `plan` from file headers alone (see module docstring); `shapes` from `model_targets`.

    `sources`: (TensorFile, ignore) pairs; `ignore` holds regexes of that file's keys that are deliberately unused
    (e.g. `rope.freqs`, a CLIP file's text tower).
    """
    files = [f for f, _ in sources]
    used: dict[str, set] = {f.path: set() for f in files}
    for leaf in plan:
        for piece in leaf.pieces:
            for ref in piece.refs:
                if ref.key not in ref.file:
                    raise ValueError(f"{ref.file.path}: missing key {ref.key!r}")
                got = tuple(ref.file.shape(ref.key))
                if got != tuple(ref.shape):
                    raise ValueError(f"{ref.file.path}: {ref.key} has shape {got}, but {config_source} implies "
                                     f"{tuple(ref.shape)}")
                used.setdefault(ref.file.path, set()).add(ref.key)
    for f, ignore in sources:
        patterns = [re.compile(p) for p in ignore]
        extra = [k for k in f.keys() if k not in used[f.path] and not any(p.search(k) for p in patterns)]
        if extra:
            raise ValueError(f"{f.path}: unexpected key {extra[0]!r}" +
                             (f" (+{len(extra) - 1} more)" if len(extra) > 1 else "") +
                             f"; it does not fit {config_source}")
    planned = {leaf.key: leaf for leaf in plan}
    missing = [k for k in shapes if k not in planned]
    unknown = [k for k in planned if k not in shapes]
    if missing or unknown:
        raise AssertionError(f"conversion plan does not match the model: missing {missing[:3]}, extra {unknown[:3]}")
    for k, s in shapes.items():
        if tuple(s.shape) != planned[k].shape:
            raise AssertionError(f"conversion plan: {'/'.join(k)} planned {planned[k].shape}, model {s.shape}")
        planned[k].dtype = s.dtype


def convert_plan(out_dir, config, targets: tuple[dict, dict], plan: list, sources: list, *, config_source: str,
                 tokenizer=None, overwrite: bool = False) -> str:
    """`check_plan` then `write_checkpoint`: nothing is written unless every check passes."""
    shapes, items = targets
    check_plan(plan, sources, shapes, config_source)
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{os.path.abspath(out_dir)}: already exists (pass --overwrite to replace it)")
    return write_checkpoint(out_dir, config, plan, items, tokenizer=tokenizer, overwrite=overwrite,
                            files=[f for f, _ in sources])


def write_checkpoint(out_dir, config, plan: list, items: dict, *, tokenizer=None, overwrite: bool = False,
                     files: Iterable = ()) -> str:
    """Streams `plan` into a checkpoint at `out_dir` (atomic): `config` a CheckpointConfig (its `items` are set
    here), `items` {leaf path: item name} from `model_targets`. Returns the absolute path."""
    names = tuple(n for n in (BASE_ITEM, ADAPTER_ITEM) if n in items.values())
    config = config.replace(items=names)
    files = list(files)
    with atomic_directory(out_dir, overwrite) as tmp:
        writers = {n: ItemWriter(os.path.join(tmp, n)) for n in names}
        for leaf in plan:
            writer = writers[items[leaf.key]]
            writer.create(leaf.key, leaf.shape, leaf.dtype, leaf.stacked)
            for piece in leaf.pieces:
                value = piece.fn([ref.file.get(ref.key) for ref in piece.refs])
                writer.write(leaf.key, value, piece.index)
            for f in files:  # unmap between leaves: RSS stays near one piece
                f.release()
        for w in writers.values():
            w.close()
        if tokenizer is not None:
            copy_tokenizer(tokenizer, tmp)
        write_config(tmp, config)
    return os.path.abspath(os.fspath(out_dir))
