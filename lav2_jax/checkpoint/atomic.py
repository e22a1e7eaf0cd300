"""Atomic checkpoint directories: write into a temporary sibling, rename into place at the end.

An interrupted write leaves only a `.NAME.tmp-*` directory, never a directory at the target path that looks
complete. The temporary directory lives in the target's parent, so the final `os.rename` stays on one filesystem.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike, overwrite: bool = False):
    """Yields a fresh temporary directory; on normal exit it becomes `out_dir`, on an exception it is removed.

    An existing `out_dir` is an error unless `overwrite` (then it is replaced only after the new one is complete).
    """
    out = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass overwrite=True / --overwrite to replace it)")
    parent, name = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(out):
        old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
