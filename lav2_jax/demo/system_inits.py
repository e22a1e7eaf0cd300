"""Starting checkpoints of LLaVA and mPLUG-Owl over the demo's frozen parts (`lav2 demo --systems`), so that every
system of the comparison starts from the same language prior and the same contrastive vision tower.

`write_init(config, prior_dir, base_dir, tokenizer, out_dir)` builds the model a system's stage-1 config
describes (`config.model`: `system` llava | owl, the language model taken from `prior_dir`'s config, the demo
tokenizer's vocabulary) and writes a complete checkpoint (`lav2_jax.checkpoint.save_pretrained`) with

  every LLaMA leaf            from `<workdir>/prior` (the language prior, frozen in every system's stage 1)
  LLaVA `clip/...`            the demo's contrastive CLIP tower from `<workdir>/base` (LLaVA drops its `proj`)
  Owl `owl_vision/...`        the same tower in mPLUG-Owl's vision layout (`clip_to_owl_vision`; SEED_SYSTEMS.md
                              §3.1: per-head q|k|v, no `proj`; the LayerNorm eps is the Owl config's, 1e-6)
  the rest                    (projector, abstractor) its seeded random init, as the trainer would draw it

`clip_to_owl_vision(clip, heads)`: a `lav2_jax.model.clip.CLIPVisionTower` parameter tree (resblocks stacked on a
leading layer axis, L) → a `lav2_jax.systems.owl.vision.OwlVisionModel` tree:

  conv1/kernel [P, P, 3, D]          → patch_embed/kernel
  class_embedding [D], positional_embedding [T, D] → cls_token, position_embedding
  ln_pre, ln_post                    → pre_layernorm, post_layernorm
  resblocks/ln_1, ln_2               → layers/input_layernorm, layers/post_attention_layernorm
  resblocks/attn/{q,k,v} [L, D, D]   → layers/self_attn/query_key_value [L, D, 3D]: the output columns
                                       [q | k | v] re-ordered per head, [q_0 k_0 v_0 q_1 ...] (`blocked_to_per_head`)
  resblocks/attn/out                 → layers/self_attn/dense
  resblocks/mlp/{c_fc, c_proj}       → layers/mlp/{fc1, fc2}
  proj                               dropped (the Owl vision model has none)
"""

from __future__ import annotations

import jax
import numpy as np
from flax import traverse_util

from lav2_jax.systems.owl.vision import blocked_to_per_head

RENAMES = {("conv1", "kernel"): ("patch_embed", "kernel"), ("class_embedding",): ("cls_token",),
           ("positional_embedding",): ("position_embedding",), ("ln_pre",): ("pre_layernorm",),
           ("ln_post",): ("post_layernorm",), ("resblocks", "ln_1"): ("layers", "input_layernorm"),
           ("resblocks", "ln_2"): ("layers", "post_attention_layernorm"),
           ("resblocks", "attn", "out"): ("layers", "self_attn", "dense"),
           ("resblocks", "mlp", "c_fc"): ("layers", "mlp", "fc1"),
           ("resblocks", "mlp", "c_proj"): ("layers", "mlp", "fc2")}
QKV = ("resblocks", "attn")


def clip_to_owl_vision(clip: dict, heads: int) -> dict:
    """The demo CLIP tower's tree → mPLUG-Owl's vision-model tree (module docstring), as numpy arrays."""
    import flax.linen as nn

    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(nn.unbox(clip)).items()}
    out = {}
    for key, value in flat.items():
        if key == ("proj",) or key[:2] == QKV and key[2] in "qkv":
            continue
        prefix = next(p for p in RENAMES if key[:len(p)] == p)
        out[RENAMES[prefix] + key[len(prefix):]] = value
    kernel = np.concatenate([flat[QKV + (x, "kernel")] for x in "qkv"], axis=-1)  # [L, D, 3D], blocked columns
    bias = np.concatenate([flat[QKV + (x, "bias")] for x in "qkv"], axis=-1)      # [L, 3D]
    out[("layers", "self_attn", "query_key_value", "kernel")] = np.stack(
        [blocked_to_per_head(k.T, heads).T for k in kernel])
    out[("layers", "self_attn", "query_key_value", "bias")] = np.stack([blocked_to_per_head(b, heads) for b in bias])
    return traverse_util.unflatten_dict(out)


def system_model(mc, model_config):
    """The Transformer of a LLaVA / Owl training config's `model` section over the language model `model_config`."""
    from lav2_jax.model.factory import build_model
    from lav2_jax.systems.llava import train_config as llava_config
    from lav2_jax.systems.owl import train_config as owl_config

    if llava_config.is_llava(mc):
        adapter, vision = llava_config.llava_configs(mc, model_config)
    elif owl_config.is_owl(mc):
        adapter, vision = owl_config.owl_configs(mc, model_config)
    else:
        raise ValueError(f"config.model.system={mc.get('system', 'lav2')!r}: an init is for llava or owl")
    return build_model(model_config, adapter, vision)


def write_init(config, prior_dir: str, base_dir: str, tokenizer: str, out_dir: str, seed: int = 0) -> str:
    """Writes the starting checkpoint of `config`'s system (module docstring) to `out_dir`; returns it."""
    from lav2_jax.checkpoint import read_config, save_pretrained
    from lav2_jax.checkpoint.pretrained import item_dirs, restore_params
    from lav2_jax.model.factory import build_model, init_params

    model = system_model(config.model, read_config(prior_dir).model)
    flat = traverse_util.flatten_dict(jax.device_get(init_params(model, jax.random.PRNGKey(seed))))
    prior, _ = restore_params(model, item_dirs(prior_dir), allow_missing=True)  # the LLaMA leaves
    b = read_config(base_dir)
    base, _ = restore_params(build_model(b.model, b.adapter, b.vision), item_dirs(base_dir))
    top = {k[0] for k in flat}
    if "owl_vision" in top:
        tree = clip_to_owl_vision(base["clip"], model.vision.heads)
        vision = {("owl_vision",) + k: v for k, v in traverse_util.flatten_dict(tree).items()}
    else:  # LLaVA: the tower's leaves it has (no proj)
        vision = {("clip",) + k: v for k, v in traverse_util.flatten_dict(base["clip"]).items()
                  if ("clip",) + k in flat}
    for k, v in list(traverse_util.flatten_dict(prior).items()) + list(vision.items()):
        if flat[k].shape != np.shape(v):
            raise ValueError(f"{out_dir}: {'/'.join(k)} has shape {np.shape(v)}, the model wants {flat[k].shape}")
        flat[k] = np.asarray(v).astype(flat[k].dtype)
    return save_pretrained(out_dir, model, traverse_util.unflatten_dict(flat), tokenizer=tokenizer, overwrite=True,
                           meta={"demo_init": {"system": model.adapter.splice.system, "prior": prior_dir,
                                               "vision": base_dir, "seed": seed}})
