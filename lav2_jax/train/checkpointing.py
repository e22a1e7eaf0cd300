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

Reads validate: a checkpoint whose files are truncated or deleted raises `CheckpointReadError` naming the step
directory, the item and the array (`lav2_jax.checkpoint.items`). `resume` restores the newest readable step,
printing a warning for each unreadable newer one and moving it aside to `<workdir>/discarded_checkpoints/` (so the
run can write that step again); with no readable step it raises, never silently restarting at step 0.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from lav2_jax.checkpoint.items import CheckpointReadError, quiet_failed_reads, reason

ITEMS = ("state", "data", "meta")


def gather_json(obj: Any) -> dict[str, Any]:
    """{process index: obj of that process} on every process (one process: no communication)."""
    if jax.process_count() == 1:
        return {"0": obj}
    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    n = int(np.asarray(multihost_utils.process_allgather(np.asarray([raw.size], np.int32))).max())
    padded = np.zeros(n, np.uint8)
    padded[:raw.size] = raw
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), n)
    return {str(i): json.loads(bytes(r).rstrip(b"\0").decode()) for i, r in enumerate(rows)}


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` for the three items above."""

    def __init__(self, directory: str, every_steps: int, keep: int, use_async: bool = True,
                 fault: Optional[Callable[[str, int], None]] = None):
        self.directory = os.path.abspath(directory)
        self.fault = fault or (lambda stage, step: None)  # failure injection: called at stages of `save`
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
        self.fault("data_state", step)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
                                  meta=ocp.args.JsonSave(meta))
        started = self.manager.save(int(step), args=args, force=force)
        if started:
            self.fault("async_write", step)
        return started

    def restore(self, step: int, abstract_state) -> tuple[Any, Any, dict]:
        """(state on the target shardings, this process's data state, meta) of checkpoint `step`."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                                  meta=ocp.args.JsonRestore())
        try:
            out = self.manager.restore(int(step), args=args)
        except Exception as e:  # noqa: BLE001 - orbax / TensorStore raise many types for damaged files
            quiet_failed_reads()
            raise unreadable(self.directory, int(step), e) from None
        data = out["data"]
        mine = data.get(str(jax.process_index()))
        if mine is None or len(data) != jax.process_count():
            raise ValueError(f"checkpoint {step} was written by {len(data)} process(es); this run has "
                             f"{jax.process_count()}: the data iterators cannot be split (start a new workdir)")
        return out["state"], mine, out["meta"]

    def resume(self, abstract_state, step: Optional[int] = None, warn: Callable[[str], None] = print
               ) -> tuple[int, Any, Any, dict]:
        """(step, state, data state, meta) of checkpoint `step`, or of the newest readable one; (0, None, None,
        {}) when the directory holds no checkpoint. Steps after the one restored are moved aside (unreadable ones,
        or, with an explicit `step`, the newer ones the run will write again)."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        if step is not None:
            if int(step) not in steps:
                raise CheckpointReadError(f"{self.directory}: no checkpoint at step {step} (steps: "
                                          f"{', '.join(map(str, sorted(steps))) or 'none'})")
            candidates = [int(step)]
        else:
            candidates = steps
        for s in candidates:
            try:
                state, data, meta = self.restore(s, abstract_state)
            except CheckpointReadError as e:
                if step is not None:
                    raise
                warn(f"warning: {e}; falling back to the previous checkpoint")
                continue
            self._discard([n for n in steps if n > s])
            return s, state, data, meta
        if steps:
            raise CheckpointReadError(f"{self.directory}: no readable checkpoint (steps "
                                      f"{', '.join(map(str, sorted(steps)))}); remove it to start at step 0")
        return 0, None, None, {}

    def _discard(self, steps) -> None:
        if not steps:
            return
        aside = os.path.join(os.path.dirname(self.directory), "discarded_checkpoints")
        for s in steps if jax.process_index() == 0 else ():  # one process moves; the others wait for it
            os.makedirs(aside, exist_ok=True)
            dst, n = os.path.join(aside, str(s)), 1
            while os.path.exists(dst):
                dst, n = os.path.join(aside, f"{s}.{n}"), n + 1
            shutil.move(os.path.join(self.directory, str(s)), dst)
            print(f"lav2 train: moved checkpoint step {s} aside to {dst}", flush=True)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("lav2_discard_checkpoints")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


_ARRAY_IN_MESSAGE = re.compile(r'Error reading "([^"/]+)/[0-9.]+"')


def _messages(e: BaseException) -> str:
    out, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(out)


def unreadable(directory: str, step: int, e: BaseException) -> CheckpointReadError:
    """The named error for a failed restore of `step`: the missing item, or the array TensorStore names."""
    where = f"checkpoint {os.path.join(directory, str(step))}"
    for item in ITEMS:
        if not os.path.isdir(os.path.join(directory, str(step), item)):
            return CheckpointReadError(f"{where}, item {item!r}: the item directory is missing")
    for item in ("data", "meta"):
        try:
            with open(os.path.join(directory, str(step), item, "metadata")) as f:
                json.load(f)
        except (OSError, ValueError) as je:
            return CheckpointReadError(f"{where}, item {item!r}, file metadata: unreadable ({reason(je)})")
    named = _ARRAY_IN_MESSAGE.search(_messages(e))
    array = named.group(1).replace(".", "/") if named else "(not named by the reader)"
    return CheckpointReadError(f"{where}, item 'state', array {array}: unreadable ({reason(e)})")


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
    try:
        ckptr = ocp.StandardCheckpointer()
        tree = ckptr.metadata(path).item_metadata
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
        return jax.tree_util.tree_map(np.asarray, ckptr.restore(path, target))
    except Exception as e:  # noqa: BLE001 - orbax / TensorStore raise many types for damaged files
        quiet_failed_reads()
        raise unreadable(directory, int(step), e) from None
