"""Checkpoints: the orbax format, `load_pretrained`, and PyTorch conversion / export (docs/design.md §7).

Public API (imported lazily, so `import lav2_jax.checkpoint` stays free of jax/orbax until used):
  save_pretrained, load_pretrained, save_adapter, load_adapter, Bundle,
  load_vision, item_dirs, restore_params                                 (lav2_jax.checkpoint.pretrained)
  CheckpointConfig, read_config                                           (lav2_jax.checkpoint.layout)
"""

from __future__ import annotations

import importlib

_LAZY = {
    "save_pretrained": "pretrained", "load_pretrained": "pretrained", "save_adapter": "pretrained",
    "load_adapter": "pretrained", "Bundle": "pretrained", "restore_params": "pretrained",
    "load_vision": "pretrained", "item_dirs": "pretrained",
    "CheckpointConfig": "layout", "read_config": "layout",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"lav2_jax.checkpoint.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'lav2_jax.checkpoint' has no attribute {name!r}")
