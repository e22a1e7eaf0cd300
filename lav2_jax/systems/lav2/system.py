"""LLaMA-Adapter V2 as a `System` (docs/design.md §1–§3; paper §4.1–4.4).

Visual front-end: the frozen CLIP tower, then the trainable connector (`connector.VisualConnector`), giving the
visual prompts [M, query_len, D] that the decoder gates into its first layers (early fusion) or adds to the
adapter prompts (official fusion). Prompt format: Alpaca for single prompts, the ``###`` chat template for chat
(`lav2_jax.core.templates`). Language-only models (no visual fusion, no splice) belong to this system too.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np

from lav2_jax.core import presets, templates
from lav2_jax.core.registry import register
from lav2_jax.core.system import System
from lav2_jax.data import images, samples
from lav2_jax.model.clip import CLIPVisionTower
from lav2_jax.systems.lav2 import commands
from lav2_jax.systems.lav2.connector import VisualConnector
from lav2_jax.systems.lav2.presets import ADAPTER_PRESETS, PRESET_RECIPES
from lav2_jax.systems.lav2.recipes import CONNECTOR, RECIPES


def clip_connector_tokens(adapter, vision, model, pixels: jax.Array) -> jax.Array:
    """pixels [M, H, W, 3] → visual prompts [M, query_len, D]: frozen CLIP tokens through the connector."""
    clip_tokens = jax.lax.stop_gradient(CLIPVisionTower(vision, name="clip")(pixels))
    return VisualConnector(adapter, model.dim, model.dtype, model.remat_policy, name="connector")(clip_tokens)


class LlamaAdapterV2(System):
    name = "lav2"
    title = "LLaMA-Adapter V2"
    adapter_presets = ADAPTER_PRESETS
    preset_recipes = PRESET_RECIPES
    recipes = {r.name: r for r in RECIPES}
    adapter_modules = (CONNECTOR,)
    converters = commands.CONVERTERS
    exporters = commands.EXPORTERS

    def visual_front_end(self, adapter):
        return clip_connector_tokens if adapter is not None and adapter.has_visual else None

    # ---- training ----
    def model_configs(self, mc, model):
        if mc.get("tiny_adapter", False):
            vis = presets.get_vision(mc.vision) if mc.get("vision") else presets.get_vision("tiny")
            adapter = presets.tiny_adapter(mc.adapter, model, vis)
        else:
            adapter = presets.get_adapter(mc.adapter)
        vision = presets.get_vision(mc.vision) if (adapter.has_visual and mc.get("vision")) else None
        return adapter, vision

    # ---- data ----
    def tokenize_record(self, tok, record, pick: int, cfg):
        """(Tokenized | None, number of images) of an Alpaca / conversation / caption record."""
        out = samples.tokenize(tok, samples.record_segments(record, pick), cfg.max_len)
        return out, int(bool(record.get("has_image", "captions" in record)))

    def record_images(self, record, n_images: int, cfg, rng, name: Optional[str]) -> dict:
        size = cfg.image_size
        if not n_images:
            return {"image": np.zeros((size, size, 3), np.float32)}
        if rng is not None:
            return {"image": images.augment(record["image"], rng, size, cfg.channel_order, name=name)}
        return {"image": images.preprocess(record["image"], size, cfg.channel_order, name=name)}

    # ---- prompts ----
    def instruction_prompt(self, adapter, instruction: str, input_text: Optional[str] = None, image=False) -> str:
        return templates.alpaca(instruction, input_text)

    def chat_prompt(self, adapter, turns: Sequence[tuple[str, str]], system: Optional[str] = None,
                    image=False) -> str:
        return templates.chat_prompt(turns, system)

    def chat_stop(self, adapter) -> str:
        return templates.CHAT_SEP

    def caption_prompt(self, adapter) -> str:
        return templates.caption_prompt()

    def from_alpaca(self, adapter, prompt_text: str, image=False) -> str:
        """Alpaca is this system's own format: unchanged."""
        return prompt_text


SYSTEM = register(LlamaAdapterV2())
