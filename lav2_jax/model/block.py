"""One pre-norm decoder layer (docs/design.md §2.1): `h = x + attn(norm(x))`, `out = h + ffn(norm(h))`.

Written for `nn.scan`: `__call__((x, cache), layer_in, shared)` where `layer_in` holds this layer's slice of the
stacked per-layer inputs (its index, prompt tokens, flags, gates) and `shared` the inputs every layer sees
(positions, visual tokens). The KV cache travels in the carry, whole: each layer updates its own slots in place,
so a decode step never copies the cache. Returns `((x, cache), None)`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lav2_jax.core.config import AdapterConfig, ModelConfig
from lav2_jax.model.attention import Attention
from lav2_jax.model.common import constrain, tag
from lav2_jax.model.ffn import FeedForward
from lav2_jax.model.norms import RMSNorm

ACT = ("act_batch", "act_length", "act_embed")


class DecoderBlock(nn.Module):
    """x [B, T, D] → [B, T, D].

    layer_in: index (this layer's int32 index), adapter_prompt [P, D] (raw adapter prompt of this layer, zeros where
      it has none), adapter_on scalar, visual_gate [N], visual_on scalar (layer < K) — each but index optional.
    shared: positions [B, T]; visual [B, Pv, D] visual tokens and has_image [B] when present; packed rows add
      segment_ids [B, T] and, with per-segment images, visual_segments [B, Pv] (`lav2_jax.model.segments`: visual
      holds every segment's tokens back to back; official fusion tiles the adapter prompt once per segment).
    """

    config: ModelConfig
    adapter: AdapterConfig
    decode: bool = False

    @nn.compact
    def __call__(self, carry: tuple, layer_in: dict, shared: dict):
        c, a = self.config, self.adapter
        x, cache = carry
        norm = lambda name: RMSNorm(c.norm_eps, a.norm_tuning, c.weight_dtype, c.dtype, name=name)  # noqa: E731
        prompts = {}
        if a.has_prompts:
            prompts["adapter_on"] = layer_in["adapter_on"]
            if not self.decode:
                tokens = layer_in["adapter_prompt"][None]  # [1, P, D]
                if a.visual_fusion == "official" and "visual" in shared:
                    if "visual_segments" in shared:  # one adapter prompt per segment, each + its own image
                        tokens = jnp.tile(tokens, (1, shared["visual"].shape[1] // tokens.shape[1], 1))
                        prompts["adapter_segments"] = shared["visual_segments"]
                    tokens = tokens + shared["visual"]  # [B, P, D]: visual tokens added to the adapter prompts
                prompts["adapter"] = tokens
        if "visual_on" in shared:  # early fusion with visual prompts in this call
            prompts["visual_gate"] = layer_in["visual_gate"]
            prompts["visual_on"] = layer_in["visual_on"] * shared["visual_on"]
            if not self.decode:
                prompts["visual"] = shared["visual"]
                if "visual_segments" in shared:
                    prompts["visual_segments"] = shared["visual_segments"]

        x = constrain(x, ACT)
        attn, new_cache = Attention(c, a, self.decode, name="attention")(
            norm("attention_norm")(x), shared["positions"], prompts, cache, layer_in["index"],
            segment_ids=shared.get("segment_ids"))
        h = x + attn
        out = h + FeedForward(c, a, name="feed_forward")(norm("ffn_norm")(h))
        return (tag(constrain(out, ACT), "block_out"), new_cache), None
