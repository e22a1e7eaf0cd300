"""Reference tables from the code: `config.json` keys and the config dataclasses (`checkpoint()`), and the named
presets, systems and recipes (`presets()`)."""

from __future__ import annotations

import dataclasses
import inspect

from md import cell, code, table


def _type(f: dataclasses.Field) -> str:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return f"`{t}`"


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return code(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return code(f.default_factory())  # type: ignore[misc]
    return "required"


def dataclass_table(cls) -> str:
    doc = inspect.getdoc(cls) or ""
    rows = [[f"`{f.name}`", _type(f), _default(f)] for f in dataclasses.fields(cls)]
    return "\n".join([f"### `{cls.__name__}`", "", f"`{cls.__module__}.{cls.__name__}`", "", "```text", doc, "```",
                      "", table(["key", "type", "default"], rows), ""])


def config_json_keys() -> list[str]:
    from lav2_jax.checkpoint.layout import CheckpointConfig

    return list(CheckpointConfig(model=None, adapter=None).to_json())


def checkpoint() -> str:
    from lav2_jax.checkpoint import layout
    from lav2_jax.core.config import AbstractorConfig, AdapterConfig, ModelConfig, SpliceConfig, VisionConfig

    fields = {f.name: f for f in dataclasses.fields(layout.CheckpointConfig)}
    rows = []
    for k in config_json_keys():
        if k in fields:
            rows.append([f"`{k}`", _type(fields[k]), _default(fields[k])])
        else:  # derived when written (a property of CheckpointConfig)
            prop = getattr(layout.CheckpointConfig, k)
            ret = inspect.signature(prop.fget).return_annotation
            rows.append([f"`{k}`", f"`{ret}`", "derived: " + cell(inspect.getdoc(prop) or "")])
    out = ["## The layout", "", f"From `{layout.__name__}`:", "", "```text", inspect.getdoc(layout) or "", "```", "",
           f"Items: {', '.join(code(i) for i in layout.ITEMS)}; `format_version` {layout.FORMAT_VERSION}; "
           f"channel orders {', '.join(code(c) for c in layout.CHANNEL_ORDERS)}; the adapter item holds what "
           f"recipe {code(layout.ADAPTER_RECIPE)} trains.", "",
           "## `config.json` keys", "", table(["key", "type", "default"], rows), "",
           "`model`, `adapter` and `vision` hold the fields of these dataclasses (`splice` and its `abstractor` "
           "nested inside `adapter`):", ""]
    for cls in (ModelConfig, AdapterConfig, VisionConfig, SpliceConfig, AbstractorConfig):
        out.append(dataclass_table(cls))
    return "\n".join(out)


def presets() -> str:
    from lav2_jax.core import presets as p
    from lav2_jax.core import registry

    models = table(["preset", "dim", "layers", "heads", "kv heads", "FFN", "vocab", "context", "weights"], [
        [f"`{n}`", str(m.dim), str(m.n_layers), str(m.n_heads), str(m.kv_heads), str(m.hidden_dim),
         str(m.vocab_size), str(m.max_seq_len), m.weight_dtype] for n, m in p.MODEL_PRESETS.items()])
    adapters = table(["preset", "system", "linears", "norms", "prompts × layers", "visual fusion", "LoRA rank"], [
        [f"`{n}`", a.system, a.linear_kind, "tuned" if a.norm_tuning else "frozen",
         f"{a.prompt_len} × {a.prompt_layers}", a.visual_fusion, str(a.lora_rank)]
        for n, a in p.adapter_presets().items()])
    vision = table(["preset", "image", "patch", "width", "layers", "heads", "output dim", "LayerNorm eps"], [
        [f"`{n}`", str(v.image_size), str(v.patch_size), str(v.width), str(v.layers), str(v.heads),
         str(v.output_dim), str(v.layer_norm_eps)] for n, v in p.VISION_PRESETS.items()])
    systems = table(["system", "class", "recipes", "adapter presets"], [
        [f"`{s.name}`", f"`{type(s).__module__}.{type(s).__name__}`", ", ".join(f"`{r}`" for r in s.recipes),
         ", ".join(f"`{a}`" for a in s.adapter_presets)] for s in registry.all_systems()])
    recipes = table(["recipe", "system", "what trains", "rules (regex → group, first match wins)"], [
        [f"`{r.name}`", r.system, cell(r.description),
         "<br>".join(f"`{pat}` → {grp}" for pat, grp in r.rules)] for r in registry.recipes().values()])
    return "\n".join(["## Model presets", "", models, "", "## Adapter presets", "", adapters, "",
                      "## Vision presets", "", vision, "", "## Systems", "", systems, "", "## Recipes", "", recipes,
                      ""])
