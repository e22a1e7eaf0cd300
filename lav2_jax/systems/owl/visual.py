"""mPLUG-Owl's visual path (docs/design.md §5; mPLUG-Owl paper §3 "Architecture").

`owl_visual_tokens(splice, vision, model, images [M, H, W, 3]) -> [M, Q + 1, D]` (the visual encoder of
`lav2_jax.model.splice` for system `owl`):

  f = OwlVisionModel(images)                 [M, T, W]   every token, post-layernormed (`lav2_jax.systems.owl.vision`)
  y = VisualAbstractor(f)                    [M, Q + 1, D]  queries + `vit_eos` (`lav2_jax.systems.owl.abstractor`)

The Q + 1 tokens overwrite the `splice.n_tokens` (= Q + 1, 65 in the release) placeholder ids of each `<image>`, in
place (the sequence length does not change). The vision model is *not* stop-gradiented: Owl stage 1 trains it;
whether a leaf trains is the recipe's decision (`lav2_jax.core.param_groups`).

Parameter tree: `owl_vision/...` (the vision model) and `abstractor/...` (the abstractor), top-level.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lav2_jax.core.config import AbstractorConfig, ModelConfig, SpliceConfig, VisionConfig
from lav2_jax.systems.owl.abstractor import VisualAbstractor
from lav2_jax.model.clip import ACT_AXES
from lav2_jax.model.common import constrain
from lav2_jax.systems.owl.vision import OwlVisionModel

OWL_IMAGE_TOKEN_ID = -1  # the release's placeholder id (`processing_mplug_owl`: 65 ids −1 per `<image>`)


def owl_splice(abstractor: AbstractorConfig = AbstractorConfig(), max_images: int = 1,
               image_token_id: int = OWL_IMAGE_TOKEN_ID) -> SpliceConfig:
    """The SpliceConfig of mPLUG-Owl: every vision token feeds the abstractor, Q + 1 tokens per image."""
    return SpliceConfig(system="owl", image_token_id=image_token_id, select="all", projector="none",
                        n_tokens=abstractor.num_tokens, max_images=max_images, abstractor=abstractor)


def check_owl(splice: SpliceConfig, vision: VisionConfig) -> None:
    """Raises unless the splice config describes an Owl abstractor that fits `vision`."""
    a = splice.abstractor
    if a is None:
        raise ValueError("SpliceConfig(system='owl') needs an `abstractor` (AbstractorConfig)")
    if splice.n_tokens != a.num_tokens:
        raise ValueError(f"SpliceConfig.n_tokens={splice.n_tokens} but the abstractor gives {a.num_queries} queries "
                         f"+ vit_eos = {a.num_tokens} tokens per image")
    if a.width != vision.width:
        raise ValueError(f"AbstractorConfig.width={a.width} must equal the vision width {vision.width}")


def owl_visual_tokens(splice: SpliceConfig, vision: VisionConfig, model: ModelConfig, images: jax.Array):
    """images [M, H, W, 3] CLIP-normalised → visual tokens [M, splice.n_tokens, model.dim] in `model.dtype`.

    Called inside the Transformer's compact scope: the submodules are its top-level `owl_vision` / `abstractor`.
    """
    check_owl(splice, vision)
    features = OwlVisionModel(vision, name="owl_vision")(images)
    tokens = VisualAbstractor(splice.abstractor, model.dim, model.dtype, name="abstractor")(features)
    return constrain(tokens.astype(jnp.dtype(model.dtype)), ACT_AXES)
