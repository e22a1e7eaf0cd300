"""`System`: what the generic layers ask of a system (docs/design.md, "Package layout and layering").

A system package (`lav2_jax/systems/<name>/system.py`) subclasses `System`, fills in the hooks it has and calls
`lav2_jax.core.registry.register(MySystem())`. The hooks, by the layer that calls them:

model        `visual_front_end(adapter)`: the function that turns images into visual tokens inside the
             Transformer's compact scope (`VisualFrontEnd`); `check_configs(adapter, vision)`: the system's own
             config checks; `adapter_presets`: named AdapterConfigs, with `preset_visions` (their vision presets)
             and `preset_recipes` (the recipes `lav2 info` counts on each)
training     `recipes`: named parameter-group rules (`lav2_jax.core.recipe.Recipe`); `adapter_modules`: the
             system's own trainable modules (what a checkpoint's adapter item holds besides the language model's
             adapters: recipe `all-adapters`); `model_configs`,
             `configs_over_base`: (AdapterConfig, VisionConfig) from a training config's `model` section;
             `pipeline_options`: the data pipeline's fields for this system
data         `tokenize_record`, `record_images`: one dataset record → a training sample; `check_pipeline`: a
             `PipelineConfig`'s system fields; `spliced_samples`: samples hold placeholder ids per image;
             `data_kinds`: the system's own source formats (`lav2 data build --kind KIND`); `data_template`:
             the template a dataset kind is read with when no config names one (`lav2 eval loss`)
inference    `instruction_prompt`, `chat_prompt`, `chat_stop`, `caption_prompt`, `from_alpaca`: the system's
             prompt format; `max_images`: images one prompt may hold
checkpoints  `converters` (`lav2 convert SOURCE`; a source `clip-NAME` is also `lav2 convert clip --layout
             NAME`), `exporters` (`lav2 export FORMAT`), `hf_export` (`lav2 export hf` of a spliced model)
demo         `demo_stages` (`lav2 demo --systems`), `vision_from_clip`: the vision leaves from a CLIP tower

Defaults describe a system without that feature (no visual front-end, no recipes, no converters, one image per
prompt); the prompt hooks have no default, since every system has a prompt format.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Protocol, Sequence

from lav2_jax.core import templates
from lav2_jax.core.recipe import Recipe

if TYPE_CHECKING:  # annotations only: the registry (hence `lav2 --help`) imports this module, and stays free of jax
    import jax


class VisualFrontEnd(Protocol):
    """`encode(adapter, vision, model, images [M, H, W, 3]) -> [M, n_tokens, D]` in `model.dtype`.

    Called inside the Transformer's compact scope, so the submodules it creates with fixed names are top-level
    parameters of the Transformer (e.g. `clip/...`, `connector/...`, `mm_projector/...`). Frozen towers apply
    `jax.lax.stop_gradient` to their output themselves. Dropout may use the `dropout` rng when present.
    """

    def __call__(self, adapter, vision, model, images: jax.Array) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class Converter:
    """One `lav2 convert SOURCE`: `add_arguments(parser)` adds its own flags (the CLI adds --out, --weight-dtype,
    --overwrite to every source), `run(args, weight_dtype=..., overwrite=...)` converts and returns the output
    directory."""

    help: str
    add_arguments: Callable[[Any], None]
    run: Callable[..., str]
    default_weight_dtype: Optional[str] = "bfloat16"
    dtype_help: str = "default bfloat16"


@dataclasses.dataclass(frozen=True)
class DataKind:
    """One `lav2 data build --kind KIND` of a system: `parse(path, **options)` yields the `lav2_jax.data.sources`
    items of one source file (a module-level function: the builder's worker processes look it up by kind),
    stored as the builder's kind `stored_as` (`instruction`, `conversation` or `caption`); `--src` folders are
    searched for `patterns`; `image_root`: `--image-root` is passed on as the `image_root` option."""

    help: str
    parse: Callable[..., Any]
    stored_as: str = "conversation"
    patterns: tuple[str, ...] = ("*.json", "*.jsonl")
    image_root: bool = True


@dataclasses.dataclass(frozen=True)
class HFExport:
    """The system's parts of `lav2 export hf` (a spliced model): the Llama goes under `prefix`, `config(text_config,
    model)` wraps the exported `LlamaConfig` in the system's transformers config, and `parts(read, keys, model, t)`
    gives callables that each return one safetensors file's tensors (`read`/`keys`: the checkpoint reader of
    `lav2_jax.checkpoint.pretrained.checkpoint_reader`; `t`: numpy → torch in the export dtype)."""

    prefix: str
    config: Callable[[Any, Any], Any]
    parts: Callable[..., list]


@dataclasses.dataclass(frozen=True)
class Exporter:
    """One `lav2 export FORMAT`: `run(ckpt, out, overwrite=...)` writes the export and returns its path."""

    help: str
    run: Callable[..., str]


class System:
    """Base class of every system (see the module docstring for the hooks)."""

    name: str = ""
    title: str = ""
    adapter_presets: Mapping[str, Any] = {}
    # `lav2 info --adapter P` (and `--system NAME`, over every preset listed): the recipes counted on preset P, and
    # the vision preset P is built with (`lav2_jax.core.presets.default_vision`; default `vit-l-14`)
    preset_recipes: Mapping[str, tuple[str, ...]] = {}
    preset_visions: Mapping[str, str] = {}
    recipes: Mapping[str, Recipe] = {}
    # regexes over `/`-joined parameter paths of the system's own trainable modules (e.g. LLaVA `^mm_projector/`):
    # recipe `all-adapters` (`Recipe.system_modules`) trains them, so a checkpoint's adapter item holds them
    adapter_modules: tuple[str, ...] = ()
    converters: Mapping[str, Converter] = {}
    exporters: Mapping[str, Exporter] = {}
    max_images: Optional[int] = 1  # images one prompt / sample may hold (None: no limit)
    spliced_samples: bool = False  # pipeline samples hold `image_tokens` placeholder ids per image
    data_kinds: Mapping[str, DataKind] = {}
    demo_stages: tuple[str, ...] = ()  # `lav2 demo --systems`: configs/demo_<name>.py's stages; (): configs/demo.py

    def __repr__(self) -> str:
        return f"<System {self.name}>"

    # ---- model ----
    def visual_front_end(self, adapter) -> Optional[VisualFrontEnd]:
        """The visual front-end of `adapter`'s model, or None for a language-only one."""
        return None

    def check_configs(self, adapter, vision) -> None:
        """Raises ValueError when `adapter` (an AdapterConfig of this system) does not fit the vision tower `vision`
        (a VisionConfig or None); `lav2_jax.model.factory.build_model` calls it. Default: nothing to check."""

    # ---- training ----
    def model_configs(self, mc, model) -> tuple:
        """(AdapterConfig, VisionConfig | None) of a training config's `model` section `mc` for the language model
        `model` (a ModelConfig)."""
        raise ValueError(f"system {self.name!r} has no training configs")

    def configs_over_base(self, mc, model, base, adapter, vision) -> tuple:
        """(adapter, vision) when training over `base` (the base checkpoint's CheckpointConfig), given the
        config's own (`adapter`, `vision`). Default: the base's tower when the adapter has a visual path."""
        if adapter.splice is not None and base.adapter is not None and base.adapter.splice is not None:
            return adapter.replace(splice=base.adapter.splice), base.vision or vision
        if adapter.splice is not None or adapter.has_visual:
            return adapter, base.vision or vision
        return adapter, None

    def pipeline_options(self, data_config, adapter) -> dict:
        """Extra `PipelineConfig` fields of this system for a run's `config.data` section."""
        return {}

    # ---- data ----
    def check_pipeline(self, cfg) -> None:
        """ValueError when a `PipelineConfig` `cfg` of this system is not one it can read. Default: a system with
        one prompt format, so `cfg.template` must be empty."""
        if cfg.template:
            raise ValueError(f"PipelineConfig.template={cfg.template!r}: system {self.name!r} has one prompt format "
                             "(template ''); set PipelineConfig.system to the system whose template that is")

    def data_template(self, adapter, kind: str) -> str:
        """The template a dataset of kind `kind` (instruction, conversation, caption) is read with when no run config
        names one (`lav2 eval loss` scores a checkpoint's held-out streams with it). Default: '' (one format)."""
        return ""

    def tokenize_record(self, tok, record: dict, pick: int, cfg) -> tuple:
        """(Tokenized | None, number of images) of one dataset record for a `PipelineConfig` `cfg`: None when
        truncation leaves no answer token (the pipeline drops and counts the sample); `pick` is the caption drawn."""
        raise ValueError(f"system {self.name!r} has no data pipeline")

    def record_images(self, record: dict, n_images: int, cfg, rng, name: Optional[str]) -> dict:
        """The image fields of a sample: `image` [H, W, 3] (zeros without an image) and, for systems with several
        images per sample, `images` [k, H, W, 3]; `rng` is given when training augments images."""
        raise ValueError(f"system {self.name!r} has no data pipeline")

    # ---- checkpoints ----
    def hf_export(self, adapter, where: str) -> Optional[HFExport]:
        """The system's parts of `lav2 export hf` for `adapter` (None: a plain Llama); ValueError naming `where`
        when the model has no Hugging Face equivalent. Default: a model without a splice is a plain Llama."""
        if adapter.splice is not None:
            raise ValueError(f"{where}: this {self.title or self.name} checkpoint has no Hugging Face equivalent")
        return None

    # ---- demo ----
    def vision_from_clip(self, clip: dict, model, keys) -> dict:
        """The vision leaves of `model` (a Transformer of this system, parameter paths `keys`: tuples) taken from a
        CLIP tower's parameter tree `clip` (`lav2_jax.model.clip.CLIPVisionTower`): {path tuple: array}.
        Default: the `clip/...` leaves the model has (its tower is a CLIP tower; LLaVA's has no `proj`)."""
        return {("clip",) + k: v for k, v in _leaves(clip) if ("clip",) + k in keys}

    # ---- inference: the prompt format ----
    def instruction_prompt(self, adapter, instruction: str, input_text: Optional[str] = None, image=False) -> str:
        raise NotImplementedError

    def chat_prompt(self, adapter, turns: Sequence[tuple[str, str]], system: Optional[str] = None,
                    image=False) -> str:
        raise NotImplementedError

    def chat_stop(self, adapter) -> str:
        raise NotImplementedError

    def caption_prompt(self, adapter) -> str:
        raise NotImplementedError

    def from_alpaca(self, adapter, prompt_text: str, image=False) -> str:
        """An Alpaca-formatted prompt (what the benchmarks of `lav2_jax.eval` write) in this system's format: its
        instruction and input re-rendered by `instruction_prompt`; any other text unchanged."""
        parsed = templates.parse_alpaca(prompt_text)
        return prompt_text if parsed is None else self.instruction_prompt(adapter, *parsed, image=image)


def _leaves(tree: Mapping, prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(path tuple, leaf) of a nested dict, depth first (`flax.traverse_util.flatten_dict`'s items, without flax)."""
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v
