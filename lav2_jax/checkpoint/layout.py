"""The on-disk checkpoint layout and its `config.json`.

A checkpoint directory:

  config.json   {"format_version", "system": the adapter's system (`lav2`, `llava`, `owl`, ...; null without an
                 adapter), "model": ModelConfig fields, "adapter": AdapterConfig fields,
                 "vision": VisionConfig fields | null, "channel_order": "rgb" | "bgr", "items": ["base", "adapter"],
                 "base": absolute path of the base checkpoint | null (adapter-only checkpoints), "meta": {...}}
                A config.json without "system" (written before it was recorded) reads the same: the system follows
                from the adapter (`AdapterConfig.system`).
  tokenizer/    a copy of `tokenizer.model` (sentencepiece) or of a Hugging Face tokenizer directory (optional)
  base/         orbax item: the frozen leaves (LLaMA kernels and embeddings, CLIP; norms when not tuned)
  adapter/      orbax item: every leaf that recipe `all-adapters` trains (docs/design.md §6.3), so that an adapter
                (tens of MB) is saved, shared and restored alone

Item leaves are keyed by the model's parameter paths (`layers/attention/wq/kernel`, stacked on the layer axis,
kernels [in, out]; see `lav2_jax.model.transformer`). Frozen leaves are stored in the model's `weight_dtype`,
adapter leaves in float32.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

from lav2_jax.core.config import AdapterConfig, ModelConfig, VisionConfig

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
BASE_ITEM = "base"
ADAPTER_ITEM = "adapter"
ITEMS = (BASE_ITEM, ADAPTER_ITEM)
CHANNEL_ORDERS = ("rgb", "bgr")
ADAPTER_RECIPE = "all-adapters"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """What `config.json` holds. `base` is set for adapter-only checkpoints (the base they apply to).

    A vision-only checkpoint (`lav2 convert clip`) has `model` and `adapter` None and `clip/...` leaves only.
    """

    model: Optional[ModelConfig]
    adapter: Optional[AdapterConfig]
    vision: Optional[VisionConfig] = None
    channel_order: str = "rgb"
    items: tuple = ITEMS
    base: Optional[str] = None
    meta: dict = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order={self.channel_order!r} not in {CHANNEL_ORDERS}")

    @property
    def system(self) -> Optional[str]:
        """The registered system (`lav2_jax.core.registry`) of the adapter; None for a vision-only checkpoint."""
        return None if self.adapter is None else self.adapter.system

    def replace(self, **kw) -> "CheckpointConfig":
        return dataclasses.replace(self, **kw)

    def to_json(self) -> dict:
        return {
            "format_version": self.format_version,
            "system": self.system,
            "model": dataclasses.asdict(self.model) if self.model is not None else None,
            "adapter": _listify(dataclasses.asdict(self.adapter)) if self.adapter is not None else None,
            "vision": dataclasses.asdict(self.vision) if self.vision is not None else None,
            "channel_order": self.channel_order,
            "items": list(self.items),
            "base": self.base,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, d: dict, where: str = CONFIG_FILE) -> "CheckpointConfig":
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{where}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
        try:
            adapter = dict(d["adapter"]) if d.get("adapter") else None
            if adapter and "lora_targets" in adapter:
                adapter["lora_targets"] = tuple(adapter["lora_targets"])
            config = cls(model=ModelConfig(**d["model"]) if d.get("model") else None,
                         adapter=AdapterConfig(**adapter) if adapter else None,
                         vision=VisionConfig(**d["vision"]) if d.get("vision") else None,
                         channel_order=d.get("channel_order", "rgb"), items=tuple(d.get("items", ITEMS)),
                         base=d.get("base"), meta=dict(d.get("meta") or {}), format_version=version)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{where}: malformed checkpoint config: {e}") from None
        if d.get("system") is not None and d["system"] != config.system:  # absent: written before it was recorded
            raise ValueError(f"{where}: names system {d['system']!r} but its adapter is of system {config.system!r}")
        return config


def _listify(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def write_config(directory: str, config: CheckpointConfig) -> None:
    with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(config.to_json(), f, indent=2, sort_keys=True)
        f.write("\n")


def read_config(directory: str | os.PathLike) -> CheckpointConfig:
    path = os.path.join(os.fspath(directory), CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            data: Any = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{os.fspath(directory)}: not a lav2_jax checkpoint (no {CONFIG_FILE})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable checkpoint config: {e}") from None
    return CheckpointConfig.from_json(data, path)


SHAPE_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim")


def check_same_base(base: ModelConfig, other: ModelConfig, where: str) -> None:
    """Raises when two model configs disagree on anything that changes a base weight's shape."""
    for name in SHAPE_FIELDS:
        a, b = getattr(base, name), getattr(other, name)
        if name == "n_kv_heads":
            a, b = base.kv_heads, other.kv_heads
        if a != b:
            raise ValueError(f"{where}: model {name}={b} does not match the base checkpoint's {name}={a}")
