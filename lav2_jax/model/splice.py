"""Visual tokens spliced into the token sequence (LLaVA, mPLUG-Owl; docs/design.md §4.2, §5.3).

Interface (the Hugging Face convention: the model never changes the sequence length):

* The prompt carries `n_tokens` copies of `SpliceConfig.image_token_id` per image, in the order the images are
  given; the tokenizer layer expands each `<image>` (`lav2_jax.data.image_prompt.ImagePromptTokenizer`). So
  batching, right padding, the KV cache, sharded generation and the pipelines' static shapes need nothing new: a
  sample with an image is simply `n_tokens` tokens longer.
* `Transformer(tokens [B, T], images [B, N, H, W, 3] | [B, H, W, 3], has_image [B, N] | [B])` (or
  `visual_tokens=` [B, N, n_tokens, D] | [B, n_tokens, D]): every image slot is encoded by the system's visual
  front-end (the Transformer's `front_end`), then `splice_visual` writes image k's tokens over the k-th run of
  placeholders of its row. Rows without placeholders are untouched (their slots, zero images, are encoded and
  discarded: static shapes). Placeholder ids are embedded as id 0 (`embed_ids`) and then overwritten, so the id
  may lie outside the vocabulary (e.g. 32000 with LLaVA's original 32000-word vocabulary). Decoding steps
  (`decode=True`) never splice.
* Visual front-end contract (`lav2_jax.core.system.VisualFrontEnd`, one per system, `System.visual_front_end`,
  given to the Transformer by `lav2_jax.model.factory.build_model`):
  `encode(adapter: AdapterConfig, vision: VisionConfig, model: ModelConfig, images [M, H, W, 3]) -> [M, n_tokens, D]`
  in `model.dtype` (the splice is `adapter.splice`), called inside the Transformer's compact scope, so the
  submodules it creates with fixed names are top-level parameters (LLaVA: `clip/...` and `mm_projector/...`;
  mPLUG-Owl: `owl_vision/...` and `abstractor/...`). Dropout may use the `dropout` rng when present.
* Loss: a target that is a placeholder carries no loss (`image_target_mask`, `mask_image_targets`; the
  `labels = -100` form is `ignore_image_labels`).
* Host checks: `check_placeholders` (numpy) raises when a row's placeholders do not form whole images or exceed
  the image slots — the model cannot raise inside jit.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_INDEX = -100

def image_positions(tokens: jax.Array, image_token_id: int) -> jax.Array:
    """tokens [B, T] int → bool [B, T], True at image placeholders."""
    return tokens == image_token_id


def embed_ids(tokens: jax.Array, image_token_id: int) -> jax.Array:
    """tokens [B, T] with placeholders replaced by id 0, safe to look up in the embedding table."""
    return jnp.where(image_positions(tokens, image_token_id), 0, tokens)


def splice_visual(x: jax.Array, tokens: jax.Array, visual: jax.Array, image_token_id: int) -> jax.Array:
    """x [B, T, D] embedded tokens; visual [B, N, n_tok, D] → x with the k-th placeholder of each row replaced by
    visual token k of the row's flattened [N·n_tok, D] visual tokens (image k // n_tok, token k % n_tok).

    Placeholders beyond N·n_tok reuse the last visual token (`check_placeholders` rejects such prompts on the host).
    """
    B, N, n_tok, D = visual.shape
    flat = visual.reshape(B, N * n_tok, D).astype(x.dtype)
    is_img = image_positions(tokens, image_token_id)
    index = jnp.clip(jnp.cumsum(is_img.astype(jnp.int32), axis=1) - 1, 0, N * n_tok - 1)  # [B, T]
    gathered = jnp.take_along_axis(flat, index[..., None], axis=1)  # [B, T, D]
    return jnp.where(is_img[..., None], gathered, x)


def image_target_mask(targets: jax.Array, image_token_id: int) -> jax.Array:
    """targets [B, T] → float32 [B, T]: 0 where the target is an image placeholder, else 1."""
    return jnp.asarray(targets != image_token_id, jnp.float32)


def mask_image_targets(targets, loss_mask, image_token_id: int):
    """loss_mask [B, T] (numpy or jax) with zeros where `targets` [B, T] is an image placeholder."""
    xp = jnp if isinstance(loss_mask, jax.Array) else np
    return loss_mask * xp.asarray(targets != image_token_id, loss_mask.dtype)


def ignore_image_labels(labels, tokens, image_token_id: int, ignore_index: int = IGNORE_INDEX):
    """Hugging Face form: labels [B, T] set to `ignore_index` where `tokens` [B, T] are image placeholders."""
    xp = jnp if isinstance(labels, jax.Array) else np
    return xp.where(tokens == image_token_id, ignore_index, labels)


def count_images(ids, image_token_id: int, n_tokens: int) -> int:
    """Number of images a token row holds (host side); raises ValueError unless the placeholders come in runs of
    exactly `n_tokens` (several runs may follow each other)."""
    row = np.asarray(ids)
    is_img = np.concatenate([[False], row == image_token_id, [False]])
    starts, ends = np.flatnonzero(is_img[1:] & ~is_img[:-1]), np.flatnonzero(~is_img[1:] & is_img[:-1])
    lengths = ends - starts
    if np.any(lengths % n_tokens):
        raise ValueError(f"image placeholder runs of lengths {lengths.tolist()} are not multiples of the "
                         f"{n_tokens} tokens an image contributes")
    return int(lengths.sum() // n_tokens)


def check_placeholders(tokens, image_token_id: int, n_tokens: int, n_images) -> None:
    """tokens [B, T] (numpy); n_images [B] (or an int for every row): raises ValueError when a row's placeholders do
    not make exactly its number of images."""
    tokens = np.asarray(tokens)
    want = np.broadcast_to(np.asarray(n_images), (tokens.shape[0],))
    for b, row in enumerate(tokens):
        got = count_images(row, image_token_id, n_tokens)
        if got != int(want[b]):
            raise ValueError(f"row {b}: the prompt holds {got} image placeholder(s) but {int(want[b])} image(s) were "
                             "given (write one <image> per image)")


def as_slots(images: Optional[jax.Array], has_image: Optional[jax.Array]):
    """images [B, H, W, 3] | [B, N, H, W, 3], has_image [B] | [B, N] | None → ([B, N, H, W, 3], [B, N] | None)."""
    if images is None:
        return None, has_image
    if images.ndim == 4:
        images = images[:, None]
        has_image = None if has_image is None else has_image[:, None]
    return images, has_image
