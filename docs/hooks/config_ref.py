"""The training-config reference, from the config definitions.

Fields: every field of `lav2_jax.train.defaults.base_config()` (type and default from it) and every field a config
in `configs/` adds on top (a system's config helper: `model.splice.*`, `model.owl.*`, `data.template`, ...; the
values those configs give). Meanings: the field entries of the docstrings of `lav2_jax.train.defaults` and of each
registered system's `lav2_jax.systems.<name>.train_config`, in the form

    Fields (...):                                  or   `config.model` fields of a LLaVA run (...):
      model.preset        what it means                   splice.projector    what it means
      total_steps, seed   ...                             lora.rank / alpha   ...
                          continued on lines indented four or more spaces

A name without a dot takes the section of the first name of its entry; `<stream>` and `<group>` match any one
section name (`batch.<stream>` covers `batch.caption`, ...). `fields()` and `meanings()` are what the docs test
compares.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import importlib.util
import os
import re

import ml_collections

from md import cell, code, table

HEADER = re.compile(r"^(?:Fields\b.*|.*`config\.(?P<section>\w+)` fields\b.*):\s*$")
ENTRY = re.compile(r"^  (?P<names>[\w.<>]+(?:(?:, | / )[\w.<>]+)*)(?: {2,}(?P<text>\S.*))?$")
MORE = re.compile(r"^ {4,}(?P<text>\S.*)$")
SECTION_ORDER = ("model", "top level", "batch", "optim", "loss", "data", "mesh", "checkpoint", "log", "distributed",
                 "fault")


@dataclasses.dataclass
class Field:
    name: str
    type: str
    default: object = None
    in_base: bool = True
    configs: dict = dataclasses.field(default_factory=dict)  # config file → value, for fields outside base


def _flat(c: ml_collections.ConfigDict, prefix: str = "") -> dict[str, tuple[object, str]]:
    out = {}
    for k in c.keys():
        v = c[k]
        if isinstance(v, ml_collections.ConfigDict):
            out.update(_flat(v, prefix + k + "."))
        else:
            t = c.get_type(k)
            out[prefix + k] = (v, getattr(t, "__name__", str(t)))
    return out


def config_files(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "configs", "*.py")))


def fields(root: str) -> dict[str, Field]:
    """Every training-config field: those of `base_config()`, then those the configs in `configs/` add."""
    from lav2_jax.cli.train import load_config
    from lav2_jax.train.defaults import base_config

    out = {name: Field(name, t, v) for name, (v, t) in _flat(base_config()).items()}
    for path in config_files(root):
        for name, (v, t) in _flat(load_config(path, [])).items():
            if name not in out:
                out[name] = Field(name, t, None, in_base=False)
            if not out[name].in_base:
                out[name].configs[os.path.basename(path)] = v
    return out


def _entries(doc: str):
    """(section prefix, [names], meaning) for each field entry of a docstring."""
    prefix, entry, seen = None, None, False
    for line in (doc or "").splitlines():
        h = HEADER.match(line)
        if h:
            prefix, seen = ((h.group("section") + ".") if h.group("section") else ""), False
            continue
        if prefix is None:
            continue
        m, more = ENTRY.match(line), MORE.match(line)
        if more and entry:
            entry[2].append(more.group("text"))
        elif m:
            if entry:
                yield entry[0], entry[1], " ".join(entry[2])
            names = re.split(r", | / ", m.group("names"))
            first = prefix + names[0]
            section = first.rsplit(".", 1)[0] + "." if "." in first else ""
            full = [first] + [(prefix + n) if "." in n else section + n for n in names[1:]]
            entry, seen = (prefix, full, [m.group("text")] if m.group("text") else []), True
        else:
            if entry:
                yield entry[0], entry[1], " ".join(entry[2])
            entry = None
            if seen or line.strip():  # a blank line right under the header does not end the block
                prefix = None
    if entry:
        yield entry[0], entry[1], " ".join(entry[2])


def documented_modules() -> list[tuple[str, object]]:
    """(label, module) whose docstrings hold field entries: the defaults, then each system's train_config."""
    from lav2_jax.core import registry

    out = [("", importlib.import_module("lav2_jax.train.defaults"))]
    for name in registry.names():
        mod = f"lav2_jax.systems.{name}.train_config"
        if importlib.util.find_spec(mod) is not None:
            out.append((name, importlib.import_module(mod)))
    return out


def meanings() -> dict[str, str]:
    """Documented name pattern (may hold `<stream>`, `<group>`) → meaning; a system's note on a field the defaults
    already describe is appended with the system's name."""
    out: dict[str, str] = {}
    for label, module in documented_modules():
        for _, names, text in _entries(module.__doc__):
            for n in names:
                if n in out and label:
                    out[n] = f"{out[n]}; {label}: {text}"
                elif n not in out:
                    out[n] = (f"{label}: {text}" if label else text)
    return out


def pattern(name: str) -> re.Pattern:
    return re.compile("^" + "[^.]+".join(re.escape(part) for part in re.split(r"<\w+>", name)) + "$")


def meaning_of(name: str, docs: dict[str, str]) -> str:
    if name in docs:
        return docs[name]
    return next((text for n, text in docs.items() if "<" in n and pattern(n).match(name)), "")


def render(root: str) -> str:
    fs, docs = fields(root), meanings()
    missing = sorted(n for n in fs if not meaning_of(n, docs))
    if missing:
        raise ValueError(f"training-config fields without a documented meaning (add an entry to the docstring of "
                         f"lav2_jax.train.defaults or of the system's train_config): {missing}")
    out = []
    sections: dict[str, list[Field]] = {}
    for f in fs.values():
        if f.in_base:
            sections.setdefault(f.name.split(".")[0] if "." in f.name else "top level", []).append(f)
    order = [s for s in SECTION_ORDER if s in sections] + sorted(set(sections) - set(SECTION_ORDER))
    for section, group in ((s, sections[s]) for s in order):
        out += [f"### {section}", "", table(["field", "type", "default", "meaning"], [
            [f"`{f.name}`", f"`{f.type}`", code(f.default), cell(meaning_of(f.name, docs))] for f in group]), ""]
    extra = [f for f in fs.values() if not f.in_base]
    out += ["## Fields a system's config helper adds", "",
            "Absent from `base_config()`; the configs in `configs/` that set them, and the values they set:", "",
            table(["field", "type", "set in `configs/`", "meaning"], [
                [f"`{f.name}`", f"`{f.type}`", ", ".join(sorted({code(v) for v in f.configs.values()}))
                 + f" ({len(f.configs)} configs)", cell(meaning_of(f.name, docs))] for f in extra]), ""]
    return "\n".join(out)
