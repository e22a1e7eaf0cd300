"""The mPLUG-Owl model a training config describes (mPLUG-Owl paper §3; docs/design.md §5.1–5.4).

`config.model` fields of an Owl run (besides `preset`, `vision`, dtypes, remat of every run):

  system                    "owl"
  vision                    a vision preset (`lav2_jax.core.presets`; its CLIP eps is replaced by `owl.vision_eps`)
  owl.vision_eps            LayerNorm eps of the vision model (release 1e-6)
  owl.num_queries, owl.layers, owl.heads, owl.mlp_dim, owl.eps, owl.dropout
                            the abstractor (release 64, 6, 16, 2816, 1e-6, attention-prob dropout 0.1)
  owl.image_token_id        placeholder id the data pipeline writes (release −1; Q + 1 of them per `<image>`)
  vision_checkpoint         optional: a `lav2 convert clip --layout owl` checkpoint the vision model starts from
  lora.rank / alpha / dropout / targets   LoRA on the LLM (stage 2: r 8, alpha 32, 0.05 on wq, wv; rank 0: none)

`owl_configs(mc, model)` → (AdapterConfig with the Owl `splice`, VisionConfig with output_dim = width, no proj).
"""

from __future__ import annotations

import ml_collections

from lav2_jax.core import presets
from lav2_jax.core.config import AbstractorConfig, AdapterConfig, ModelConfig, VisionConfig
from lav2_jax.systems.owl.visual import OWL_IMAGE_TOKEN_ID, owl_splice

OWL_FIELDS = ("vision_eps", "num_queries", "layers", "heads", "mlp_dim", "eps", "dropout", "image_token_id")
LORA_FIELDS = ("rank", "alpha", "dropout", "targets")


def _checked(section, known: tuple, where: str) -> dict:
    d = dict(section or {})
    unknown = set(d) - set(known)
    if unknown:
        raise ValueError(f"config.model.{where} has unknown fields {sorted(unknown)}; known: {known}")
    return d


def owl_configs(mc, model: ModelConfig) -> tuple[AdapterConfig, VisionConfig]:
    """(adapter, vision) of an Owl run described by `config.model` (`mc`), for the language model `model`."""
    o = _checked(mc.get("owl"), OWL_FIELDS, "owl")
    base = presets.get_vision(mc.vision)
    vision = base.replace(output_dim=base.width, layer_norm_eps=float(o.get("vision_eps", 1e-6)),
                          remat_policy=model.remat_policy)  # the vision model trains in stage 1: remat it too
    if mc.get("weight_dtype"):
        vision = vision.replace(weight_dtype=mc.weight_dtype, dtype=mc.get("dtype") or mc.weight_dtype)
    abstractor = AbstractorConfig(num_queries=int(o.get("num_queries", 64)), layers=int(o.get("layers", 6)),
                                  width=vision.width, heads=int(o.get("heads", 16)),
                                  mlp_dim=int(o.get("mlp_dim", 2816)), layer_norm_eps=float(o.get("eps", 1e-6)),
                                  attention_dropout=float(o.get("dropout", 0.1)),
                                  remat_policy=model.remat_policy)
    splice = owl_splice(abstractor, image_token_id=int(o.get("image_token_id", OWL_IMAGE_TOKEN_ID)))
    lora = _checked(mc.get("lora"), LORA_FIELDS, "lora")
    rank = int(lora.get("rank", 0))
    adapter = presets.get_adapter("none").replace(
        splice=splice, lora_rank=rank, lora_alpha=float(lora["alpha"]) if lora.get("alpha") else None,
        lora_dropout=float(lora.get("dropout", 0.0)), lora_targets=tuple(lora.get("targets", ("wq", "wv"))))
    adapter.check(model)
    return adapter, vision


def add_owl_fields(c, *, lora_rank: int = 0, lora_alpha: float = 0.0, lora_dropout: float = 0.0,
                   lora_targets: tuple = ("wq", "wv"), num_queries: int = 64, layers: int = 6, heads: int = 16,
                   mlp_dim: int = 2816, dropout: float = 0.1, image_token_id: int = -1, vision_checkpoint: str = ""):
    """Adds the Owl fields above (and `data.template = ""`: Owl has one prompt format, the pipeline's `system`
    comes from the model, and "owl", what older configs wrote, is accepted too; square resize, no packing, the
    release's training augmentation `data.augment`, one image per sample `data.max_images`) to a `base_config()`."""
    c.model.system = "owl"
    c.model.owl = ml_collections.ConfigDict(dict(vision_eps=1e-6, num_queries=num_queries, layers=layers,
                                                 heads=heads, mlp_dim=mlp_dim, eps=1e-6, dropout=dropout,
                                                 image_token_id=image_token_id))
    c.model.lora = ml_collections.ConfigDict(dict(rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout,
                                                  targets=tuple(lora_targets)))
    c.model.vision_checkpoint = vision_checkpoint
    c.data.template = ""
    c.data.image_aspect = "square"
    c.data.packing = False  # one sample per row (right padding), as the release trains
    c.data.augment = True  # RandomResizedCrop(scale 0.5–1) + horizontal flip (`owl_samples.preprocess_image`)
    c.data.max_images = 1  # image slots per sample (several `Human: <image>` lines need more)
    return c
