"""Checks `--config.key=value` overrides against a config before absl applies them.

`check_overrides(config, overrides)` raises `UserError` for an override naming a field the config does not have,
with the closest valid field names (difflib over every field path of the config), e.g.
`--config.train.steps=60: the config has no field 'train.steps'; closest: total_steps, batch.train`, and for a
value that does not parse as the field's type, naming the field, its type and the value.
"""

from __future__ import annotations

import difflib
from typing import Iterable

import ml_collections

from lav2_jax.cli.errors import UserError

PREFIX = "config."


def field_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted path of `config`: sections and their fields (`optim`, `optim.caption`, `optim.caption.b1` ...)."""
    out = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        out.append(path)
        if isinstance(value, ml_collections.ConfigDict):
            out += field_paths(value, path + ".")
    return out


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Up to `n` candidates closest to `name` (whole dotted paths, then the last component alone)."""
    candidates = list(candidates)
    out = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    last = name.rsplit(".", 1)[-1]
    by_last = {}
    for c in candidates:
        by_last.setdefault(c.rsplit(".", 1)[-1], []).append(c)
    for m in difflib.get_close_matches(last, list(by_last), n=n, cutoff=0.6):
        out += [c for c in by_last[m] if c not in out]
    return out[:n]


def _split(override: str) -> tuple[str, str | None]:
    """('a.b', 'value') of `--config.a.b=value` (value None for a bare boolean flag)."""
    flag = override.lstrip("-")
    if flag.startswith("no" + PREFIX):
        flag = flag[2:]
    name, eq, value = flag[len(PREFIX):].partition("=")
    return name, (value if eq else None)


def check_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
    """Raises UserError for an override of a field `config` lacks, or a value that does not fit its type."""
    paths = field_paths(config)
    known = set(paths)
    for override in overrides:
        if not override.lstrip("-").startswith((PREFIX, "no" + PREFIX)):
            continue  # a value of the flag before it (`--config.x 3`): absl checks it
        name, value = _split(override)
        if name not in known:
            near = closest(name, paths)
            hint = f"; closest: {', '.join(near)}" if near else ""
            raise UserError(f"{override}: the config has no field {name!r}{hint}")
        field = _get(config, name)
        if isinstance(field, ml_collections.ConfigDict):
            raise UserError(f"{override}: {name!r} is a section, not a field; its fields: "
                            f"{', '.join(sorted(field.keys()))}")
        if value is not None:
            _check_type(override, name, field, value)


def _get(config, name: str):
    for part in name.split("."):
        config = config[part]
    return config


def _check_type(override: str, name: str, field, value: str) -> None:
    kind = type(field)
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
        elif kind in (int, float):
            kind(value)
    except ValueError:
        raise UserError(f"{override}: field {name!r} takes {kind.__name__} values; {value!r} is not one") from None
