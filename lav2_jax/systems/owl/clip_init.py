"""A CLIP tower's parameters in mPLUG-Owl's vision-model layout (the Owl `System.vision_from_clip`, which
`lav2 demo --systems` starts Owl's vision model from; `lav2_jax.demo.system_inits`).

`clip_to_owl_vision(clip, heads)`: a `lav2_jax.model.clip.CLIPVisionTower` parameter tree (resblocks stacked on a
leading layer axis, L) → a `lav2_jax.systems.owl.vision.OwlVisionModel` tree (mPLUG-Owl paper §3; per-head q|k|v,
no `proj`; the LayerNorm eps is the Owl config's):

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

import flax.linen as nn
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
    """A CLIP tower's tree → mPLUG-Owl's vision-model tree (module docstring), as numpy arrays."""
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
