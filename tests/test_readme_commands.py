"""Every `lav2 ...` command line in README.md's code blocks parses against the real CLI, so the README cannot drift.

Lines are taken from fenced code blocks (console `$ lav2 ...` lines too), continuation lines ending in `\\` are
joined, shell comments dropped. `lav2 train` / `lav2 compile --config` lines also load their config file with
the `--config.x=y` overrides applied, which fails on a field the config does not have.
"""

import os
import re
import shlex

import pytest

from lav2_jax.cli.main import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def readme_commands(text: str) -> list[str]:
    out = []
    for block in FENCE.findall(text):
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


with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    COMMANDS = readme_commands(f.read())


def test_readme_has_commands():
    assert len(COMMANDS) >= 15
    assert any(c.startswith("lav2 demo") for c in COMMANDS)


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_parses(parser, line):
    argv = shlex.split(line, comments=True)[1:]
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"README command does not parse ({e.code}): {line}")
    config = getattr(args, "config", None)
    if args.command in ("train", "compile") and config:
        from lav2_jax.cli.train import load_config

        path = os.path.join(ROOT, config)
        assert os.path.isfile(path), f"README names a config that does not exist: {config}"
        load_config(path, list(getattr(args, "overrides", None) or []))
