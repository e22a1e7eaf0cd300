"""Streaming writes of an orbax item, one slice at a time (converting 65B must not need 130 GB of RAM).

`ItemWriter(path)` declares leaves (`create(key, shape, dtype, stacked)`), then receives pieces: a whole leaf, or
one layer slice `[i]` of a leaf stacked on the leading layer axis. Each leaf is a zarr (v2, zstd) array written by
tensorstore — the on-disk form orbax's `PyTreeCheckpointHandler(use_ocdbt=False)` produces — chunked per layer,
so a piece goes to disk as soon as it is made and host memory holds one piece, never a stacked leaf. `close()`
checks every slice arrived, then writes orbax's tree metadata (`_METADATA`, `_CHECKPOINT_METADATA`) and the commit
marker, after which `lav2_jax.checkpoint.items.restore_item` (orbax) restores it onto any sharding.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import tensorstore as ts

COMPRESSOR = {"id": "zstd", "level": 1}
_HANDLER = "orbax.checkpoint._src.handlers.pytree_checkpoint_handler.PyTreeCheckpointHandler"


def _zarr_dtype(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    return "bfloat16" if dtype.name == "bfloat16" else dtype.str


class ItemWriter:
    """Writes one orbax item at `path` (a new directory) leaf by leaf and slice by slice."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        os.makedirs(self.path)
        self._leaves: dict[tuple, dict] = {}

    def create(self, key: tuple, shape: tuple, dtype, stacked: bool = False) -> None:
        """Declares leaf `key` [shape] of `dtype`; `stacked`: written as `shape[0]` slices along axis 0."""
        if key in self._leaves:
            raise ValueError(f"{self.path}: leaf {'/'.join(key)} declared twice")
        shape = tuple(int(d) for d in shape)
        chunks = (1,) + shape[1:] if stacked and shape else shape
        spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": os.path.join(self.path, ".".join(key))},
                "metadata": {"shape": list(shape), "chunks": [max(c, 1) for c in chunks],
                             "dtype": _zarr_dtype(dtype), "compressor": COMPRESSOR, "fill_value": None,
                             "dimension_separator": "."},
                "create": True}
        store = ts.open(spec).result()
        n = shape[0] if stacked else 1
        self._leaves[key] = {"store": store, "shape": shape, "dtype": np.dtype(dtype), "stacked": stacked,
                             "todo": set(range(n))}

    def write(self, key: tuple, value: np.ndarray, index: int | None = None) -> None:
        """Writes the whole leaf (`index` None) or slice `index` of a stacked leaf; `value` is cast to the dtype."""
        leaf = self._leaves[key]
        want = leaf["shape"][1:] if index is not None else leaf["shape"]
        if tuple(value.shape) != tuple(want):
            raise ValueError(f"{self.path}: piece of {'/'.join(key)} has shape {tuple(value.shape)}, expected "
                             f"{tuple(want)}")
        value = np.ascontiguousarray(value, dtype=leaf["dtype"])
        target = leaf["store"] if index is None else leaf["store"][index]
        target.write(value).result()
        leaf["todo"].discard(0 if index is None else index)

    def close(self) -> None:
        """Checks completeness and commits the orbax metadata (the item is restorable only after this)."""
        for key, leaf in self._leaves.items():
            if leaf["todo"]:
                raise ValueError(f"{self.path}: leaf {'/'.join(key)} is missing slices {sorted(leaf['todo'])[:5]}")
        tree = {str(key): {"key_metadata": [{"key": k, "key_type": 2} for k in key],
                           "value_metadata": {"value_type": "np.ndarray", "skip_deserialize": False}}
                for key in self._leaves}
        meta = {"tree_metadata": tree, "use_ocdbt": False, "use_zarr3": False,
                "store_array_data_equal_to_fill_value": True, "custom_metadata": None}
        now = time.time_ns()
        ckpt_meta = {"item_handlers": _HANDLER, "metrics": {}, "performance_metrics": {},
                     "init_timestamp_nsecs": now, "commit_timestamp_nsecs": now, "custom_metadata": {}}
        with open(os.path.join(self.path, "_METADATA"), "w") as f:
            json.dump(meta, f)
        with open(os.path.join(self.path, "_CHECKPOINT_METADATA"), "w") as f:
            json.dump(ckpt_meta, f)
        with open(os.path.join(self.path, "commit_success.txt"), "w") as f:
            f.write(f"Checkpoint commit was successful to {self.path}")
        self._leaves.clear()
