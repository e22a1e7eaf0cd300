"""`Recipe`: which parameters train, and in which group (docs/design.md §6; paper §4.2: disjoint groups).

Each system lists its recipes as named `Recipe`s (`lav2_jax/systems/<name>/recipes.py`); the rules engine that
labels a parameter tree is `lav2_jax.core.param_groups`.
"""

from __future__ import annotations

import dataclasses

GROUPS = ("caption", "instruction", "frozen")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Which parameters train, and in which group (paper §4.2: disjoint groups).

    rules: ordered `(regex, group)` pairs over `/`-joined parameter paths (e.g. `layers/attention/wq/bias`); the
      first rule whose regex matches a path decides its group (`caption`, `instruction` or `frozen`); a path no rule
      matches is frozen.
    norm_tuning: the recipe's norms are LLaMA-Adapter's "norm tuning", frozen when the adapter disables it
      (`AdapterConfig.norm_tuning=False`); a full fine-tune's norms are ordinary weights (False).
    full_finetune: the recipe trains base weights (no frozen base to share or quantise).
    system_modules: after its own rules, the recipe trains (group `instruction`) every registered system's own
      modules, `System.adapter_modules` (`lav2_jax.core.param_groups.resolve`): recipe `all-adapters`, whose leaves
      are a checkpoint's adapter item, so a system added later needs no edit of it.
    """

    name: str
    system: str
    rules: tuple[tuple[str, str], ...]
    description: str = ""
    norm_tuning: bool = False
    full_finetune: bool = False
    system_modules: bool = False

    def __post_init__(self):
        for pattern, group in self.rules:
            if group not in GROUPS:
                raise ValueError(f"recipe {self.name!r}: rule {pattern!r} names group {group!r}; known: {GROUPS}")
