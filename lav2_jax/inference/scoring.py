"""Building blocks of likelihood-scored evaluation, for every system (LLaMA-Adapter V2, LLaVA, mPLUG-Owl).

  encode_images(bundle, images [B, H, W, 3]) -> float32 [B, n_tokens, D]
      the visual tokens each image contributes to the language model (`lav2_jax.model.visual_tokens`): the
      connector's visual prompts for LLaMA-Adapter V2, the spliced tokens for LLaVA / mPLUG-Owl.
  next_token_logits(bundle, prompts, images=None) -> float32 [B, V]
      the logits of the token after each prompt (BOS + prompt, no EOS; `<image>` expanded by the bundle's
      tokenizer for spliced systems), from one full forward pass — the same pass `generate` prefills with.

Inputs are prepared as `generate` prepares them (`lav2_jax.inference.generation.prepare`: bucketed, right-padded,
split over the mesh's batch axes when the parameters live on a mesh).
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from lav2_jax.inference import engine, generation
from lav2_jax.model.visual_tokens import VisualTokens


def _logits(model, params, tokens, lengths, images, has_image):
    hidden = model.apply({"params": params}, tokens, images, has_image, return_hidden=True)
    return engine._last_logits(model, params, hidden, lengths)


_logits_fn = jax.jit(_logits, static_argnames=("model",))
_encode_fn = jax.jit(lambda module, params, images: module.apply({"params": params}, images), static_argnums=0)


def next_token_logits(bundle, prompts: Sequence[str] | str, images=None, *, mesh=None) -> np.ndarray:
    """float32 [len(prompts), V]: logits of the next token after each prompt. `images` as for `generate`."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    model, params, tok = bundle.model, bundle.params, bundle.tokenizer
    if not prompts:
        return np.zeros((0, model.config.vocab_size), np.float32)
    mesh = mesh if mesh is not None else generation.find_mesh(params)
    batch = generation.prepare(model, tok, prompts, images, 1, generation._data_size(mesh))
    params, inputs = generation.place(model, params, batch, mesh)
    out = _logits_fn(model, params, inputs["tokens"], inputs["lengths"], inputs["images"], inputs["has_image"])
    return np.asarray(out, np.float32)[:batch.n]


def encode_images(bundle, images) -> np.ndarray:
    """float32 [B, n_tokens, D] for preprocessed images [B, H, W, 3] (or one [H, W, 3])."""
    model, params = bundle.model, bundle.params
    if model.vision is None:
        raise generation.ImageNotSupported("this model has no vision tower (it is text-only)")
    images = np.asarray(images, np.float32)
    images = images[None] if images.ndim == 3 else images
    size = model.vision.image_size
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"images have shape {images.shape}; this model takes preprocessed [B, {size}, {size}, 3] "
                         "images (lav2_jax.data.images.preprocess)")
    module = VisualTokens.of(model)  # reads its subtrees of the full params
    return np.asarray(_encode_fn(module, params, images), np.float32)
