"""LLaVA as a `System` (docs/design.md, LLaVA sections; LLaVA paper §4, LLaVA-1.5).

Visual front-end: CLIP hidden state `splice.feature_layer` through the projector (`projector.llava_visual_tokens`),
spliced over the prompt's `<image>` placeholders. Prompt format: the `vicuna_v1` conversation template
(`conversation`), the image at the front of the first human turn, replies ending at ``</s>``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from lav2_jax.core import templates
from lav2_jax.core.registry import register
from lav2_jax.core.system import HFExport, System
from lav2_jax.systems.llava import commands, conversation, export, samples
from lav2_jax.systems.llava.presets import ADAPTER_PRESETS, PRESET_RECIPES, PRESET_VISIONS
from lav2_jax.systems.llava.projector import check_splice, llava_visual_tokens
from lav2_jax.systems.llava.recipes import PROJECTOR, RECIPES
from lav2_jax.systems.llava.train_config import llava_configs

TEMPLATE = "vicuna_v1"
CAPTION_QUESTION = "Provide a one-sentence caption for the provided image."


def projector_tokens(adapter, vision, model, pixels):
    """pixels [M, H, W, 3] → [M, n_tokens, D] (`projector.llava_visual_tokens`)."""
    return llava_visual_tokens(adapter.splice, vision, model, pixels)


def _prompt(turns, image, system: Optional[str] = None) -> str:
    return conversation.prompt(TEMPLATE, list(turns), 0 if image else -1, system)


class Llava(System):
    name = "llava"
    title = "LLaVA"
    adapter_presets = ADAPTER_PRESETS
    preset_recipes = PRESET_RECIPES
    preset_visions = PRESET_VISIONS
    recipes = {r.name: r for r in RECIPES}
    adapter_modules = (PROJECTOR,)
    converters = commands.CONVERTERS
    spliced_samples = True
    demo_stages = ("stage1", "stage2")  # configs/demo_llava.py

    def visual_front_end(self, adapter):
        return projector_tokens

    def check_configs(self, adapter, vision) -> None:
        """The tower must have `feature_layer` and give `n_tokens` tokens per image (`projector.check_splice`)."""
        if vision is not None:
            check_splice(adapter.splice, vision)

    # ---- training ----
    def model_configs(self, mc, model):
        return llava_configs(mc, model)

    def configs_over_base(self, mc, model, base, adapter, vision):
        if base.adapter is not None and base.adapter.splice is not None:  # a converted LLaVA, a stage-1 export
            return adapter.replace(splice=base.adapter.splice), base.vision or vision
        if base.vision is None:  # LM + CLIP (`lav2 convert llava-base`) is the only other base LLaVA starts from
            raise ValueError(f"{mc.base_checkpoint}: holds no vision tower for LLaVA; combine the language model "
                             "with a CLIP checkpoint first (lav2 convert llava-base --llm ... --clip ...)")
        return llava_configs(mc, model, base.vision)

    def pipeline_options(self, d, adapter) -> dict:
        if not d.get("template"):
            raise ValueError("a LLaVA model needs config.data.template (plain, vicuna_v1, llava_v1 or v0)")
        s = adapter.splice
        return dict(template=d.template, image_tokens=s.n_tokens, image_token_id=s.image_token_id,
                    image_aspect=d.get("image_aspect", "square"), augment=False,
                    max_images=int(d.get("max_images", 1)))

    # ---- data ----
    def check_pipeline(self, cfg) -> None:
        if not cfg.template:
            raise ValueError(f"a LLaVA pipeline needs PipelineConfig.template ({', '.join(conversation.TEMPLATES)})")
        conversation.check_template(cfg.template)

    def data_template(self, adapter, kind: str) -> str:
        """Caption data: `plain` (stage 1); instruction and conversation data: the prompt template."""
        return "plain" if kind == "caption" else TEMPLATE

    def tokenize_record(self, tok, record, pick: int, cfg):
        out = samples.tokenize_record(tok, record, cfg.template, pick, cfg.max_len, cfg.image_tokens,
                                      cfg.image_token_id)
        return out, int(out is not None and bool((out.tokens == cfg.image_token_id).any()))

    def record_images(self, record, n_images: int, cfg, rng, name: Optional[str]) -> dict:
        size = cfg.image_size
        if not n_images:
            return {"image": np.zeros((size, size, 3), np.float32)}
        return {"image": samples.preprocess_image(record["image"], size, cfg.image_aspect, cfg.channel_order,
                                                  name=name)}

    # ---- checkpoints ----
    def hf_export(self, adapter, where: str) -> HFExport:
        """`LlavaForConditionalGeneration` (`export`): the Llama under `language_model.`, the tower, the projector."""
        export.check_exportable(adapter, where)
        return HFExport(export.LANGUAGE_PREFIX, export.llava_config, export.tensor_parts)

    # ---- prompts ----
    def instruction_prompt(self, adapter, instruction: str, input_text: Optional[str] = None, image=False) -> str:
        question = templates.question_with_input(instruction, input_text)
        return _prompt([("human", question)], image)

    def chat_prompt(self, adapter, turns: Sequence[tuple[str, str]], system: Optional[str] = None,
                    image=False) -> str:
        return _prompt(turns, image, system)

    def chat_stop(self, adapter) -> str:
        return conversation.stop_strings(TEMPLATE)[0]

    def caption_prompt(self, adapter) -> str:
        return _prompt([("human", CAPTION_QUESTION)], True)



SYSTEM = register(Llava())
