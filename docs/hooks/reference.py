"""MkDocs hook (`mkdocs.yml` `hooks:`): the reference pages are generated from the code when the site is built.

A page asks for a generated section with a line `<!-- lav2-reference: NAME -->`, NAME one of `GENERATORS`:

  cli         every `lav2` subcommand and flag, from the argparse parsers (`lav2_jax.cli.main.build_parser`)
  config      every training-config field with type, default and meaning (`lav2_jax.train.defaults`, `configs/`)
  checkpoint  the checkpoint layout and the `config.json` keys (`lav2_jax.checkpoint.layout`, `lav2_jax.core.config`)
  presets     model, adapter and vision presets, the systems and their recipes (`lav2_jax.core.registry`)

An unknown NAME, or a config field without a documented meaning, fails the build. The Python API pages use
mkdocstrings (`::: lav2_jax...`), which reads the docstrings with griffe.
"""

from __future__ import annotations

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# The checkout being documented comes first on the path (not an installed copy), then the generator modules here.
for path in (HERE, ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

import cli_ref  # noqa: E402
import config_ref  # noqa: E402
import tables_ref  # noqa: E402

MARKER = re.compile(r"^<!-- lav2-reference: (\S+) -->$", re.M)


def _cli() -> str:
    from lav2_jax.cli.main import build_parser

    return cli_ref.render(build_parser())


GENERATORS = {
    "cli": _cli,
    "config": lambda: config_ref.render(ROOT),
    "checkpoint": tables_ref.checkpoint,
    "presets": tables_ref.presets,
}


def expand(markdown: str) -> str:
    def one(m: re.Match) -> str:
        name = m.group(1)
        if name not in GENERATORS:
            raise ValueError(f"unknown reference marker {name!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(one, markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return expand(markdown)
