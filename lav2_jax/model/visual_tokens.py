"""The visual tokens an image contributes to the language model, for every system, as a module of its own.

`VisualTokens(config, adapter, vision)(images [B, H, W, 3]) -> [B, n_tokens, D]` applies to the parameters of the
full `Transformer` (its submodules have the Transformer's top-level names, so `apply({"params": params}, ...)`
reads `clip/...`, `connector/...`, `mm_projector/...` from the same tree):

  lav2 (LLaMA-Adapter V2)   the connector's visual prompt tokens [B, query_len, D] (paper §4.3): CLIP tokens →
                            `lav2_jax.systems.lav2.connector`, before any gate or fusion
  llava / owl (spliced)     the tokens written over the prompt's image placeholders [B, splice.n_tokens, D]
                            (`lav2_jax.model.splice.visual_encoder`)
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax

from lav2_jax.core.config import AdapterConfig, ModelConfig, VisionConfig
from lav2_jax.model.clip import CLIPVisionTower
from lav2_jax.systems.lav2.connector import VisualConnector
from lav2_jax.model.splice import visual_encoder


class VisualTokens(nn.Module):
    config: ModelConfig
    adapter: AdapterConfig
    vision: Optional[VisionConfig] = None

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        c, a = self.config, self.adapter
        if self.vision is None:
            raise ValueError("VisualTokens: the model has no vision tower")
        if a.splice is not None:
            a.splice.check(self.vision)
            return visual_encoder(a.splice.system)(a.splice, self.vision, c, images)
        if not a.has_visual:
            raise ValueError("VisualTokens: a language-only adapter (visual_fusion='none') takes no images")
        clip_tokens = jax.lax.stop_gradient(CLIPVisionTower(self.vision, name="clip")(images))
        return VisualConnector(a, c.dim, c.dtype, c.remat_policy, name="connector")(clip_tokens)
