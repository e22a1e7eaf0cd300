"""`lav2 info --model NAME --adapter NAME [--vision NAME] [--recipe R ...] [--json]`, or `--system S`.

Prints parameter counts of a preset combination — total, the frozen LLaMA base, the vision tower (CLIP for
visual adapters, mPLUG-Owl's ViT for `owl` / `owl-lora`), what the adapter adds, the adapter total
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
    "owl": ("owl-stage1",),
    "owl-lora": ("owl-stage2", "owl-stage2-abstractor"),
    "llava": ("llava-stage1", "llava-stage2"),
    "llava15": ("llava-stage1", "llava-stage2"),
    "llava15-lora": ("llava-lora",),
}
DEFAULT_VISION = {"owl": "owl-vit-l-14", "owl-lora": "owl-vit-l-14", "llava": "clip-l-14-hf",
                  "llava15": "clip-l-14-336-hf", "llava15-lora": "clip-l-14-336-hf"}
# `--system S`: every recipe of a system, each counted on the adapter preset it trains.
SYSTEM_ADAPTERS = {"llava": ("llava",), "llava15": ("llava15", "llava15-lora"), "owl": ("owl", "owl-lora")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model preset, e.g. llama1-7b (see lav2_jax.core.presets)")
    p.add_argument("--adapter", default="none", help="adapter preset: paper, release-bias, release-lora-bias, "
                   "chat65b, lora, none")
    p.add_argument("--vision", default=None, help="vision preset for visual adapters (default vit-l-14)")
    p.add_argument("--recipe", action="append", default=None, help="training recipe(s) to count groups for")
    p.add_argument("--system", default=None, choices=sorted(SYSTEM_ADAPTERS),
                   help="count every recipe of a system on its own adapter preset (e.g. llava15: llava-stage1/2 "
                   "on llava15, llava-lora on llava15-lora); replaces --adapter")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def param_report(model_name: str, adapter_name: str, vision_name: str | None = None,
                 recipes: tuple[str, ...] | None = None) -> dict:
    """The counts `lav2 info` prints, as a dict."""
    from lav2_jax.core import param_groups as pg
    from lav2_jax.core import presets
    from lav2_jax.model.factory import abstract_params, build_model

    config = presets.get_model(model_name)
    adapter = presets.get_adapter(adapter_name)
    vision = None
    vision_name = vision_name or DEFAULT_VISION.get(adapter_name, "vit-l-14")
    if adapter.has_visual or adapter.splice is not None:
        vision = presets.get_vision(vision_name)
    shapes = abstract_params(build_model(config, adapter, vision))
    base = abstract_params(build_model(config, presets.get_adapter("none"), None))
    recipes = tuple(recipes or DEFAULT_RECIPES.get(adapter_name, ("all-adapters",)))
    total = pg.count(shapes)["total"]
    base_llama = pg.count(base)["total"]
    clip = sum(pg.count(shapes[k])["total"] for k in ("clip", "owl_vision") if k in shapes)
    report = {
        "model": model_name, "adapter": adapter_name, "vision": vision_name if vision else None,
        "total": total,
        "base_llama": base_llama,
        "clip": clip,
        "added_by_adapter": total - base_llama - clip,
        "adapter_total": pg.count(shapes, pg.param_groups(shapes, "all-adapters", adapter))["instruction"],
        "recipes": {r: pg.count(shapes, pg.param_groups(shapes, r, adapter)) for r in recipes},
    }
    return report


def system_report(model_name: str, system: str, vision_name: str | None = None) -> dict:
    """`param_report` of the system's first adapter preset, with the recipes of all its presets."""
    reports = [param_report(model_name, a, vision_name) for a in SYSTEM_ADAPTERS[system]]
    report = dict(reports[0], adapter=" / ".join(SYSTEM_ADAPTERS[system]), system=system)
    report["recipes"] = {f"{r} ({rep['adapter']})": counts for rep in reports for r, counts in rep["recipes"].items()}
    return report


def run(args) -> int:
    from lav2_jax.cli.main import UserError

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
