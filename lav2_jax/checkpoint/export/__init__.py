"""Checkpoints → PyTorch formats: `official.export_official` (released adapter file),
`hf.export_hf` (plain Hugging Face Llama with adapters merged)."""

import os


def export_config(ckpt: str, out: str, overwrite: bool, check):
    """The CheckpointConfig of `ckpt`, after `check(adapter, ckpt)` accepts its adapter and `out` is free."""
    from lav2_jax.checkpoint.layout import read_config

    cfg = read_config(ckpt)
    if cfg.adapter is None:
        raise ValueError(f"{ckpt}: a vision-only checkpoint has no language model or adapter to export")
    check(cfg.adapter, ckpt)
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    return cfg
