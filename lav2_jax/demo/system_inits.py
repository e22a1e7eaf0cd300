"""Starting checkpoints of the systems with stages of their own (`System.demo_stages`: LLaVA, mPLUG-Owl) over the
demo's frozen parts (`lav2 demo --systems`), so that every system of the comparison starts from the same language
prior and the same contrastive vision tower.

`write_init(config, prior_dir, base_dir, tokenizer, out_dir)` builds the model a system's stage-1 config
describes (`config.model`: `system`, its fields read by `System.model_configs`, the language model taken from
`prior_dir`'s config, the demo tokenizer's vocabulary) and writes a complete checkpoint
(`lav2_jax.checkpoint.save_pretrained`) with

  every LLaMA leaf            from `<workdir>/prior` (the language prior, frozen in every system's stage 1)
  the vision leaves           the demo's contrastive CLIP tower from `<workdir>/base`, in the system's layout
                              (`System.vision_from_clip`: LLaVA's `clip/...` without `proj`; Owl's `owl_vision/...`,
                              `lav2_jax.systems.owl.clip_init`)
  the rest                    (projector, abstractor) its seeded random init, as the trainer would draw it
"""

from __future__ import annotations

import jax
import numpy as np
from flax import traverse_util

from lav2_jax.checkpoint import read_config, save_pretrained
from lav2_jax.checkpoint.pretrained import item_dirs, restore_params
from lav2_jax.core import registry
from lav2_jax.model.factory import build_model, init_params


def system_model(mc, model_config):
    """The Transformer of a training config's `model` section (a system with demo stages) over the language model
    `model_config`."""
    system = registry.get(mc.get("system", "lav2"))
    if not system.demo_stages:
        raise ValueError(f"config.model.system={system.name!r}: an init is for a system with stages of its own "
                         "(System.demo_stages)")
    adapter, vision = system.model_configs(mc, model_config)
    return build_model(model_config, adapter, vision)


def write_init(config, prior_dir: str, base_dir: str, tokenizer: str, out_dir: str, seed: int = 0) -> str:
    """Writes the starting checkpoint of `config`'s system (module docstring) to `out_dir`; returns it."""
    model = system_model(config.model, read_config(prior_dir).model)
    flat = traverse_util.flatten_dict(jax.device_get(init_params(model, jax.random.PRNGKey(seed))))
    prior, _ = restore_params(model, item_dirs(prior_dir), allow_missing=True)  # the LLaMA leaves
    b = read_config(base_dir)
    base, _ = restore_params(build_model(b.model, b.adapter, b.vision), item_dirs(base_dir))
    system = registry.of(model.adapter)
    vision = system.vision_from_clip(base["clip"], model, set(flat))
    for k, v in list(traverse_util.flatten_dict(prior).items()) + list(vision.items()):
        if flat[k].shape != np.shape(v):
            raise ValueError(f"{out_dir}: {'/'.join(k)} has shape {np.shape(v)}, the model wants {flat[k].shape}")
        flat[k] = np.asarray(v).astype(flat[k].dtype)
    return save_pretrained(out_dir, model, traverse_util.unflatten_dict(flat), tokenizer=tokenizer, overwrite=True,
                           meta={"demo_init": {"system": system.name, "prior": prior_dir,
                                               "vision": base_dir, "seed": seed}})
