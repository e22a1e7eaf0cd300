"""The visual tokens an image contributes to the language model, for every system, as a module of its own.

`VisualTokens.of(model)(images [B, H, W, 3]) -> [B, n_tokens, D]` applies to the parameters of the full
`Transformer` `model`: it runs the model's visual front-end (`Transformer.front_end`, a
`lav2_jax.core.system.VisualFrontEnd`), whose submodules have the Transformer's top-level names, so
`apply({"params": params}, ...)` reads `clip/...`, `connector/...`, `mm_projector/...` from the same tree:

  LLaMA-Adapter V2    the connector's visual prompt tokens [B, query_len, D] (paper §4.3), before any gate or fusion
  spliced systems     the tokens written over the prompt's image placeholders [B, splice.n_tokens, D]
                      (`lav2_jax.model.splice`)
"""

from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import jax

from lav2_jax.core.config import AdapterConfig, ModelConfig, VisionConfig


class VisualTokens(nn.Module):
    config: ModelConfig
    adapter: AdapterConfig
    vision: Optional[VisionConfig] = None
    front_end: Optional[Callable] = None  # the Transformer's VisualFrontEnd

    @classmethod
    def of(cls, model) -> "VisualTokens":
        """The VisualTokens of a Transformer (its configs and visual front-end)."""
        return cls(model.config, model.adapter, model.vision, model.front_end)

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        if self.vision is None:
            raise ValueError("VisualTokens: the model has no vision tower")
        if self.front_end is None:
            raise ValueError("VisualTokens: a language-only model (no visual front-end) takes no images")
        return self.front_end(self.adapter, self.vision, self.config, images)
