"""`lav2` entry point.

Each subcommand lives in `lav2_jax/cli/<name>.py`, exposes `add_arguments(parser)` and `run(args) -> int`, and is
listed in `COMMANDS`. Subcommand modules keep heavy imports (torch, TFDS, the model) inside `run`, so building the
parser stays cheap; `main` adds the arguments of the command it runs only (`convert`, `export` and `data` ask the
systems' registry for their sources, formats and kinds, which loads the systems). `UserError` is how a subcommand
reports a user's mistake: one line, no traceback, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lav2_jax.cli.errors import UserError  # noqa: F401  (re-exported: subcommands raise it)

# (subcommand, module, one-line help) — the module's add_arguments() defines the arguments.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("info", "lav2_jax.cli.info", "parameter counts of a model/adapter preset (no weights allocated)"),
    ("demo", "lav2_jax.cli.demo", "the method end to end on embedded data: priors, joint training, eval, report"),
    ("convert", "lav2_jax.cli.convert", "PyTorch weights (meta, hf, clip, official, chat65b) → orbax checkpoint"),
    ("export", "lav2_jax.cli.export", "checkpoint → released adapter file (official) or a plain HF Llama dir (hf)"),
    ("compile", "lav2_jax.cli.compile", "ahead-of-time compile for a TPU topology; per-chip memory"),
    ("train", "lav2_jax.cli.train", "train adapters (joint / pretrain / finetune recipes), resumable"),
    ("data", "lav2_jax.cli.data", "build TFDS array_record datasets from instruction, conversation or caption data"),
    ("generate", "lav2_jax.cli.generate", "generate text for a prompt (optionally an image), streaming; batch files"),
    ("chat", "lav2_jax.cli.chat", "multi-turn chat with a checkpoint (optionally about an image)"),
    ("serve", "lav2_jax.cli.serve", "OpenAI-compatible HTTP API with request batching, and a chat page"),
    ("eval", "lav2_jax.cli.eval", "benchmarks: COCO captions, MME, ScienceQA, held-out loss (resumable)"),
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `lav2` parser; with `only`, the arguments of that subcommand alone (the others parse nothing)."""
    parser = argparse.ArgumentParser(prog="lav2", description="LLaMA-Adapter V2 in JAX/Flax")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if only in (None, name):
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = {name for name, _, _ in COMMANDS}
    parser = build_parser(next((a for a in argv[:1] if a in names), ""))
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"lav2 {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
