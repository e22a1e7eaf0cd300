"""The documentation site builds with `mkdocs build --strict` (every link, anchor, image and generated reference
resolves, no warning), and its generated reference covers the code: every `lav2` subcommand and flag (with its
help), every training-config field (with its meaning) and every `config.json` key.

The sets are taken here independently of the generators (`docs/hooks/`) and compared with the built HTML, so a
reference that misses a flag or a field, or a flag added without help, fails the suite.
"""

import argparse
import glob
import html
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from lav2_jax.cli.main import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAGS = re.compile(r"<[^>]+>")
ROW = re.compile(r"<tr>\s*(.*?)\s*</tr>", re.S)
CELL = re.compile(r"<td[^>]*>(.*?)</td>", re.S)


def text(fragment: str) -> str:
    return " ".join(html.unescape(TAGS.sub(" ", fragment)).split())


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu",
               NO_MKDOCS_2_WARNING="1")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert not warnings, "\n".join(warnings)
    return str(out)


def page(site: str, name: str) -> str:
    with open(os.path.join(site, name, "index.html"), encoding="utf-8") as f:
        return f.read()


def rows(fragment: str) -> list[list[str]]:
    """The body rows of every table in `fragment`, as lists of cell texts."""
    return [[text(c) for c in CELL.findall(r)] for r in ROW.findall(fragment) if "<td" in r]


def sections(doc: str) -> dict[str, str]:
    """Heading id → the HTML up to the next heading of any level."""
    heads = list(re.finditer(r'<h[1-6][^>]*id="([^"]+)"', doc))
    return {m.group(1): doc[m.end():(heads[i + 1].start() if i + 1 < len(heads) else len(doc))]
            for i, m in enumerate(heads)}


def commands(parser: argparse.ArgumentParser, path=("lav2",)):
    """(command words, flags) of every command in the parser tree (`--help` left out)."""
    flags, children = [], []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            children = list(a.choices.items())
        elif not isinstance(a, argparse._HelpAction):
            flags.append(a)
    yield path, flags
    for name, child in children:
        yield from commands(child, path + (name,))


def test_site_builds(site):
    for name in ("reference/cli", "reference/config", "reference/api", "reference/checkpoint", "reference/presets",
                 "tutorials/demo", "how-to/sizing", "explanation/method", "benchmarks/results", "design"):
        assert os.path.isfile(os.path.join(site, name, "index.html")), name


def test_every_subcommand_and_flag_is_in_the_cli_reference_with_its_help(site):
    secs = sections(page(site, "reference/cli"))
    for path, flags in commands(build_parser()):
        if len(path) == 1:
            continue
        anchor = "-".join(path)
        assert anchor in secs, f"`{' '.join(path)}` has no section in the CLI reference"
        table = {r[0]: r for r in rows(secs[anchor])}
        expected = {", ".join(a.option_strings) if a.option_strings else a.dest: a for a in flags}
        assert set(table) == set(expected), f"{' '.join(path)}: reference lists {sorted(table)}, parser has " \
                                            f"{sorted(expected)}"
        for name, row in table.items():
            assert row[-1], f"{' '.join(path)} {name}: no help text (give the argument a help= string)"


def _flat(c, prefix=""):
    out = set()
    for k in c.keys():
        v = c[k]
        out |= _flat(v, prefix + k + ".") if isinstance(v, ml_collections.ConfigDict) else {prefix + k}
    return out


def test_every_config_field_is_in_the_config_reference_with_its_meaning(site):
    from lav2_jax.cli.train import load_config
    from lav2_jax.train.defaults import base_config

    fields = _flat(base_config())
    for path in glob.glob(os.path.join(ROOT, "configs", "*.py")):
        fields |= _flat(load_config(path, []))
    table = {r[0]: r for r in rows(page(site, "reference/config")) if r}
    assert set(table) == fields, f"missing: {sorted(fields - set(table))}; unknown: {sorted(set(table) - fields)}"
    for name, row in table.items():
        assert row[-1], f"config field {name}: no meaning"


def test_every_config_json_key_is_in_the_checkpoint_reference(site):
    from lav2_jax.checkpoint.layout import CheckpointConfig

    listed = {r[0] for r in rows(page(site, "reference/checkpoint")) if r}
    keys = set(CheckpointConfig(model=None, adapter=None).to_json())
    assert keys <= listed, f"config.json keys missing from the reference: {sorted(keys - listed)}"


def test_api_reference_renders_the_public_functions(site):
    api = text(page(site, "reference/api"))
    for name in ("lav2_jax.checkpoint.pretrained", "load_pretrained", "lav2_jax.inference.generation.generate",
                 "lav2_jax.inference.scoring.encode_images", "lav2_jax.inference.scoring.next_token_logits",
                 "lav2_jax.systems", "lav2_jax.core.registry.register", "lav2_jax.core.system.System"):
        assert name in api, name


def test_figures_are_committed_and_referenced():
    pngs = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "docs", "img", "*.png"))}
    assert {"method.png", "sizing.png", "demo_heldout.png", "demo_report.png"} <= pngs
    scripts = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "docs", "figures", "*.py"))}
    assert {"method.py", "sizing.py", "demo_report.py"} <= scripts
