"""`lav2 info --model NAME --adapter NAME [--vision NAME] [--recipe R ...] [--json]`.

Prints parameter counts of a preset combination — total, the frozen LLaMA base, the frozen CLIP tower (visual
adapters), what the adapter adds, the adapter total
(every parameter some recipe trains: what an adapter checkpoint holds) and, per training recipe, the trainable count
of each group. Shapes come from `jax.eval_shape`, so even 65B/70B answer in seconds with no weights allocated.
"""

from __future__ import annotations

import argparse
import json

DEFAULT_RECIPES = {
    "paper": ("paper-joint",),
    "release-bias": ("release-pretrain", "release-finetune"),
    "release-lora-bias": ("release-pretrain", "release-finetune"),
    "chat65b": ("chat65b",),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model preset, e.g. llama1-7b (see lav2_jax.presets)")
    p.add_argument("--adapter", default="none", help="adapter preset: paper, release-bias, release-lora-bias, "
                   "chat65b, lora, none")
    p.add_argument("--vision", default=None, help="vision preset for visual adapters (default vit-l-14)")
    p.add_argument("--recipe", action="append", default=None, help="training recipe(s) to count groups for")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def param_report(model_name: str, adapter_name: str, vision_name: str | None = None,
                 recipes: tuple[str, ...] | None = None) -> dict:
    """The counts `lav2 info` prints, as a dict."""
    from lav2_jax import param_groups as pg
    from lav2_jax import presets
    from lav2_jax.model.factory import abstract_params, build_model

    config = presets.get_model(model_name)
    adapter = presets.get_adapter(adapter_name)
    vision = None
    if adapter.has_visual:
        vision = presets.get_vision(vision_name or "vit-l-14")
    shapes = abstract_params(build_model(config, adapter, vision))
    base = abstract_params(build_model(config, presets.get_adapter("none"), None))
    recipes = tuple(recipes or DEFAULT_RECIPES.get(adapter_name, ("all-adapters",)))
    total = pg.count(shapes)["total"]
    base_llama = pg.count(base)["total"]
    clip = pg.count(shapes["clip"])["total"] if "clip" in shapes else 0
    report = {
        "model": model_name, "adapter": adapter_name, "vision": (vision_name or "vit-l-14") if vision else None,
        "total": total,
        "base_llama": base_llama,
        "clip": clip,
        "added_by_adapter": total - base_llama - clip,
        "adapter_total": pg.count(shapes, pg.param_groups(shapes, "all-adapters", adapter))["instruction"],
        "recipes": {r: pg.count(shapes, pg.param_groups(shapes, r, adapter)) for r in recipes},
    }
    return report


def run(args) -> int:
    from lav2_jax.cli.main import UserError

    try:
        report = param_report(args.model, args.adapter, args.vision, tuple(args.recipe) if args.recipe else None)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model {report['model']}  adapter {report['adapter']}  vision {report['vision'] or '-'}")
    rows = [("total parameters", report["total"]), ("frozen LLaMA base", report["base_llama"]),
            ("frozen CLIP tower", report["clip"]), ("added by the adapter", report["added_by_adapter"]),
            ("adapter total (trained by some recipe)", report["adapter_total"])]
    for recipe, counts in report["recipes"].items():
        for group in ("caption", "instruction", "frozen"):
            rows.append((f"{recipe}: {group}", counts[group]))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>16,}")
    return 0
