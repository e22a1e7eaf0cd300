"""The device mesh from a config and the placement of host batches on it (docs/design.md §8.2).

`mesh_from_config(config.mesh)` builds the `(data, fsdp, tensor)` mesh over all devices of all processes (-1 fills).
`global_batch(local, mesh)` turns each process's numpy rows into global `jax.Array`s split over `(data, fsdp)`
with `jax.make_array_from_process_local_data`; `local_rows(mesh, global_rows)` says which rows of the global batch
this process must supply (a contiguous block: the mesh orders devices process by process).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from lav2_jax.core.sharding import make_mesh
from lav2_jax.train.step import batch_sharding


def mesh_from_config(mesh_cfg: Any, devices=None):
    return make_mesh(int(mesh_cfg["data"]), int(mesh_cfg["fsdp"]), int(mesh_cfg["tensor"]), devices)


def local_rows(mesh, global_rows: int) -> tuple[int, int]:
    """[start, stop) of the global batch rows held by this process's devices."""
    sharding = batch_sharding(mesh, 1)
    idx = sharding.addressable_devices_indices_map((global_rows,))
    starts = [s[0].start or 0 for s in idx.values()]
    stops = [global_rows if s[0].stop is None else s[0].stop for s in idx.values()]
    start, stop = min(starts), max(stops)
    if stop - start != global_rows // jax.process_count():
        raise ValueError(f"this process's devices hold rows {start}..{stop} of {global_rows}: not a contiguous "
                         "1/process_count block (check the mesh shape)")
    return start, stop


def global_batch(local: Mapping, mesh) -> dict:
    """A (nested) dict of per-process numpy arrays [B_local, ...] → global arrays [B_local·processes, ...]."""
    def place(x):
        x = np.asarray(x)
        shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x, shape)

    return jax.tree_util.tree_map(place, dict(local))
