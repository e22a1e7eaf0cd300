"""Multi-host set-up (docs/design.md §8.2): `jax.distributed.initialize` when several processes train together.

Process discovery, in order: explicit `config.distributed` fields (coordinator address, process count and id),
the `LAV2_COORDINATOR` / `LAV2_NUM_PROCESSES` / `LAV2_PROCESS_ID` environment variables (the local launch script),
then `jax.distributed.initialize()` with no arguments when `config.distributed.auto` is set (TPU pods and SLURM,
where JAX discovers the cluster itself). On CPU the cross-process collectives use gloo
(`jax_cpu_collectives_implementation`), which must be chosen before JAX starts its backend.

Only process 0 writes logs (`is_main`); every process writes its shards of the orbax checkpoints.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

_ENV = ("LAV2_COORDINATOR", "LAV2_NUM_PROCESSES", "LAV2_PROCESS_ID")


def distributed_args(dist: Any | None) -> dict | None:
    """The keyword arguments for `jax.distributed.initialize`, or None for a single-process run."""
    get = (lambda k, d=None: dist.get(k, d)) if dist is not None else (lambda k, d=None: d)
    addr = get("coordinator_address", "") or os.environ.get(_ENV[0], "")
    if addr:
        n = int(get("num_processes", 0) or os.environ.get(_ENV[1], 0))
        pid = get("process_id", -1)
        pid = int(pid if pid is not None and pid >= 0 else os.environ.get(_ENV[2], -1))
        if n <= 0 or pid < 0:
            raise ValueError("distributed: a coordinator address needs num_processes and process_id "
                             f"(config.distributed or {_ENV[1]} / {_ENV[2]})")
        return {"coordinator_address": addr, "num_processes": n, "process_id": pid}
    if get("auto", False):
        return {}
    return None


def initialize(dist: Any | None = None) -> bool:
    """Starts `jax.distributed` when the config or environment asks for several processes; True if it did."""
    args = distributed_args(dist)
    if args is None:
        return False
    if jax.distributed.is_initialized():
        return True
    if not jax.config.jax_platforms or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**args)
    return True


def is_main() -> bool:
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier across processes (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True when `flag` is True on any process (e.g. a SIGTERM that reached only some hosts)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.asarray(multihost_utils.process_allgather(np.asarray(int(flag)))).max())
