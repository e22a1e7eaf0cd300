"""mPLUG-Owl as a `System` (docs/design.md, mPLUG-Owl sections; mPLUG-Owl paper §3).

Visual front-end: the vision model and the visual abstractor (`visual.owl_visual_tokens`), 64 queries + `vit_eos`
spliced over the prompt's `<image>` placeholders. Prompt format: ``Human:`` / ``AI:`` (`templates`), each image on
its own ``Human: <image>`` line; several images per prompt.
"""

from __future__ import annotations

from typing import Optional, Sequence

from flax import traverse_util

from lav2_jax.core import templates as core_templates
from lav2_jax.core.registry import register
from lav2_jax.core.system import DataKind, System
from lav2_jax.systems.owl import clip_init, commands, samples, sources, templates
from lav2_jax.systems.owl.presets import ADAPTER_PRESETS, PRESET_RECIPES, PRESET_VISIONS
from lav2_jax.systems.owl.recipes import ABSTRACTOR, RECIPES
from lav2_jax.systems.owl.train_config import owl_configs
from lav2_jax.systems.owl.visual import owl_visual_tokens

CAPTION_QUESTION = "Describe the image briefly."


def abstractor_tokens(adapter, vision, model, pixels):
    """pixels [M, H, W, 3] → [M, num_queries + 1, D] (`visual.owl_visual_tokens`)."""
    return owl_visual_tokens(adapter.splice, vision, model, pixels)


class MplugOwl(System):
    name = "owl"
    title = "mPLUG-Owl"
    adapter_presets = ADAPTER_PRESETS
    preset_recipes = PRESET_RECIPES
    preset_visions = PRESET_VISIONS
    recipes = {r.name: r for r in RECIPES}
    adapter_modules = (ABSTRACTOR,)  # the vision model is a base weight, frozen in an adapter checkpoint
    converters = commands.CONVERTERS
    demo_stages = ("stage1", "stage2")  # configs/demo_owl.py
    max_images = None  # several `Human: <image>` lines per prompt
    spliced_samples = True
    data_kinds = {"owl": DataKind("mPLUG-Owl JSON / JSONL objects {text, image: [paths]}, stored as conversations",
                                  sources.owl_records)}

    def visual_front_end(self, adapter):
        return abstractor_tokens

    # ---- training ----
    def model_configs(self, mc, model):
        return owl_configs(mc, model)

    def pipeline_options(self, d, adapter) -> dict:
        s = adapter.splice
        return dict(image_tokens=s.n_tokens, image_token_id=s.image_token_id,
                    image_aspect=d.get("image_aspect", "square"), augment=bool(d.get("augment", True)),
                    max_images=int(d.get("max_images", 1)))

    # ---- data ----
    def check_pipeline(self, cfg) -> None:
        """One format; `template="owl"` (what configs wrote before `PipelineConfig.system`) names it too."""
        if cfg.template not in ("", "owl"):
            raise ValueError(f"PipelineConfig.template={cfg.template!r}: mPLUG-Owl has one prompt format "
                             "(template '')")

    def tokenize_record(self, tok, record, pick: int, cfg):
        """More images than the batch has slots for: dropped (None), counted by the pipeline."""
        return samples.tokenize_sample(tok, record, pick, cfg.max_len, cfg.image_tokens, cfg.image_token_id,
                                       cfg.max_images)

    def record_images(self, record, n_images: int, cfg, rng, name: Optional[str]) -> dict:
        """`images` [k, H, W, 3] (image j fills the j-th placeholder run) and `image` (the first, or zeros)."""
        return samples.sample_images(record, n_images, cfg.image_size, rng, cfg.channel_order, name)

    # ---- demo ----
    def vision_from_clip(self, clip, model, keys) -> dict:
        """`owl_vision/...`: the tower in Owl's vision layout (`clip_init.clip_to_owl_vision`)."""
        tree = clip_init.clip_to_owl_vision(clip, model.vision.heads)
        return {("owl_vision",) + k: v for k, v in traverse_util.flatten_dict(tree).items()}

    # ---- prompts ----
    def instruction_prompt(self, adapter, instruction: str, input_text: Optional[str] = None, image=False) -> str:
        question = core_templates.question_with_input(instruction, input_text)
        return templates.prompt(question, image=image)

    def chat_prompt(self, adapter, turns: Sequence[tuple[str, str]], system: Optional[str] = None,
                    image=False) -> str:
        turns = list(turns)
        return templates.prompt(turns[-1][1], image=image, history=turns[:-1], system=system)

    def chat_stop(self, adapter) -> str:
        return templates.STOP_STRINGS[0]

    def caption_prompt(self, adapter) -> str:
        return templates.prompt(CAPTION_QUESTION, image=True)



SYSTEM = register(MplugOwl())
