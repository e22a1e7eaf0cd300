"""Checkpoints → PyTorch formats: `hf.export_hf` (plain Hugging Face Llama with adapters merged, or a spliced
system's transformers model, `System.hf_export`); the systems' own formats are their `System.exporters`
(`lav2 export FORMAT`; LLaMA-Adapter V2's `official`, the released adapter file). `export_config` is their shared
first step."""

import os

from lav2_jax.checkpoint.layout import read_config


def export_config(ckpt: str, out: str, overwrite: bool, check):
    """The CheckpointConfig of `ckpt`, after `check(adapter, ckpt)` accepts its adapter and `out` is free."""
    cfg = read_config(ckpt)
    if cfg.adapter is None:
        raise ValueError(f"{ckpt}: a vision-only checkpoint has no language model or adapter to export")
    check(cfg.adapter, ckpt)
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    return cfg
