"""Disjoint parameter groups (paper §4.2, docs/design.md §6), driven by named recipes of ordered rules.

A recipe (`lav2_jax.core.recipe.Recipe`) is contributed by a system (`systems/<name>/recipes.py`, listed by
`lav2 info` / `lav2 train --help`); `param_groups(params, recipe)` labels every leaf `caption`, `instruction` or
`frozen`: the first rule of the recipe whose regex matches the leaf's path (`/`-joined, e.g.
`layers/attention/wq/bias`) decides, and a path no rule matches is frozen. Training feeds the labels to
`optax.multi_transform` and differentiates only the non-frozen leaves (`split` / `merge`).

The patterns below name the language model's own parameters (`lav2_jax.model.transformer`), shared by the recipes
of every system; a system's recipes name its visual modules themselves, and a recipe with `system_modules`
(`all-adapters`) takes every registered system's own modules (`System.adapter_modules`; `resolve`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Iterable

import flax.linen as nn
from flax import traverse_util

from lav2_jax.core import registry
from lav2_jax.core.recipe import GROUPS, Recipe

C, I, F = GROUPS
NORM_PATTERN = r"(^|/)(attention_norm|ffn_norm|norm)/scale$"  # RMSNorm weights (norm tuning)
LLM_PATTERN = r"^(tok_embeddings|layers(_\d+)?|norm|output)/"  # every language-model weight
LORA_PATTERN = r"/lora_[ab]$"
LINEAR_ADAPTER_PATTERN = r"^layers(_\d+)?/.*/w[qkvo123]/(bias|scale)$"  # bias / scale of the seven linears
PROMPT_GATE_PATTERN = r"/attention/(gate|new_gate)$"  # adapter-prompt gates


@functools.lru_cache(maxsize=None)
def _compiled(rules: tuple) -> tuple:
    return tuple((re.compile(p), g) for p, g in rules)


def path_str(path: Iterable[Any]) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def resolve(recipe: str | Recipe) -> Recipe:
    """`recipe` (a name: `lav2_jax.core.registry.recipe`) with all its rules: one with `system_modules` gets every
    registered system's `System.adapter_modules` (group instruction) after its own rules."""
    r = recipe if isinstance(recipe, Recipe) else registry.recipe(recipe)
    if not r.system_modules:
        return r
    modules = tuple((pattern, I) for system in registry.all_systems() for pattern in system.adapter_modules)
    return dataclasses.replace(r, rules=r.rules + modules, system_modules=False)


def label_for(path: str, recipe: str | Recipe, norm_tuning: bool = True) -> str:
    """The group of the parameter at `path` under `recipe` (a name or a Recipe, completed by `resolve`)."""
    r = resolve(recipe)
    if not norm_tuning and r.norm_tuning and re.search(NORM_PATTERN, path):
        return F
    for pattern, group in _compiled(r.rules):
        if pattern.search(path):
            return group
    return F


def param_groups(params, recipe: str, adapter=None):
    """A tree shaped like `params` (boxed or not) whose leaves are `caption` / `instruction` / `frozen`.

    With `adapter` given, norms are frozen unless `adapter.norm_tuning`.
    """
    norm_tuning = True if adapter is None else adapter.norm_tuning
    r = resolve(recipe)
    flat = traverse_util.flatten_dict(nn.unbox(params))
    return traverse_util.unflatten_dict({k: label_for(path_str(k), r, norm_tuning) for k in flat})


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
