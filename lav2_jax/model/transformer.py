"""The LLaMA-Adapter V2 language model (docs/design.md §2–3; paper §4.1–4.3) as one Flax Linen module.

Parameter tree (layer parameters stacked on a leading `n_layers` axis by `nn.scan`; torch [out, in] weights are
stored transposed as [in, out] kernels):
  tok_embeddings/embedding            [V, D]     frozen
  layers/attention_norm/scale         [L, D]     trainable with norm tuning
  layers/attention/w{q,k,v,o}/kernel  [L, in, out] frozen; /bias, /scale, /lora_a, /lora_b per adapter placement
  layers/attention/gate               [L, N]     adapter-prompt gate (prompted models; every layer, like the release)
  layers/attention/new_gate           [L, 1]     LoRA checkpoints
  layers/ffn_norm/scale               [L, D]
  layers/feed_forward/w{1,2,3}/...    as the attention linears
  norm/scale                          [D]
  output/kernel                       [D, V]     frozen, untied
  adapter_query                       [Lp, P, D] adapter prompts of the last Lp = prompt_layers layers
  visual_gate                         [K, N]     early fusion: gates of the visual prompts in the first K layers
  clip/..., connector/...             LLaMA-Adapter V2's visual front-end (frozen CLIP ViT, trainable connector)
  mm_projector/..., owl_vision/...    spliced systems' front-ends (`adapter.splice`, lav2_jax.model.splice): visual
                                      tokens written over the prompt's image placeholders after the embedding

The visual front-end is the `front_end` field (a `lav2_jax.core.system.VisualFrontEnd`, filled by
`lav2_jax.model.factory.build_model` from the adapter's system); the submodules it creates are the top-level
subtrees above (`clip/`, `connector/`, `mm_projector/`, `owl_vision/`, `abstractor/`).

With `ModelConfig.scan_layers=False` the layer parameters are `layers_0 … layers_{L-1}` instead (the same per-layer
trees, unstacked; `factory.unstack_layers` converts). Layers with and without prompts share one scanned
structure: the adapter prompts are zero-padded to all layers and a per-layer 0/1 flag multiplies the gated prompt
output (layer i has prompts iff i >= n_layers - Lp; visual prompts iff i < K in early fusion). The prompt path of
an unprompted layer costs ~P/T of its attention and contributes exactly zero.
"""

from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lav2_jax.core.config import AdapterConfig, ModelConfig, VisionConfig
from lav2_jax.model import splice
from lav2_jax.model.adapted_dense import AdaptedDense
from lav2_jax.model.block import DecoderBlock
from lav2_jax.model.common import as_dtype, constrain, frozen_param, maybe_remat, scan_layers, trainable_param
from lav2_jax.model.norms import RMSNorm
from lav2_jax.model.segments import flatten_segment_prompts, segment_positions


class Embedding(nn.Module):
    """tokens [B, T] int → [B, T, D]; parameter `embedding` [V, D] frozen."""

    vocab_size: int
    dim: int
    weight_dtype: str = "float32"
    dtype: str = "float32"

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        table = frozen_param(self, "embedding", nn.initializers.normal(1.0), (self.vocab_size, self.dim),
                             ("vocab", "embed"), self.weight_dtype)
        return jnp.take(table, tokens, axis=0).astype(as_dtype(self.dtype))


class Transformer(nn.Module):
    """tokens [B, T] int32 → logits [B, T, V] float32 (or `(logits, cache)` when a cache is given).

    Visual input, when the adapter has a visual fusion mode: `images` [B, H, W, 3] normalised with `has_image` [B]
    (encoded by `front_end`, the frozen CLIP tower and the connector, when `vision` is configured), or
    `visual_tokens` [B, Q, D] fed directly. Early fusion: rows with `has_image` False get no visual prompts.
    Official fusion: the visual tokens are added to every prompted layer's adapter prompts.
    `positions` [B, T] default to 0..T-1 (required with a cache). `decode=True` runs one cached step.
    `return_hidden=True` returns the final-normed hidden states [B, T, D] instead of logits.
    Packed rows (`lav2_jax.model.segments`): `segment_ids` [B, T] (1..S, 0 = padding) keep attention inside each
    segment; positions then default to restarting at every segment; `images` [B, S, H, W, 3] with `has_image`
    [B, S] give segment s its own image (slot s-1), which conditions that segment's tokens only. No cache.
    """

    config: ModelConfig
    adapter: AdapterConfig
    vision: Optional[VisionConfig] = None
    front_end: Optional[Callable] = None  # a VisualFrontEnd: images [M, H, W, 3] → visual tokens [M, n, D]

    @nn.compact
    def __call__(self, tokens: jax.Array, images: Optional[jax.Array] = None, has_image: Optional[jax.Array] = None,
                 *, visual_tokens: Optional[jax.Array] = None, positions: Optional[jax.Array] = None,
                 cache: Optional[dict] = None, decode: bool = False, return_hidden: bool = False,
                 segment_ids: Optional[jax.Array] = None):
        c, a = self.config, self.adapter
        a.check(c)
        B, T = tokens.shape
        n = c.n_layers
        if segment_ids is not None:
            if cache is not None:
                raise ValueError("Transformer: packed rows (`segment_ids`) are for training and scoring, not caches")
            positions = segment_positions(segment_ids) if positions is None else positions
        if positions is None:
            if cache is not None:
                raise ValueError("Transformer: `positions` [B, T] are required when a cache is given")
            positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        if decode and cache is None:
            raise ValueError("Transformer: decode=True needs a cache (see lav2_jax.model.kv_cache.init_cache)")

        ids = tokens if a.splice is None else splice.embed_ids(tokens, a.splice.image_token_id)
        x = Embedding(c.vocab_size, c.dim, c.weight_dtype, c.dtype, name="tok_embeddings")(ids)
        if a.splice is not None and not decode:  # LLaVA / mPLUG-Owl: visual tokens at the image placeholders
            x = self._splice_visual(x, tokens, images, visual_tokens)
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        layer_idx = np.arange(n)
        layer_in: dict = {"index": jnp.arange(n, dtype=jnp.int32)}
        shared: dict = {"positions": positions}
        if segment_ids is not None:
            shared["segment_ids"] = segment_ids

        if a.has_prompts:
            query = trainable_param(self, "adapter_query", nn.initializers.normal(1.0),
                                    (a.prompt_layers, a.prompt_len, c.dim), ("layers", "prompt", "adapter_embed"))
            layer_in["adapter_on"] = jnp.asarray(layer_idx >= n - a.prompt_layers, jnp.float32)
            if not decode:
                pad = jnp.zeros((n - a.prompt_layers, a.prompt_len, c.dim), query.dtype)
                layer_in["adapter_prompt"] = jnp.concatenate([pad, query], axis=0).astype(as_dtype(c.dtype))

        if a.has_visual and not decode:
            if visual_tokens is None and images is not None and images.ndim == 5:  # packed: one image per segment
                S = images.shape[1]
                per_image = self._encode_images(images.reshape((B * S,) + images.shape[2:]), has_image.reshape(-1),
                                                B * S)
                visual_tokens, shared["visual_segments"] = flatten_segment_prompts(
                    per_image.reshape((B, S) + per_image.shape[1:]), has_image if a.visual_fusion == "early" else None)
                has_image = has_image.any(axis=1)
            if visual_tokens is None:
                visual_tokens = self._encode_images(images, has_image, B)
            if visual_tokens is not None:
                if visual_tokens.shape[0] != B:
                    raise ValueError(f"Transformer: visual tokens batch {visual_tokens.shape[0]} != tokens batch {B}")
                shared["visual"] = visual_tokens.astype(as_dtype(c.dtype))
                if a.visual_fusion == "early":
                    on = jnp.ones((B,), jnp.float32) if has_image is None else has_image.astype(jnp.float32)
                    shared["visual_on"] = on
        elif a.visual_fusion == "early" and decode and "visual_on" in cache:
            shared["visual_on"] = cache["visual_on"]

        if a.visual_fusion == "early":
            gate = trainable_param(self, "visual_gate", nn.initializers.zeros, (a.early_layers, c.n_heads),
                                   ("layers", None))
            if "visual_on" in shared:
                pad = jnp.zeros((n - a.early_layers, c.n_heads), gate.dtype)
                layer_in["visual_gate"] = jnp.concatenate([gate, pad], axis=0)
                layer_in["visual_on"] = jnp.asarray(layer_idx < a.early_layers, jnp.float32)

        if cache is not None:
            if "visual_on" in shared and "visual_k" not in cache["layers"]:
                raise ValueError("Transformer: early-fusion images need a cache made with init_cache(with_visual=True)")

        carry = (x, None if cache is None else cache["layers"])
        if c.scan_layers:
            blocks = scan_layers(maybe_remat(DecoderBlock, c.remat_policy), n, in_axes=(0, nn.broadcast))
            carry, _ = blocks(c, a, decode, name="layers")(carry, layer_in, shared)
        else:  # one module per layer, `layers_{i}`: the same blocks unrolled over unstacked weights
            block = maybe_remat(DecoderBlock, c.remat_policy)
            for i in range(n):
                layer_i = jax.tree_util.tree_map(lambda v: v[i], layer_in)
                carry, _ = block(c, a, decode, name=f"layers_{i}")(carry, layer_i, shared)
        x, layer_cache = carry
        x = RMSNorm(c.norm_eps, a.norm_tuning, c.weight_dtype, c.dtype, name="norm")(x)

        out = x if return_hidden else AdaptedDense(
            c.vocab_size, ("embed", "vocab"), weight_dtype=c.weight_dtype, dtype=c.dtype, name="output")(x)
        out = out.astype(jnp.float32)
        if cache is None:
            return out
        new_cache = {"layers": layer_cache}
        if "visual_on" in cache:
            new_cache["visual_on"] = shared.get("visual_on", cache["visual_on"])
        return out, new_cache

    def _splice_visual(self, x: jax.Array, tokens: jax.Array, images: Optional[jax.Array],
                       visual_tokens: Optional[jax.Array]) -> jax.Array:
        """Spliced systems (`lav2_jax.model.splice`): images [B, N, H, W, 3] | [B, H, W, 3] or visual_tokens
        [B, N, n_tok, D] | [B, n_tok, D] → x [B, T, D] with the visual tokens at the image placeholders."""
        s = self.adapter.splice
        if visual_tokens is None:
            images, _ = splice.as_slots(images, None)
            if images is None:
                return x  # a text-only call: the rows hold no placeholders
            self._check_front_end()
            b, n = images.shape[:2]
            visual_tokens = self.front_end(self.adapter, self.vision, self.config,
                                           images.reshape((b * n,) + images.shape[2:]))
            visual_tokens = visual_tokens.reshape((b, n) + visual_tokens.shape[1:])
        elif visual_tokens.ndim == 3:
            visual_tokens = visual_tokens[:, None]
        return splice.splice_visual(x, tokens, visual_tokens, s.image_token_id)

    def _check_front_end(self) -> None:
        if self.vision is None:
            raise ValueError("Transformer: images were given but no vision tower is configured "
                             "(build the model with a VisionConfig, or pass visual_tokens)")
        if self.front_end is None:
            raise ValueError(f"Transformer: images were given but the model has no visual front-end (system "
                             f"{self.adapter.system!r}; build it with lav2_jax.model.factory.build_model)")

    def _encode_images(self, images: Optional[jax.Array], has_image: Optional[jax.Array], batch: int):
        """images [B, H, W, 3] → visual prompts [B, Q, D] through `front_end` (CLIP tower and connector).

        Official fusion: rows without an image (and image-less calls) see an all-zero image, as in the release.
        Early fusion: returns None without images (those rows get no visual prompts at all).
        """
        a = self.adapter
        if images is None:
            if self.vision is None or a.visual_fusion != "official":
                return None
            size = self.vision.image_size
            images = jnp.zeros((1, size, size, 3), jnp.float32)
        elif a.visual_fusion == "official" and has_image is not None:
            images = jnp.where(has_image[:, None, None, None], images, 0.0)
        self._check_front_end()
        tokens = self.front_end(a, self.vision, self.config, images)
        return jnp.broadcast_to(tokens, (batch,) + tokens.shape[1:])
