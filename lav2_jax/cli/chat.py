"""`lav2 chat --ckpt C [--image PATH] [--system TEXT]`: multi-turn chat on the terminal.

Reads one human message per line from stdin (EOF, `/quit` or `/exit` ends; `/reset` forgets the history) and
streams each reply as it is produced, prefixed "Assistant: ". The conversation uses the chat template of
docs/design.md §3.3 (`lav2_jax.inference.chat.ChatSession`): when the history no longer fits the model's context with
room for `--max-new-tokens`, the oldest exchanges are dropped and a notice is printed on stderr. With `--image`,
every turn sees the image (models with a vision tower only); mPLUG-Owl takes `--image` repeated (one
`Human: <image>` line per image, before the first question).
"""

from __future__ import annotations

# Heavy modules (jax, the model, TFDS, torch) are imported inside the functions that use them: `lav2` start-up time.

import argparse
import sys

from lav2_jax.cli.errors import UserError
from lav2_jax.cli.generate import (add_sampling_arguments, check_image_path, load_bundle, model_pixels,
                                   multi_image_systems)
from lav2_jax.core import registry


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_sampling_arguments(p)
    p.add_argument("--system", default=None, help="system text (default: the 65B chat model's, docs/design.md §3.3.2)")


def run(args) -> int:
    from lav2_jax.inference import PromptError
    from lav2_jax.inference.chat import ChatSession

    import numpy as np

    paths = [check_image_path(p) for p in args.image or ()]
    bundle = load_bundle(args)
    limit = registry.of(bundle.model.adapter).max_images
    if limit is not None and len(paths) > limit:
        raise UserError(f"{len(paths)} --image given: several images per conversation are {multi_image_systems()}'s")
    pixels = [model_pixels(bundle, p) for p in paths]
    pixels = None if not pixels else pixels[0] if len(pixels) == 1 else np.stack(pixels)
    session = ChatSession(bundle, image=pixels, system=args.system, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("Human: ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            break
        message = line.strip()
        if message in ("/quit", "/exit"):
            break
        if message == "/reset":
            session.turns.clear()
            print("[history cleared]", file=sys.stderr)
            continue
        if not message:
            continue
        sys.stdout.write("Assistant: ")
        sys.stdout.flush()
        try:
            for piece in session.ask_stream(message):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except PromptError as e:
            sys.stdout.write("\n")
            raise UserError(str(e)) from None
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 0
