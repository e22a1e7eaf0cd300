"""Disjoint parameter groups (paper §4.2, DESIGN.md §2), driven by one ordered regex table.

`param_groups(params, recipe)` labels every leaf `caption`, `instruction` or `frozen`; the first row whose regex
matches the leaf's path (`/`-joined, e.g. `layers/attention/wq/bias`) decides, per recipe column. Training feeds the
labels to `optax.multi_transform` and differentiates only the non-frozen leaves (`split` / `merge`).

Recipes:
  paper-joint       caption: connector + early visual gates; instruction: adapter prompts and their gates, norms,
                    linear biases/scales, LoRA (paper §4.2)
  release-pretrain  caption: connector (incl. visual_query), adapter prompts, all gates (released stage 1)
  release-finetune  instruction: LLaMA norms, biases (and scales), LoRA (released stage 2)
  chat65b           instruction: norms, biases, scales (released 65B chat model)
  all-adapters      instruction: every parameter that is not a frozen base weight (CLIP and LLaMA kernels stay frozen)

LLaVA recipes (LLaVA paper §4.2 "two-stage instruction-tuning", LLaVA-1.5; spliced models, `lav2_jax.systems.llava.projector`);
the projector is the `caption` group (the stage-1 group), the language model the `instruction` group, so the two
keep separate learning rates; the CLIP tower is always frozen:
  llava-stage1      caption: the projector `mm_projector/...` only; every LLM weight frozen
  llava-stage2      caption: the projector; instruction: every LLM weight (embeddings, all kernels, norms, head:
                    full fine-tune, its optimizer state FSDP-sharded like the weights)
  llava-lora        caption: the projector; instruction: LoRA on the seven LLM linears; base weights frozen

mPLUG-Owl recipes (mPLUG-Owl paper §3.2 "Training Scheme", SEED_SYSTEMS.md §3.4; `lav2_jax.systems.owl.visual`):
  owl-stage1             caption: the vision model `owl_vision/...` AND the abstractor `abstractor/...` (the
                         vision tower trains here); the LLM frozen
  owl-stage2             instruction: LoRA on the LLM (the released script: r 8, alpha 32, q/v by default, the
                         adapter config's `lora_targets`); vision model and abstractor frozen
  owl-stage2-abstractor  as owl-stage2, plus caption: the abstractor (the paper's stage 2)
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import flax.linen as nn
from flax import traverse_util

GROUPS = ("caption", "instruction", "frozen")
RECIPES = ("paper-joint", "release-pretrain", "release-finetune", "chat65b", "all-adapters", "llava-stage1",
           "llava-stage2", "llava-lora", "owl-stage1", "owl-stage2", "owl-stage2-abstractor")
# Recipes whose norms are LLaMA-Adapter's "norm tuning" (frozen when the adapter disables it); in llava-stage2 the
# norms are ordinary base weights of the full fine-tune.
NORM_TUNING_RECIPES = RECIPES[:5]

C, I, F = "caption", "instruction", "frozen"
NORM_PATTERN = r"(^|/)(attention_norm|ffn_norm|norm)/scale$"
LLM_PATTERN = r"^(tok_embeddings|layers(_\d+)?|norm|output)/"  # every language-model weight

# pattern                                   paper-joint release-pretrain release-finetune chat65b all-adapters
#                                           llava-stage1 llava-stage2 llava-lora
#                                           owl-stage1 owl-stage2 owl-stage2-abstractor
GROUP_TABLE: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"^clip/",                              (F, F, F, F, F, F, F, F, F, F, F)),  # frozen CLIP tower
    (r"^owl_vision/",                        (F, F, F, F, F, F, F, F, C, F, F)),  # mPLUG-Owl vision model
    (r"^abstractor/",                        (F, F, F, F, I, F, F, F, C, F, C)),  # mPLUG-Owl abstractor
    (r"^mm_projector/",                      (F, F, F, F, I, C, C, C, F, F, F)),  # LLaVA's projector
    (r"^connector/",                         (C, C, F, F, I, F, F, F, F, F, F)),  # clip_proj, visual_query, blocks, visual_proj
    (r"^visual_gate$",                       (C, C, F, F, I, F, F, F, F, F, F)),  # early-fusion visual-prompt gates
    (r"^adapter_query$",                     (I, C, F, F, I, F, F, F, F, F, F)),  # adapter prompts
    (r"/attention/(gate|new_gate)$",         (I, C, F, F, I, F, F, F, F, F, F)),  # adapter-prompt gates
    (r"/lora_[ab]$",                         (I, F, I, F, I, F, I, I, F, I, I)),
    (NORM_PATTERN,                           (I, F, I, I, I, F, I, F, F, F, F)),  # RMSNorm weights (norm tuning)
    (r"/w[qkvo123]/(bias|scale)$",           (I, F, I, I, I, F, I, F, F, F, F)),  # linear adapters (bias tuning)
    (LLM_PATTERN,                            (F, F, F, F, F, F, I, F, F, F, F)),  # LLaMA kernels, embeddings, head
    (r".*",                                  (F, F, F, F, F, F, F, F, F, F, F)),  # anything else stays frozen
)
_COMPILED = tuple((re.compile(p), row) for p, row in GROUP_TABLE)


def path_str(path: Iterable[Any]) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def label_for(path: str, recipe: str, norm_tuning: bool = True) -> str:
    """The group of the parameter at `path` under `recipe`."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    if not norm_tuning and recipe in NORM_TUNING_RECIPES and re.search(NORM_PATTERN, path):
        return F
    col = RECIPES.index(recipe)
    for pattern, row in _COMPILED:
        if pattern.search(path):
            return row[col]
    raise AssertionError("the table ends with a catch-all row")


def param_groups(params, recipe: str, adapter=None):
    """A tree shaped like `params` (boxed or not) whose leaves are `caption` / `instruction` / `frozen`.

    With `adapter` given, norms are frozen unless `adapter.norm_tuning`.
    """
    norm_tuning = True if adapter is None else adapter.norm_tuning
    flat = traverse_util.flatten_dict(nn.unbox(params))
    return traverse_util.unflatten_dict({k: label_for(path_str(k), recipe, norm_tuning) for k in flat})


def split(params, labels, groups: Iterable[str] = (C, I)) -> tuple[dict, dict]:
    """(leaves whose label is in `groups`, all other leaves) as two nested dicts; `merge` undoes it."""
    groups = set(groups)
    flat, flat_labels = traverse_util.flatten_dict(nn.unbox(params)), traverse_util.flatten_dict(labels)
    picked = {k: v for k, v in flat.items() if flat_labels[k] in groups}
    rest = {k: v for k, v in flat.items() if flat_labels[k] not in groups}
    return traverse_util.unflatten_dict(picked), traverse_util.unflatten_dict(rest)


def merge(*trees: dict) -> dict:
    """Unions disjoint nested dicts (inverse of `split`)."""
    flat: dict = {}
    for tree in trees:
        for k, v in traverse_util.flatten_dict(tree).items():
            if k in flat:
                raise ValueError(f"merge: parameter {path_str(k)} is in more than one tree")
            flat[k] = v
    return traverse_util.unflatten_dict(flat)


def count(params, labels=None) -> dict[str, int]:
    """Number of scalars per group (or `total` alone without labels). Works on arrays and ShapeDtypeStructs."""
    flat = traverse_util.flatten_dict(nn.unbox(params))
    sizes = {k: int(_size(v)) for k, v in flat.items()}
    out = {"total": sum(sizes.values())}
    if labels is not None:
        flat_labels = traverse_util.flatten_dict(labels)
        for g in GROUPS:
            out[g] = sum(s for k, s in sizes.items() if flat_labels[k] == g)
    return out


def _size(leaf) -> int:
    n = 1
    for d in leaf.shape:
        n *= d
    return n
