"""The systems registry (docs/design.md, "Package layout and layering").

A *system* is one method family trained by this framework: LLaMA-Adapter V2 (`lav2`), LLaVA (`llava`), mPLUG-Owl
(`owl`), or any other that registers itself. Each lives in its own package under `lav2_jax/systems/<name>/` and
describes itself with one `System` object; the generic layers (model, data, train, inference, eval, serve, cli,
demo) ask the registry for it and never compare system names.

  register(system)     adds a System (its `name` must be new)
  get(name)            the System called `name` (the built-in ones load on first use)
  names()              every known name: the built-in ones first, in the order lav2, llava, owl
  of(adapter)          the System of an AdapterConfig (`adapter.system`)
  recipe(name)         the `Recipe` called `name`, whichever system defines it
  recipes(system=None) every Recipe (of one system), in registration order

The built-in systems are imported by name on first use (`importlib`) rather than at import time, so this module
sits at the bottom of the package: a system's package imports the generic layers, and those reach the system only
through here, without an import cycle.
"""

from __future__ import annotations

import importlib
from typing import Mapping, Optional

from lav2_jax.core.recipe import Recipe
from lav2_jax.core.system import System

BUILTIN = {
    "lav2": "lav2_jax.systems.lav2.system",
    "llava": "lav2_jax.systems.llava.system",
    "owl": "lav2_jax.systems.owl.system",
}

_SYSTEMS: dict[str, System] = {}


def register(system: System) -> System:
    """Adds `system` to the registry (and returns it, so a module can write `SYSTEM = register(MySystem())`)."""
    name = system.name
    if not name or not isinstance(name, str):
        raise ValueError(f"a system needs a non-empty string name, got {name!r}")
    if name in _SYSTEMS and _SYSTEMS[name] is not system:
        raise ValueError(f"system {name!r} is already registered")
    taken = {r: s.name for s in _SYSTEMS.values() if s is not system for r in s.recipes}
    for r in system.recipes:
        if r in taken:
            raise ValueError(f"system {name!r}: recipe {r!r} is already defined by system {taken[r]!r}")
    _SYSTEMS[name] = system
    return system


def unregister(name: str) -> None:
    """Removes a registered system (tests that add a system of their own clean up with this)."""
    _SYSTEMS.pop(name, None)


def _load_builtins() -> None:
    for name, module in BUILTIN.items():
        if name not in _SYSTEMS:
            importlib.import_module(module)  # registers itself


def get(name: str) -> System:
    """The System called `name`; ValueError naming the known ones for an unknown name."""
    if name not in _SYSTEMS and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    try:
        return _SYSTEMS[name]
    except KeyError:
        raise ValueError(f"unknown system {name!r}; known: {', '.join(names())}") from None


def names() -> list[str]:
    _load_builtins()
    builtin = [n for n in BUILTIN if n in _SYSTEMS]
    return builtin + [n for n in _SYSTEMS if n not in BUILTIN]


def of(adapter) -> System:
    """The System an AdapterConfig belongs to (`adapter.system`; `lav2` for None, a language-only model)."""
    return get("lav2" if adapter is None else adapter.system)


def all_systems() -> list[System]:
    return [get(n) for n in names()]


def recipes(system: Optional[str] = None) -> Mapping[str, Recipe]:
    """Every recipe (of `system` only, when given), by name, in the order the systems list them."""
    out: dict[str, Recipe] = {}
    for s in ([get(system)] if system else all_systems()):
        out.update(s.recipes)
    return out


def recipe(name: str) -> Recipe:
    known = recipes()
    try:
        return known[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(known)}") from None
