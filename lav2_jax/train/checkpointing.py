"""Training checkpoints with orbax `CheckpointManager` (async), every N steps and at the end, last K kept.

One checkpoint `<workdir>/checkpoints/<step>/` holds three items:
  state  the train state (`lav2_jax.train.step`): trainable parameters, optimizer state, step, RNG — sharded
         arrays written by every process (`ocp.args.StandardSave`)
  data   the data iterators' states, one per process (`ocp.args.JsonSave`), so resume continues with exactly the
         batches the interrupted run would have seen
  meta   JSON: the run config, the base checkpoint path (the frozen base is referenced, never copied), the losses of
         the last step
Writes are atomic (orbax finalises a step directory only when complete), so a run killed mid-write resumes from the
previous complete checkpoint. `restore` places every array straight onto the shardings of the abstract target.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

ITEMS = ("state", "data", "meta")


def gather_json(obj: Any) -> dict[str, Any]:
    """{process index: obj of that process} on every process (one process: no communication)."""
    if jax.process_count() == 1:
        return {"0": obj}
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    n = int(np.asarray(multihost_utils.process_allgather(np.asarray([raw.size], np.int32))).max())
    padded = np.zeros(n, np.uint8)
    padded[:raw.size] = raw
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), n)
    return {str(i): json.loads(bytes(r).rstrip(b"\0").decode()) for i, r in enumerate(rows)}


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` for the three items above."""

    def __init__(self, directory: str, every_steps: int, keep: int, use_async: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(int(every_steps), 1),
                                               enable_async_checkpointing=use_async, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def save(self, step: int, state, data_state: Any, meta: dict, force: bool = False) -> bool:
        """Starts an (async) save of `state` at `step`; the data state of every process is gathered first."""
        data = gather_json(data_state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
                                  meta=ocp.args.JsonSave(meta))
        return self.manager.save(int(step), args=args, force=force)

    def restore(self, step: int, abstract_state) -> tuple[Any, Any, dict]:
        """(state on the target shardings, this process's data state, meta) of checkpoint `step`."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                                  meta=ocp.args.JsonRestore())
        out = self.manager.restore(int(step), args=args)
        data = out["data"]
        mine = data.get(str(jax.process_index()))
        if mine is None or len(data) != jax.process_count():
            raise ValueError(f"checkpoint {step} was written by {len(data)} process(es); this run has "
                             f"{jax.process_count()}: the data iterators cannot be split (start a new workdir)")
        return out["state"], mine, out["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def read_state(directory: str, step: Optional[int] = None) -> dict:
    """The `state` item of checkpoint `step` (default: the latest) as host numpy arrays, on any topology
    (tests and export: a checkpoint written by 8 devices or 2 processes reads back on one CPU)."""
    directory = os.path.abspath(directory)
    if step is None:
        steps = [int(d) for d in os.listdir(directory) if d.isdigit()]
        if not steps:
            raise FileNotFoundError(f"{directory}: no checkpoint")
        step = max(steps)
    path = os.path.join(directory, str(step), "state")
    ckptr = ocp.StandardCheckpointer()
    tree = ckptr.metadata(path).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    return jax.tree_util.tree_map(np.asarray, ckptr.restore(path, target))
