"""FLOPs of a training step or a forward pass, derived from the model's shapes (docs/design.md).

Analytic FLOPs (`analytic_train_flops`), per stream with R rows × T tokens, N = matmul weights of the language
model (every `kernel` of the layers and the output head; the embedding lookup is free):
  forward 2N per token; backward through the frozen weights 2N per token (the activation gradients every stream
  needs, since trainable parts sit in the first layers or in every layer); trainable-weight gradients 2 × (LoRA
  and connector weights) per token they touch; attention 4·T·Dq per token and layer forward (QKᵀ and PV over the
  whole row, as computed), twice that backward; gated prompts the same with the prompt length in place of T;
  CLIP forward only (frozen: 2 × its weights per patch token), the connector forward and backward.
  The 6N convention (6 × N × tokens) is given alongside. Recomputation by remat is not model work: a step under
  `remat_policy="full"` runs the forward twice, which shows as a compiled/analytic ratio of about 1.5.
The compiled counterpart (FLOPs counted in the compiled program) is `lav2_jax.core.flops.hlo_flops`.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from flax import traverse_util

from lav2_jax.model.factory import abstract_params


def _kernel_sizes(params) -> dict[str, int]:
    """Sizes of the `kernel` leaves of a parameter tree (abstract or real), by top-level subtree."""
    out: dict[str, int] = defaultdict(int)
    for path, leaf in traverse_util.flatten_dict(params).items():
        if path[-1] in ("kernel", "lora_a", "lora_b"):
            out[path[0] if path[0] in ("clip", "connector") else ("lora" if path[-1] != "kernel" else "lm")] += \
                int(np.prod(leaf.shape))
    return out


def analytic_train_flops(model, batch_shapes: dict) -> dict:
    """Model FLOPs of one training step (see the module docstring) for `batch_shapes` {stream: (rows, T)} plus
    the number of images per stream ({stream: images} under key "images", optional)."""
    c, a, v = model.config, model.adapter, model.vision
    sizes = _kernel_sizes(abstract_params(model))
    n_lm, n_lora = sizes["lm"], sizes["lora"]
    dq = c.n_heads * c.head_dim
    images = batch_shapes.get("images", {})
    total = six_n = 0.0
    for stream, shape in batch_shapes.items():
        if stream == "images":
            continue
        rows, T = shape
        tokens = rows * T
        f = tokens * (4.0 * n_lm + 6.0 * n_lora)  # forward 2N, backward 2N; LoRA forward + both gradients
        f += tokens * c.n_layers * 12.0 * T * dq  # attention over the row, forward and backward
        prompt = a.prompt_layers * a.prompt_len if a.has_prompts else 0
        if a.visual_fusion == "early":
            prompt += a.early_layers * a.query_len
        f += tokens * 12.0 * prompt * dq
        n_img = images.get(stream, 0)
        if n_img and v is not None:
            patches = (v.image_size // v.patch_size) ** 2 + 1
            f += n_img * patches * (2.0 * sizes["clip"] + 4.0 * v.layers * patches * v.width)
            f += n_img * (patches + a.query_len) * 6.0 * sizes["connector"]
        total += f
        six_n += 6.0 * n_lm * tokens
    return {"analytic_flops": total, "flops_6n": six_n, "lm_matmul_params": n_lm}


def analytic_forward_flops(model, rows: int, T: int) -> dict:
    """Model FLOPs of a forward pass over rows × T tokens: 2N per token plus attention 4·T·Dq per token and layer
    (no backward, no vision tower)."""
    c = model.config
    n_lm = _kernel_sizes(abstract_params(model))["lm"]
    tokens = rows * T
    total = tokens * (2.0 * n_lm + c.n_layers * 4.0 * T * c.n_heads * c.head_dim)
    return {"analytic_flops": total, "flops_6n": 2.0 * n_lm * tokens, "lm_matmul_params": n_lm}
