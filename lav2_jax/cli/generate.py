"""`lav2 generate --ckpt C [--image PATH ...] --prompt TEXT [--raw] [--expert caption|ocr]`.

The Alpaca template (docs/design.md §3.3.2) wraps `--prompt` (and `--input`) unless `--raw`. Tokens are streamed
to stdout as they are produced: a Python loop over one jitted decode step (one host round trip per token), which
is what lets the text appear token by token; batch runs use the single jitted prefill + `lax.while_loop` instead.

`--batch-file prompts.jsonl`: one JSON object per line, `{"prompt": ..., "input": ... (optional), "image": PATH
(optional, relative to the file's folder)}`; rows are generated `--batch-size` at a time and written as JSON lines
`{"prompt": ..., "output": ...}` (stdout, or `--output FILE`).

`--image` repeated (mPLUG-Owl): one ``Human: <image>`` line per image, image j at the j-th.

`--expert caption|ocr` (paper §4.4): the expert reads the image and its text becomes the prompt's Input field
(`lav2_jax.inference.experts`); the model itself still sees the image when it has a vision tower.
User mistakes (missing checkpoint or image, an empty or non-UTF-8 prompt, a prompt longer than the context, an
image for a text-only model, a
missing OCR engine) end with one line on stderr and exit status 2.
"""

from __future__ import annotations

# Heavy modules (jax, the model, TFDS, torch) are imported inside the functions that use them: `lav2` start-up time.

import argparse
import json
import os
import sys

from lav2_jax.cli.errors import UserError
from lav2_jax.core import registry


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared with `lav2 chat`."""
    p.add_argument("--ckpt", required=True, help="checkpoint directory (save_pretrained / lav2 convert)")
    p.add_argument("--image", default=None, action="append",
                   help="image file (for models with a vision tower, or an --expert); repeat it for several images "
                   "(mPLUG-Owl: one `Human: <image>` line each, in order)")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="tokens to generate at most; capped at the context left after the prompt (max_seq_len)")
    p.add_argument("--temperature", type=float, default=0.1, help="0 = greedy (default 0.1, the release's)")
    p.add_argument("--top-p", type=float, default=0.75, help="the release's top-p rule (docs/design.md §3.3.3)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"), help="override the checkpoint dtype")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_sampling_arguments(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the instruction (Alpaca template applied unless --raw)")
    src.add_argument("--batch-file", help="JSON lines: {\"prompt\", \"input\"?, \"image\"?} per line")
    p.add_argument("--input", default=None, help="the Alpaca Input field (context for the instruction)")
    p.add_argument("--raw", action="store_true", help="use the prompt text as is (no template)")
    p.add_argument("--expert", default=None, help="image expert whose text fills the Input field: caption, ocr")
    p.add_argument("--batch-size", type=int, default=8, help="rows per generate() call with --batch-file")
    p.add_argument("--output", default=None, help="write --batch-file results here instead of stdout")


def load_bundle(args):
    """load_pretrained(--ckpt) with user mistakes turned into UserError."""
    if not os.path.isdir(args.ckpt):
        raise UserError(f"checkpoint not found: {args.ckpt}")
    from lav2_jax.checkpoint import load_pretrained
    from lav2_jax.inference.generation import decodes_unstacked

    # Load in the layout generate() decodes with, so it never makes a second, unstacked copy of the weights.
    layout = "unstacked" if decodes_unstacked() else "scanned"
    try:
        bundle = load_pretrained(args.ckpt, dtype=args.dtype, layout=layout)
    except (ValueError, OSError) as e:
        raise UserError(f"cannot load checkpoint {args.ckpt}: {e}") from None
    if bundle.tokenizer is None:
        raise UserError(f"checkpoint {args.ckpt} has no tokenizer: neither {os.path.join(args.ckpt, 'tokenizer')}/ "
                        "nor its base checkpoint's exists; copy the model's tokenizer.model (or a Hugging Face "
                        f"tokenizer.json folder) to {os.path.join(args.ckpt, 'tokenizer')}/ (`lav2 export trained` "
                        "copies the run's --config.data.tokenizer there)")
    return bundle


def check_image_path(path: str, where: str = "") -> str:
    if not os.path.isfile(path):
        raise UserError(f"{where}image not found: {path}")
    return path


def model_pixels(bundle, path: str, where: str = ""):
    """The preprocessed image for the model, or UserError (text-only model, unreadable image)."""
    from lav2_jax.inference.experts import ExpertUnavailable, load_for_model
    from lav2_jax.data.images import ImageError

    try:
        return load_for_model(bundle, path)
    except ExpertUnavailable:
        raise UserError(f"{where}an image was given, but the checkpoint's model is text-only (no vision tower)"
                        ) from None
    except ImageError as e:
        raise UserError(f"{where}{e}") from None


class _Composer:
    """Builds each row's final prompt and model image (templates, experts) with CLI error handling."""

    def __init__(self, bundle, args):
        self.bundle, self.raw, self.expert = bundle, args.raw, None
        if args.expert:
            if args.raw:
                raise UserError("--expert fills the Alpaca Input field; it cannot be combined with --raw")
            if args.input:
                raise UserError("--expert fills the Alpaca Input field; do not also give --input")
            from lav2_jax.inference.experts import ExpertUnavailable, get_expert

            try:
                self.expert = get_expert(args.expert, bundle)
            except (ExpertUnavailable, ValueError) as e:
                raise UserError(str(e)) from None

    def __call__(self, prompt: str, input_text, image, where: str = ""):
        from lav2_jax.inference import prompts  # here: the package loads jax (the CLI's start-up time)

        check_text(prompt, "prompt", where)
        if input_text:
            check_text(input_text, "input", where)

        if self.expert is not None:
            if image is None:
                raise UserError(f"{where}--expert {self.expert.name} needs an image")
            from lav2_jax.data.images import ImageError
            from lav2_jax.inference.experts import ExpertUnavailable, expert_prompt

            try:
                text = expert_prompt(prompt, image, self.expert)
            except (ImageError, ExpertUnavailable) as e:
                raise UserError(f"{where}{e}") from None
            pixels = model_pixels(self.bundle, image, where) if self.bundle.model.vision is not None else None
            return text, pixels
        text = prompt if self.raw else prompts.instruction_prompt(  # the system's format (Alpaca, Human/AI, ...)
            self.bundle.model.adapter, prompt, input_text, image is not None)
        return text, None if image is None else model_pixels(self.bundle, image, where)

    def several(self, prompt: str, input_text, paths: list):
        """Several images for one prompt: (prompt with one `<image>` per image, pixels [k, H, W, 3])."""
        import numpy as np

        from lav2_jax.inference import prompts  # here: the package loads jax (the CLI's start-up time)

        adapter = self.bundle.model.adapter
        if self.expert is not None:
            raise UserError("--expert reads one image; give a single --image")
        if adapter.splice is None:
            raise UserError(f"{len(paths)} --image given, but this checkpoint's model takes one image per prompt "
                            f"(several images need a spliced system: {multi_image_systems()})")
        limit = registry.of(adapter).max_images
        if not self.raw and limit is not None and len(paths) > limit:
            raise UserError(f"{len(paths)} --image given: only {multi_image_systems()}'s template places several "
                            "images (or write the <image> markers yourself with --raw)")
        check_text(prompt, "prompt")
        text = prompt if self.raw else prompts.instruction_prompt(adapter, prompt, input_text, len(paths))
        return text, np.stack([model_pixels(self.bundle, p) for p in paths])


def multi_image_systems() -> str:
    """The titles of the systems whose prompts may hold several images (`System.max_images`), e.g. mPLUG-Owl."""
    return " or ".join(s.title for s in registry.all_systems() if s.max_images is None or s.max_images > 1)


def check_text(text: str, what: str, where: str = "") -> None:
    """UserError for an empty prompt, or text with bytes that are not UTF-8 (argv decodes them to surrogates)."""
    if not text.strip():
        raise UserError(f"{where}the {what} is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{where}the {what} is not valid UTF-8 text (an undecodable byte at character "
                        f"{e.start + 1})") from None


def _sampling(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)


def _read_batch_file(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise UserError(f"batch file not found: {path}")
    rows, base = [], os.path.dirname(os.path.abspath(path))
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{n}: not UTF-8 (byte {e.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not JSON: {e}") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise UserError(f"{path}:{n}: each line must be an object with a string \"prompt\"")
            if row.get("image") is not None:
                row["image"] = check_image_path(os.path.join(base, row["image"]), f"{path}:{n}: ")
            row["_where"] = f"{path}:{n}: "
            rows.append(row)
    return rows


def _run_batch(bundle, args, compose) -> int:
    from lav2_jax.inference import PromptError, generate

    rows = _read_batch_file(args.batch_file)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for start in range(0, len(rows), max(args.batch_size, 1)):
            chunk = rows[start:start + max(args.batch_size, 1)]
            composed = [compose(r["prompt"], r.get("input"), r.get("image"), r["_where"]) for r in chunk]
            images = [pix for _, pix in composed]
            try:
                result = generate(bundle, [text for text, _ in composed],
                                  images=images if any(p is not None for p in images) else None, **_sampling(args))
            except PromptError as e:
                raise UserError(f"{args.batch_file}: rows {start + 1}-{start + len(chunk)}: {e}") from None
            for r, text in zip(chunk, result.texts):
                out.write(json.dumps({"prompt": r["prompt"], "output": text}, ensure_ascii=False) + "\n")
            out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def run(args) -> int:
    from lav2_jax.inference import PromptError
    from lav2_jax.inference.streaming import stream_text

    if args.max_new_tokens < 0:
        raise UserError("--max-new-tokens must be >= 0")
    if args.temperature < 0:
        raise UserError("--temperature must be >= 0")
    paths = [check_image_path(p) for p in args.image or ()]
    if len(paths) > 1 and args.batch_file:
        raise UserError("--batch-file rows name their own image; several --image are for one --prompt")
    bundle = load_bundle(args)
    compose = _Composer(bundle, args)
    if args.batch_file:
        return _run_batch(bundle, args, compose)
    if len(paths) > 1:
        prompt, pixels = compose.several(args.prompt, args.input, paths)
    else:
        prompt, pixels = compose(args.prompt, args.input, paths[0] if paths else None)
    try:
        for piece in stream_text(bundle, prompt, pixels, **_sampling(args)):
            sys.stdout.write(piece)
            sys.stdout.flush()
    except PromptError as e:
        raise UserError(str(e)) from None
    sys.stdout.write("\n")
    return 0
