"""Every `lav2 ...` command line in the code blocks of README.md and of every page under docs/ parses against the
real CLI, so neither the README nor the documentation can drift.

Lines are taken from fenced code blocks other than python/json/text ones (console `$ lav2 ...` lines too),
continuation lines ending in `\\` are joined, shell comments dropped. `lav2 train` / `lav2 compile --config` lines
also load their config file with the `--config.x=y` overrides applied, which fails on a field the config does not
have.
"""

import glob
import os
import re
import shlex

import pytest

from lav2_jax.cli.main import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
NOT_SHELL = ("python", "py", "json", "text")  # code blocks whose `lav2 ...` lines are not commands


def readme_commands(text: str) -> list[str]:
    out = []
    for info, block in FENCE.findall(text):
        if info.strip().split(" ")[0] in NOT_SHELL:
            continue
        lines, pending = [], ""
        for raw in block.splitlines():
            line = raw.strip()
            if pending:
                line = pending + " " + line
                pending = ""
            if line.endswith("\\"):
                pending = line[:-1].strip()
                continue
            lines.append(line)
        for line in lines:
            if line.startswith("$ "):
                line = line[2:].strip()
            if line.startswith("lav2 "):
                out.append(line)
    return out


def test_extractor_handles_console_continuations_and_comments():
    text = "```console\n$ lav2 info --model tiny   # counts\nout\n```\n```bash\nlav2 train --config c.py \\\n" \
           "    --workdir w\n```\n"
    assert readme_commands(text) == ["lav2 info --model tiny   # counts", "lav2 train --config c.py --workdir w"]
    assert shlex.split(readme_commands(text)[0], comments=True) == ["lav2", "info", "--model", "tiny"]
    assert readme_commands("```python\nlav2 = systems.get('lav2')\n```\n") == []


def commands_of(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return readme_commands(f.read())


PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT)
                               for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
COMMANDS = commands_of(os.path.join(ROOT, "README.md"))
PAGE_COMMANDS = [(page, line) for page in PAGES for line in commands_of(os.path.join(ROOT, page))]


def test_readme_has_commands():
    assert len(COMMANDS) >= 15
    assert any(c.startswith("lav2 demo") for c in COMMANDS)


def test_docs_have_commands():
    pages = {page for page, _ in PAGE_COMMANDS if page.startswith("docs/")}
    assert len(pages) >= 15, sorted(pages)
    assert sum(page.startswith("docs/") for page, _ in PAGE_COMMANDS) >= 100


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.mark.parametrize("page,line", PAGE_COMMANDS)
def test_readme_command_parses(parser, page, line):
    argv = shlex.split(line, comments=True)[1:]
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{page}: command does not parse ({e.code}): {line}")
    config = getattr(args, "config", None)
    if args.command in ("train", "compile") and config:
        from lav2_jax.cli.train import load_config

        path = os.path.join(ROOT, config)
        assert os.path.isfile(path), f"{page} names a config that does not exist: {config}"
        load_config(path, list(getattr(args, "overrides", None) or []))
