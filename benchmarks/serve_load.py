"""Load test of `lav2 serve`: N concurrent streaming clients on 127.0.0.1, batching on and off, in one run.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/serve_load.py --preset bench-s --clients 16 --seconds 20

The model: `--ckpt DIR`, or a random one built here (`--preset`, adapter `none`, float32, a small sentencepiece
tokenizer trained on the spot, `save_pretrained` + `load_pretrained(layout="unstacked")` as `lav2 serve` loads it).
For each mode (batching on: `--max-batch`; off: max_batch 1) the same bundle is served by `create_app` +
`ServerThread` bound to 127.0.0.1 (nothing else is ever contacted). Before timing, every batch bucket the mode can
form (1, 2, 4, … max_batch) is compiled by one `BatchDecode` run each. Then `--clients` asyncio clients each send
streamed chat requests (greedy, `--max-tokens`, one of four short questions) back to back until `--seconds` have
passed or `--max-requests` have been sent in all. Measured per request: latency (send → `[DONE]`), time to first
token (send → first content chunk), completion tokens (the usage chunk). Printed: requests/s, tokens/s (completion
tokens / wall time), p50/p95/p99 latency, p50/p95 TTFT, errors (non-200 or broken streams), engine calls and mean
rows per call (`/health`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

QUESTIONS = ("What is in the picture?", "Describe the scene.", "A red bus drives past.", "Who waits at the stop?")


def build_checkpoint(work: str, preset: str) -> str:
    import jax

    from lav2_jax.core import presets
    from lav2_jax.checkpoint import save_pretrained
    from lav2_jax.data.testing import train_sentencepiece
    from lav2_jax.data.tokenizer import load_tokenizer
    from lav2_jax.model.factory import build_model, init_params

    sp = train_sentencepiece(os.path.join(work, "tokenizer.model"), vocab_size=400)
    vocab = load_tokenizer(sp).vocab_size
    config = presets.get_model(preset).replace(vocab_size=vocab, weight_dtype="float32", dtype="float32")
    model = build_model(config, presets.get_adapter("none"))
    params = init_params(model, jax.random.PRNGKey(0))
    return save_pretrained(os.path.join(work, preset), model, params, tokenizer=sp)


def warm(bundle, max_batch: int, max_tokens: int, system: str) -> None:
    """Compiles every batch bucket up to `max_batch` for these prompts (the first call of each shape compiles)."""
    from lav2_jax.core import templates
    from lav2_jax.serve.decode import BatchDecode

    prompts = [templates.chat_prompt([("human", q)], system) for q in QUESTIONS]
    size = 1
    while True:
        n = min(size, max_batch)
        dec = BatchDecode(bundle, [prompts[i % 4] for i in range(n)], None, [max_tokens] * n, 0.0, 1.0, 0)
        while dec.advance():
            pass
        if n == max_batch:
            return
        size *= 2


async def one_request(client, question: str, max_tokens: int) -> dict:
    payload = {"messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": max_tokens,
               "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, tokens, ok = None, 0, False
    async with client.stream("POST", "/v1/chat/completions", json=payload) as r:
        if r.status_code != 200:
            await r.aread()
            return {"ok": False}
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                ok = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                break
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif ttft is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - t0
    return {"ok": ok, "latency": time.perf_counter() - t0, "ttft": ttft, "tokens": tokens}


async def load(url: str, clients: int, seconds: float, max_requests: int, max_tokens: int) -> tuple[list, float]:
    import httpx

    results: list[dict] = []
    sent = 0
    t_end = time.perf_counter() + seconds

    async def worker(k: int, client) -> None:
        nonlocal sent
        while time.perf_counter() < t_end and sent < max_requests:
            sent += 1
            try:
                results.append(await one_request(client, QUESTIONS[(k + sent) % 4], max_tokens))
            except httpx.HTTPError:
                results.append({"ok": False})

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k, client) for k in range(clients)))
        return results, time.perf_counter() - t0


def pct(values: list, q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=None, help="checkpoint to serve (default: a random --preset model)")
    ap.add_argument("--preset", default="bench-s")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0, help="bound on each mode's load phase")
    ap.add_argument("--max-requests", type=int, default=400, help="bound on each mode's request count")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=8)
    args = ap.parse_args()
    import httpx

    from lav2_jax.checkpoint import load_pretrained
    from lav2_jax.serve.app import ServeSettings, create_app
    from lav2_jax.serve.schema import Defaults
    from lav2_jax.serve.server import ServerThread

    system = "A chat."
    with tempfile.TemporaryDirectory() as work:
        ckpt = args.ckpt or build_checkpoint(work, args.preset)
        bundle = load_pretrained(ckpt, layout="unstacked")
        rows = []
        for mode, max_batch in (("batching on", args.max_batch), ("batching off", 1)):
            warm(bundle, max_batch, args.max_tokens, system)
            settings = ServeSettings(model_name="load", defaults=Defaults(system=system), max_batch=max_batch,
                                     max_queue=max(64, 2 * args.clients))
            with ServerThread(create_app(bundle, settings), host="127.0.0.1") as server:
                results, wall = asyncio.run(load(server.url, args.clients, args.seconds, args.max_requests,
                                                 args.max_tokens))
                health = httpx.get(server.url + "/health").json()
            good = [r for r in results if r["ok"]]
            lat = [r["latency"] for r in good]
            ttft = [r["ttft"] for r in good if r["ttft"] is not None]
            calls = max(health["engine_calls"], 1)
            rows.append((mode, max_batch, len(results), len(good) / wall, sum(r["tokens"] for r in good) / wall,
                         pct(lat, 50), pct(lat, 95), pct(lat, 99), pct(ttft, 50), pct(ttft, 95),
                         len(results) - len(good), health["engine_calls"], health["requests"] / calls))
    name = args.ckpt or args.preset
    print(f"\nmodel {name}, {args.clients} clients, max_tokens {args.max_tokens}, greedy, streamed, "
          f"{args.seconds:g} s or {args.max_requests} requests per mode\n")
    print("| mode | max batch | requests | req/s | tok/s | p50 s | p95 s | p99 s | TTFT p50 s | TTFT p95 s | errors "
          "| engine calls | rows/call |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.1f} | {r[5]:.3f} | {r[6]:.3f} | {r[7]:.3f} "
              f"| {r[8]:.3f} | {r[9]:.3f} | {r[10]} | {r[11]} | {r[12]:.2f} |")
    on, off = rows
    print(f"\nbatching on / off: {on[3] / off[3]:.2f}x requests/s, {on[4] / off[4]:.2f}x tokens/s")


if __name__ == "__main__":
    main()
