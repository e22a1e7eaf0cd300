"""`lav2 serve --ckpt C [--host 127.0.0.1] [--port 8000] [--max-batch 8] [--api-key-file F]`: the HTTP server.

An OpenAI-compatible chat API (`POST /v1/chat/completions`, `GET /v1/models`, `GET /health`) and a chat page at
`GET /` (`lav2_jax.serve`). Concurrent requests are batched into one engine call (up to `--max-batch`, gathered
for `--batch-wait-ms`); at most `--max-queue` requests wait, the rest get 503 with Retry-After. Bound to
127.0.0.1 unless `--host` says otherwise; `--api-key-file` (a file holding one token) requires
`Authorization: Bearer <token>` on /v1 routes. `--port 0` picks a free port. The first line on stdout is
"lav2 serve: http://HOST:PORT (model NAME)" once the socket listens.
"""

from __future__ import annotations

# Heavy modules (jax, the model, TFDS, torch) are imported inside the functions that use them: `lav2` start-up time.

import argparse
import os
import sys

from lav2_jax.cli.errors import UserError
from lav2_jax.cli.generate import load_bundle


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint directory (save_pretrained / lav2 convert)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0 = any free port)")
    p.add_argument("--max-batch", type=int, default=8, help="most requests per engine call (1 = no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a request waits for companions")
    p.add_argument("--max-queue", type=int, default=64, help="most waiting requests; more get 503")
    p.add_argument("--api-key-file", default=None, help="file holding the bearer token clients must send")
    p.add_argument("--model-name", default=None, help="name in /v1/models (default: the checkpoint folder's)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"), help="override the checkpoint dtype")
    g = p.add_argument_group("request defaults and limits")
    g.add_argument("--temperature", type=float, default=0.1, help="when a request gives none (0 = greedy)")
    g.add_argument("--top-p", type=float, default=0.75, help="when a request gives none")
    g.add_argument("--system", default=None, help="system text when a request has none (default: the template's)")
    g.add_argument("--max-tokens", type=int, default=256, help="new tokens when a request gives no max_tokens")
    g.add_argument("--max-tokens-limit", type=int, default=512, help="the most max_tokens a request may ask")
    g.add_argument("--max-prompt-tokens", type=int, default=0, help="templated prompt cap (0 = context - 1)")
    g.add_argument("--max-body-bytes", type=int, default=8 * 2**20, help="request body cap")
    g.add_argument("--max-image-bytes", type=int, default=4 * 2**20, help="decoded image file cap")
    g.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="image width*height cap")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn log level (default info)")


def read_api_key(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            key = f.read().strip()
    except OSError as e:
        raise UserError(f"cannot read --api-key-file {path}: {e.strerror or e}") from None
    if not key or any(ch.isspace() for ch in key):
        raise UserError(f"--api-key-file {path}: the file must hold one token (no spaces), not empty")
    return key


def settings_from(args):
    from lav2_jax.serve.app import ServeSettings
    from lav2_jax.serve.schema import Defaults, Limits

    for name in ("max_batch", "max_tokens", "max_tokens_limit", "max_body_bytes", "max_image_bytes",
                 "max_image_pixels"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_queue < 0 or args.max_prompt_tokens < 0 or args.batch_wait_ms < 0:
        raise UserError("--max-queue, --max-prompt-tokens and --batch-wait-ms must be >= 0")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UserError("--temperature must be >= 0 and --top-p in (0, 1]")
    if args.max_tokens > args.max_tokens_limit:
        raise UserError("--max-tokens must be <= --max-tokens-limit")
    limits = Limits(max_body_bytes=args.max_body_bytes, max_image_bytes=args.max_image_bytes,
                    max_image_pixels=args.max_image_pixels, max_prompt_tokens=args.max_prompt_tokens,
                    max_tokens=args.max_tokens_limit)
    defaults = Defaults(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                        system=args.system)
    name = args.model_name or os.path.basename(os.path.normpath(os.path.abspath(args.ckpt)))
    key = read_api_key(args.api_key_file) if args.api_key_file else None
    return ServeSettings(model_name=name, limits=limits, defaults=defaults, api_key=key, max_batch=args.max_batch,
                         batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue)


def run(args) -> int:
    try:
        from lav2_jax.serve.app import create_app
        from lav2_jax.serve.server import bind, serve, url_of
    except ImportError as e:
        raise UserError(f"lav2 serve needs the serve extra (pip install -e \".[serve]\"): {e}") from None
    settings = settings_from(args)
    bundle = load_bundle(args)
    try:
        sock = bind(args.host, args.port)
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    if args.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        print(f"lav2 serve: warning: listening on {args.host} without --api-key-file: anyone who can reach this "
              "address can use the model", file=sys.stderr, flush=True)
    print(f"lav2 serve: {url_of(sock)} (model {settings.model_name})", flush=True)
    serve(create_app(bundle, settings), sock, log_level=args.log_level)
    return 0
