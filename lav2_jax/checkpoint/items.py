"""Orbax items: saving a parameter tree and restoring chosen leaves straight onto their shardings.

Trees are nested dicts keyed by the model's parameter names; `flat` dicts map `('layers', 'attention', 'wq',
'kernel')`-style tuples to arrays. Restores use `PyTreeRestore(partial_restore=True)` with `ArrayRestoreArgs` that
carry each leaf's target `sharding` and `dtype`, so every array is read (and cast) directly into its shards on the
devices; nothing is assembled on the host first. Leaves are restored in runs of at most `CHUNK_BYTES`: one orbax
restore of a whole 1.1 B float32 model peaked at 1.75× its weights in host RSS, runs of 1 GiB at 1.40× (the rest is
about 1.4 × the largest leaf, which a run cannot split).

Reads validate: any failure to read an item's metadata or one of its arrays (a truncated or deleted file, a disk
that filled mid-copy) raises one `CheckpointReadError` naming the checkpoint directory, the item and the array,
found by re-reading the failed run one leaf at a time. What the failed reads leave behind (orbax's unretrieved
tasks and suspended coroutines) is collected and silenced (`quiet_failed_reads`), so the error is all that reaches
stderr: no `Task exception was never retrieved`, no `Exception ignored in: <coroutine ...>` at exit.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from typing import Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from lav2_jax.core.param_groups import path_str


class CheckpointReadError(ValueError):
    """An unreadable checkpoint item or array; the message names the directory, the item and the array."""


def describe(path: str) -> str:
    """`checkpoint DIR, item 'NAME'` for the orbax item directory `path` (DIR/NAME)."""
    path = os.path.abspath(path)
    return f"checkpoint {os.path.dirname(path)}, item {os.path.basename(path)!r}"


def reason(e: BaseException) -> str:
    """The innermost cause of `e`, one line (TensorStore's own message, without its spec dump)."""
    seen = set()
    while id(e) not in seen and (e.__cause__ or e.__context__) is not None:
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    text = text.split(" See full TensorStore details")[0]
    return f"{type(e).__name__}: {text[:300]}"


def quiet_failed_reads() -> None:
    """Silences what a failed orbax read leaves behind: its sibling reads' tasks, destroyed unretrieved, log
    `Task exception was never retrieved` or, for TensorStore's own futures, `Future exception was never retrieved`
    (the `asyncio` logger) and its suspended coroutines, closed at exit, print
    `Exception ignored in: <coroutine ...>` (`sys.unraisablehook`). Both are dropped, for orbax's own tasks and
    coroutines and TensorStore's read futures only, from the first failure on; the failure itself is reported as a
    `CheckpointReadError`."""
    global _QUIET
    if not _QUIET:
        _QUIET = True
        logging.getLogger("asyncio").addFilter(_drop_orbax_task_errors)
        sys.unraisablehook = _drop_orbax_unraisable(sys.unraisablehook)
    gc.collect()


_QUIET = False


def _from_orbax(obj) -> bool:
    code = getattr(obj, "cr_code", None) or getattr(getattr(obj, "get_coro", lambda: None)(), "cr_code", None)
    return code is not None and "orbax" in code.co_filename


# A sibling read's plain TensorStore future (no orbax coroutine in its repr) names only the damaged database.
_TENSORSTORE_READ = ("OCDBT database", "TensorStore")


def _drop_orbax_task_errors(record: logging.LogRecord) -> bool:
    future = (record.args or {}).get("future") if isinstance(record.args, dict) else None
    text = record.getMessage()
    ours = "orbax" in text or _from_orbax(future) or any(m in text for m in _TENSORSTORE_READ)
    return not ("never retrieved" in text and ours)


def _drop_orbax_unraisable(previous):
    def hook(unraisable):
        late = isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)
        if not (late or _from_orbax(unraisable.object)):
            previous(unraisable)
    return hook


def save_item(path: str, tree: Mapping) -> None:
    """Writes `tree` (arrays, nested dicts) as an orbax item at `path` (must not exist); blocks until committed."""
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(path), dict(tree))
        ckptr.wait_until_finished()


def item_shapes(path: str) -> dict[tuple, tuple[tuple, np.dtype]]:
    """{leaf path tuple: (shape, dtype)} of the item at `path`, from its metadata (reads no array)."""
    if not os.path.isdir(path):
        raise CheckpointReadError(f"{describe(path)}: the item directory is missing")
    if not os.path.isfile(os.path.join(path, "_METADATA")):
        raise CheckpointReadError(f"{describe(path)}: its _METADATA file is missing")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            meta = ckptr.metadata(os.path.abspath(path)).item_metadata
        tree = getattr(meta, "tree", meta)
        flat = traverse_util.flatten_dict(dict(tree))
        return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flat.items()}
    except Exception as e:  # noqa: BLE001 - orbax / TensorStore raise many types for a damaged item
        quiet_failed_reads()
        raise CheckpointReadError(f"{describe(path)}: unreadable metadata ({reason(e)})") from None


def restore_item(path: str, targets: Mapping[tuple, jax.ShapeDtypeStruct]) -> dict[tuple, jax.Array]:
    """Restores the leaves named in `targets` (a subset of the item) onto `target.sharding`, cast to `target.dtype`.

    Raises ValueError naming the item and leaf when a leaf is missing or has another shape, and
    `CheckpointReadError` naming the directory, item and array when an array cannot be read.
    """
    if not targets:
        return {}
    saved = item_shapes(path)
    for key, t in targets.items():
        if key not in saved:
            raise ValueError(f"{path}: no parameter {path_str(key)} in this checkpoint item")
        if tuple(saved[key][0]) != tuple(t.shape):
            raise ValueError(f"{path}: parameter {path_str(key)} has shape {saved[key][0]}, the model expects "
                             f"{tuple(t.shape)}")
    out: dict = {}
    path = os.path.abspath(path)
    with ocp.PyTreeCheckpointer() as ckptr:
        for chunk in _chunks(targets):
            try:
                out.update(_restore_run(ckptr, path, chunk))
            except Exception:  # noqa: BLE001 - find the array to name (TensorStore raises bare Exceptions)
                quiet_failed_reads()
                raise _unreadable(ckptr, path, chunk) from None
    return out


def _restore_run(ckptr, path: str, chunk: Mapping[tuple, jax.ShapeDtypeStruct]) -> dict:
    item = traverse_util.unflatten_dict(dict(chunk))
    restore_args = traverse_util.unflatten_dict({
        k: ocp.ArrayRestoreArgs(sharding=t.sharding, dtype=t.dtype, global_shape=tuple(t.shape))
        for k, t in chunk.items()})
    restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                                              partial_restore=True))
    return traverse_util.flatten_dict(restored)


def _unreadable(ckptr, path: str, chunk: Mapping[tuple, jax.ShapeDtypeStruct]) -> CheckpointReadError:
    """The error for a failed run of leaves: each leaf is re-read alone; the first that fails is named."""
    for key in chunk:
        try:
            _restore_run(ckptr, path, {key: chunk[key]})
        except Exception as e:  # noqa: BLE001
            quiet_failed_reads()
            return CheckpointReadError(f"{describe(path)}, array {path_str(key)}: unreadable ({reason(e)})")
    return CheckpointReadError(f"{describe(path)}: arrays {', '.join(path_str(k) for k in list(chunk)[:5])}: "
                               "unreadable together")


CHUNK_BYTES = 1 << 30  # host memory a restore may hold in flight: peak ≈ weights + ~1.4 × max(chunk, largest leaf)


def _chunks(targets: Mapping[tuple, jax.ShapeDtypeStruct]):
    """`targets` split into runs of at most CHUNK_BYTES (or one leaf, when larger)."""
    chunk, size = {}, 0
    for k, t in targets.items():
        nbytes = int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize
        if chunk and size + nbytes > CHUNK_BYTES:
            yield chunk
            chunk, size = {}, 0
        chunk[k] = t
        size += nbytes
    if chunk:
        yield chunk
