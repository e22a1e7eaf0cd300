"""A training run → a checkpoint that `lav2_jax.load_pretrained` and `lav2 generate` read.

The run's checkpoints hold only the trained leaves (and the base's path). Exporting rebuilds the model from the
run's config, takes every other leaf from the base — the base checkpoint, or the preset's seeded random base —
and writes an adapter-only checkpoint over the base checkpoint (`save_adapter`, tens of MB) or, for a random base
or a run that trained base weights (LLaVA's full fine-tune), a complete checkpoint (`save_pretrained`). Runs on one
device whatever topology trained.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Optional

import jax
import ml_collections
from flax import traverse_util

from lav2_jax.checkpoint import save_adapter, save_pretrained
from lav2_jax.checkpoint.layout import ADAPTER_RECIPE, TOKENIZER_DIR
from lav2_jax.core import param_groups as pg
from lav2_jax.core.sharding import logical_shardings, make_mesh
from lav2_jax.data.tokenizer_train import train_sentencepiece
from lav2_jax.model.factory import abstract_params
from lav2_jax.train import state as state_lib
from lav2_jax.train.checkpointing import read_state
from lav2_jax.train.data import channel_order


def _step_dir(workdir: str, step: Optional[int]) -> tuple[str, int]:
    ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise ValueError(f"{workdir}: no checkpoints/ directory (is it a `lav2 train` workdir?)")
    steps = sorted(int(d) for d in os.listdir(ckpt_dir)
                   if d.isdigit() and os.path.exists(os.path.join(ckpt_dir, d, "commit_success.txt")))
    if not steps:
        raise ValueError(f"{ckpt_dir}: no complete checkpoint")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ValueError(f"{ckpt_dir}: no checkpoint for step {step} (have {steps})")
    return ckpt_dir, step


def _base_tokenizer(base: str) -> Optional[str]:
    """The tokenizer stored with base checkpoint `base` (its `tokenizer/` folder), if any."""
    path = os.path.join(os.path.abspath(base), TOKENIZER_DIR)
    return path if os.path.isdir(path) else None


def export_run(workdir: str, out: str, *, step: Optional[int] = None, overwrite: bool = False) -> str:
    """Writes the trained parameters of `workdir` (checkpoint `step`, default the latest) to `out`; returns it."""
    ckpt_dir, step = _step_dir(workdir, step)
    with open(os.path.join(ckpt_dir, str(step), "meta", "metadata")) as f:
        meta = json.load(f)
    config = ml_collections.ConfigDict(meta["config"])
    model = state_lib.model_from_config(config.model)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    params = state_lib.load_params(model, config.model, mesh, logical_shardings(abstract_params(model, boxed=True),
                                                                                mesh))
    flat = traverse_util.flatten_dict(params)
    trained = traverse_util.flatten_dict(read_state(ckpt_dir, step)["params"])
    for path, value in trained.items():
        if path not in flat or flat[path].shape != value.shape:
            raise ValueError(f"{ckpt_dir}/{step}: trained leaf {'/'.join(path)} does not fit the model its config "
                             "describes")
        flat[path] = value.astype(flat[path].dtype)  # trained base weights (full fine-tune) back to their dtype
    params = traverse_util.unflatten_dict(flat)
    info = {"trained": {"workdir": os.path.abspath(workdir), "step": step, "recipe": config.recipe,
                        "param_recipe": config.param_recipe, "losses": meta.get("losses", {})}}
    base = config.model.get("base_checkpoint", "")
    full_tune = [p for p in trained if pg.label_for(pg.path_str(p), ADAPTER_RECIPE) == "frozen"]
    if base and not full_tune:
        return save_adapter(out, model, params, base=base, meta=info, overwrite=overwrite)
    # A random base, or base weights were trained (LLaVA's full fine-tune): a complete checkpoint.
    tokenizer = config.data.get("tokenizer", "") or (_base_tokenizer(base) if base else None)
    with tempfile.TemporaryDirectory() as tmp:
        if tokenizer is None and config.data.get("source") == "synthetic":
            # Synthetic runs train on token ids, not text: a sentencepiece model of exactly the model's vocabulary
            # makes the checkpoint decodable (`lav2 generate` prints text) without a tokenizer of the user's.
            tokenizer = train_sentencepiece(os.path.join(tmp, "tokenizer.model"), vocab_size=model.config.vocab_size,
                                            byte_fallback=False)
            info["trained"]["tokenizer"] = "generated for synthetic token ids"
        return save_pretrained(out, model, params, tokenizer=tokenizer, channel_order=channel_order(config),
                               meta=info, overwrite=overwrite)
