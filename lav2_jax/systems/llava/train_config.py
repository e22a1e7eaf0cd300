"""The LLaVA model a training config describes (LLaVA paper §4.1; LLaVA-1.5; docs/design.md §4.1, §4.4).

`config.model` fields of a LLaVA run (besides `preset`, `vision`, dtypes, remat of every run):

  system                  "llava" (absent or "lav2": LLaMA-Adapter V2, `config.model.adapter`)
  splice.projector        linear | mlp2x_gelu
  splice.feature_layer    CLIP hidden state read (−2: the penultimate block, before ln_post)
  splice.select           patch (drop CLS) | cls_patch
  splice.image_token_id   the placeholder id the data pipeline writes (32000 for LLaMA's 32000-word vocabulary)
  lora.rank / alpha / dropout   LoRA on the seven LLM linears (rank 0: none); scale alpha/rank

`llava_configs(mc, model)` → (AdapterConfig with `splice`, VisionConfig without CLIP's projection). The number of
visual tokens per image follows from the tower: (image_size / patch)² (+1 with `cls_patch`), 576 at 336 px.
"""

from __future__ import annotations

import math
from typing import Optional

import ml_collections

from lav2_jax.core import presets
from lav2_jax.core.config import AdapterConfig, ModelConfig, SpliceConfig, VisionConfig
from lav2_jax.core.optim_group import group
from lav2_jax.systems.llava.projector import check_splice

SPLICE_FIELDS = ("projector", "feature_layer", "select", "image_token_id")


def llava_configs(mc, model: ModelConfig, vision: Optional[VisionConfig] = None) -> tuple[AdapterConfig,
                                                                                         VisionConfig]:
    """(adapter, vision) of a LLaVA run described by `config.model` (`mc`), for the language model `model`, over
    the tower `vision` (default: preset `mc.vision`; e.g. a `lav2 convert llava-base` checkpoint's tower)."""
    vision = (vision or presets.get_vision(mc.vision)).replace(output_dim=0)
    sp = dict(mc.get("splice", {}))
    unknown = set(sp) - set(SPLICE_FIELDS)
    if unknown:
        raise ValueError(f"config.model.splice has unknown fields {sorted(unknown)}; known: {SPLICE_FIELDS}")
    select = sp.get("select", "patch")
    splice = SpliceConfig(system="llava", n_tokens=vision.num_patches + (select != "patch"), **sp)
    check_splice(splice, vision)
    lora = dict(mc.get("lora", {}))
    rank = int(lora.get("rank", 0))
    adapter = presets.get_adapter("none").replace(
        splice=splice, lora_rank=rank, lora_alpha=float(lora["alpha"]) if lora.get("alpha") else None,
        lora_dropout=float(lora.get("dropout", 0.0)))
    adapter.check(model)
    return adapter, vision


def add_llava_fields(c, *, projector: str = "mlp2x_gelu", image_token_id: int = 32000, template: str = "vicuna_v1",
                     image_aspect: str = "pad", lora_rank: int = 0, lora_alpha: float = 0.0,
                     lora_dropout: float = 0.0, feature_layer: int = -2, select: str = "patch",
                     group_by_modality_length: bool = False):
    """Adds the LLaVA fields above (and `data.template`, `data.image_aspect`, `data.group_by_modality_length`) to
    a config from `base_config()`."""
    c.model.system = "llava"
    c.model.splice = ml_collections.ConfigDict(dict(projector=projector, feature_layer=feature_layer, select=select,
                                                    image_token_id=image_token_id))
    c.model.lora = ml_collections.ConfigDict(dict(rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout))
    c.data.template = template
    c.data.image_aspect = image_aspect
    c.data.packing = False  # one sample per row (right padding) as the release; packing: `lav2_jax.data.packing`
    c.data.group_by_modality_length = group_by_modality_length  # each global batch all-image or all-text
    return c


def llava_group(lr: float, total_steps: int, warmup_ratio: float = 0.03):
    """One optimizer group as LLaVA's Hugging Face Trainer runs it: AdamW β (0.9, 0.999), ε 1e-8, weight decay 0,
    lr not scaled by batch, warm-up ⌈ratio · steps⌉ then cosine to 0."""
    g = group(lr, 0.0, warmup_steps=math.ceil(warmup_ratio * total_steps), scale_lr_by_batch=False)
    g.b2 = 0.999
    return g
