"""`lav2 info --model NAME --adapter NAME [--vision NAME] [--recipe R ...] [--json]`, or `--system S`, or
`lav2 info --recipes`.

Prints parameter counts of a preset combination — total, the frozen LLaMA base, the vision tower (CLIP for
visual adapters, mPLUG-Owl's ViT for `owl` / `owl-lora`), what the adapter adds, the adapter total
(every parameter some recipe trains: what an adapter checkpoint holds) and, per training recipe, the trainable count
of each group. Shapes come from `jax.eval_shape`, so even 65B/70B answer in seconds with no weights allocated.
The adapter preset's system (`lav2_jax.core.registry`) gives its vision preset and the recipes counted by default
(`System.preset_visions`, `System.preset_recipes`; else every recipe of the system); `--system S` counts the
recipes of every preset of system S; `--recipes` lists every system's recipes.
"""

from __future__ import annotations

# Heavy modules (jax, the model, TFDS, torch) are imported inside the functions that use them: `lav2` start-up time.

import argparse
import json

from lav2_jax.checkpoint.layout import ADAPTER_RECIPE
from lav2_jax.cli.errors import UserError
from lav2_jax.core import presets, registry


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model preset, e.g. llama1-7b (see lav2_jax.core.presets)")
    p.add_argument("--adapter", default="none", help="adapter preset: paper, release-bias, release-lora-bias, "
                   "chat65b, lora, none, llava, llava15, llava15-lora, owl, owl-lora, ...")
    p.add_argument("--vision", default=None, help="vision preset for visual adapters (default: the preset's "
                   "system's tower, vit-l-14 for LLaMA-Adapter V2)")
    p.add_argument("--recipe", action="append", default=None, help="training recipe(s) to count groups for")
    p.add_argument("--system", default=None, help="count the recipes of every adapter preset of a system (lav2, "
                   "llava, owl, ...; e.g. llava: llava-stage1/2 on llava and llava15, llava-lora on llava15-lora); "
                   "replaces --adapter")
    p.add_argument("--recipes", action="store_true", help="list every system's training recipes and exit")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def param_report(model_name: str, adapter_name: str, vision_name: str | None = None,
                 recipes: tuple[str, ...] | None = None) -> dict:
    """The counts `lav2 info` prints, as a dict."""
    from lav2_jax.core import param_groups as pg  # here, not at the top: the CLI's start-up time (flax, jax)
    from lav2_jax.model.factory import abstract_params, build_model

    config = presets.get_model(model_name)
    adapter = presets.get_adapter(adapter_name)
    system = registry.of(adapter)
    vision = None
    vision_name = vision_name or presets.default_vision(adapter_name)
    if adapter.has_visual or adapter.splice is not None:
        vision = presets.get_vision(vision_name)
    shapes = abstract_params(build_model(config, adapter, vision))
    base = abstract_params(build_model(config, presets.get_adapter("none"), None))
    recipes = tuple(recipes or system.preset_recipes.get(adapter_name) or registry.recipes(system.name))
    total = pg.count(shapes)["total"]
    base_llama = pg.count(base)["total"]
    clip = sum(pg.count(shapes[k])["total"] for k in ("clip", "owl_vision") if k in shapes)
    report = {
        "model": model_name, "adapter": adapter_name, "system": system.name,
        "vision": vision_name if vision else None,
        "total": total,
        "base_llama": base_llama,
        "clip": clip,
        "added_by_adapter": total - base_llama - clip,
        "adapter_total": pg.count(shapes, pg.param_groups(shapes, ADAPTER_RECIPE, adapter))["instruction"],
        "recipes": {r: pg.count(shapes, pg.param_groups(shapes, r, adapter)) for r in recipes},
    }
    return report


def system_report(model_name: str, system: str, vision_name: str | None = None) -> dict:
    """`param_report` of the system's first adapter preset, with the recipes of all its presets
    (`System.preset_recipes`: each counted on the preset that lists it)."""
    names = list(registry.get(system).preset_recipes)
    if not names:
        raise ValueError(f"system {system!r} lists no adapter presets to count (System.preset_recipes)")
    reports = [param_report(model_name, a, vision_name) for a in names]
    report = dict(reports[0], adapter=" / ".join(names), system=system)
    report["recipes"] = {f"{r} ({rep['adapter']})": counts for rep in reports for r, counts in rep["recipes"].items()}
    return report


def recipe_listing() -> str:
    """Every system's recipes, one line each: system, recipe, description (and its flags)."""
    lines = []
    for s in registry.all_systems():
        for name, r in s.recipes.items():
            flags = ", ".join(f for f, on in (("norm tuning", r.norm_tuning), ("full fine-tune", r.full_finetune))
                              if on)
            lines.append(f"  {s.name:<6} {name:<22} {r.description}" + (f" ({flags})" if flags else ""))
    return "\n".join(lines)


def run(args) -> int:
    if getattr(args, "recipes", False):
        print("training recipes (config.param_recipe), by system:\n" + recipe_listing())
        return 0
    if not args.model:
        raise UserError("--model is required (or --recipes)")
    try:
        if getattr(args, "system", None):
            report = system_report(args.model, args.system, args.vision)
        else:
            report = param_report(args.model, args.adapter, args.vision,
                                  tuple(args.recipe) if args.recipe else None)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model {report['model']}  adapter {report['adapter']}  vision {report['vision'] or '-'}")
    rows = [("total parameters", report["total"]), ("frozen LLaMA base", report["base_llama"]),
            ("vision tower (CLIP / Owl ViT)", report["clip"]), ("added by the adapter", report["added_by_adapter"]),
            ("adapter total (trained by some recipe)", report["adapter_total"])]
    for recipe, counts in report["recipes"].items():
        for group in ("caption", "instruction", "frozen"):
            rows.append((f"{recipe}: {group}", counts[group]))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>16,}")
    return 0
