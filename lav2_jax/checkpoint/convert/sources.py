"""Reading PyTorch checkpoint files one tensor at a time (conversion streams tensor by tensor).

`TensorFile(path, subkey=None)` opens `.pth`/`.bin` files with `torch.load(mmap=True, weights_only=True)` and
`.safetensors` with `safe_open`: keys and shapes come from the headers, data only when `get(key)` asks, as a numpy
copy in the stored dtype (bf16 as `ml_dtypes.bfloat16`). Pages of a memory-mapped file count towards the process's
RSS once touched, so the file is unmapped (`release`) whenever more than `budget_bytes` were read since it was
opened: host memory stays near one tensor plus that budget, whatever the checkpoint size.
TorchScript archives (OpenAI's `ViT-L-14.pt`) cannot be mapped: `torch.jit.load(...).state_dict()` loads them whole.

Every failure (missing, truncated, not a PyTorch file, no such key) raises ValueError naming the file.
"""

from __future__ import annotations

import os
import zipfile
from typing import Optional

import numpy as np

DEFAULT_BUDGET = 256 << 20
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64",
                      "I32": "int32"}


def _to_numpy(t) -> np.ndarray:
    import ml_dtypes
    import torch  # lazy here and below: torch/safetensors are the optional `convert` extra

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().copy().view(ml_dtypes.bfloat16)
    return t.contiguous().numpy().copy()


def is_torchscript(path: str) -> bool:
    """True for a TorchScript zip archive (it holds `constants.pkl` and a `code/` folder)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


class TensorFile:
    """One checkpoint file. `subkey`: the tensors live under `obj[subkey]` (released files: `'model'`)."""

    def __init__(self, path: str, subkey: Optional[str] = None, budget_bytes: int = DEFAULT_BUDGET):
        self.path = os.fspath(path)
        self.subkey = subkey
        self.budget = budget_bytes
        self.extra: dict = {}  # other top-level entries of a .pth (e.g. a released file's 'config')
        self._tensors = None
        self._touched = 0
        if not os.path.isfile(self.path):
            raise ValueError(f"{self.path}: no such file")
        self.kind = ("safetensors" if self.path.endswith(".safetensors")
                     else "torchscript" if is_torchscript(self.path) else "pickle")
        self._open()
        self._shapes = {k: self._shape(k) for k in self._keys()}
        self._dtypes = {k: self._dtype(k) for k in self._keys()}

    # -- opening ---------------------------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            if self.kind == "safetensors":
                from safetensors import safe_open

                self._tensors = safe_open(self.path, framework="pt")
                return
            import torch

            if self.kind == "torchscript":
                obj = torch.jit.load(self.path, map_location="cpu").state_dict()
            else:
                obj = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch/safetensors raise many types for bad files
            raise ValueError(f"{self.path}: not a readable PyTorch checkpoint "
                             f"(truncated or another format?): {type(e).__name__}: {str(e)[:200]}") from None
        if self.subkey is not None:
            if not isinstance(obj, dict) or self.subkey not in obj:
                raise ValueError(f"{self.path}: expected a dict with key {self.subkey!r}")
            self.extra = {k: v for k, v in obj.items() if k != self.subkey}
            obj = obj[self.subkey]
        if not isinstance(obj, dict):
            raise ValueError(f"{self.path}: expected a state dict, found {type(obj).__name__}")
        import torch

        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ValueError(f"{self.path}: entry {bad[0]!r} is not a tensor")
        self._tensors = dict(obj)

    def _keys(self) -> list[str]:
        return list(self._tensors.keys())

    def _shape(self, key: str) -> tuple:
        if self.kind == "safetensors":
            return tuple(self._tensors.get_slice(key).get_shape())
        return tuple(self._tensors[key].shape)

    def _dtype(self, key: str) -> str:
        if self.kind == "safetensors":
            return SAFETENSORS_DTYPES.get(self._tensors.get_slice(key).get_dtype(), "unknown")
        return str(self._tensors[key].dtype).removeprefix("torch.")

    # -- public ----------------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._shapes)

    def shape(self, key: str) -> tuple:
        try:
            return self._shapes[key]
        except KeyError:
            raise ValueError(f"{self.path}: missing key {key!r}") from None

    def dtype(self, key: str) -> str:
        """The stored dtype's name (`float32`, `bfloat16`, ...)."""
        self.shape(key)
        return self._dtypes[key]

    def __contains__(self, key: str) -> bool:
        return key in self._shapes

    def get(self, key: str) -> np.ndarray:
        """The tensor `key` as a fresh numpy array (stored dtype)."""
        self.shape(key)
        if self._tensors is None:
            self._open()
        try:
            t = self._tensors.get_tensor(key) if self.kind == "safetensors" else self._tensors[key]
            out = _to_numpy(t)
        except Exception as e:  # noqa: BLE001 - data beyond a truncated end, bad storage
            raise ValueError(f"{self.path}: cannot read {key!r} (truncated file?): {type(e).__name__}: "
                             f"{str(e)[:200]}") from None
        self._touched += out.nbytes
        if self._touched >= self.budget and self.kind != "torchscript":
            self.release()
        return out

    def release(self) -> None:
        """Unmaps the file (reopened on the next `get`); drops the RSS of pages read so far."""
        if self.kind == "torchscript":
            return
        self._tensors = None
        self._touched = 0
