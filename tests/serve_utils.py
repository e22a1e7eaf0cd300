"""Helpers for the `lav2 serve` tests: a tiny checkpoint, synthetic images as data URLs, request bodies, a gate."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
from PIL import Image

from ckpt_utils import write_sentencepiece
from generate_helpers import tiny_bundle
from model_utils import TINY

CFG = TINY.replace(vocab_size=64, max_seq_len=512)  # the tokenizer's vocabulary; room for long generations
SYSTEM = "S"  # a short system text keeps every test prompt in the 16-token bucket (few compilations)


def write_checkpoint(root) -> str:
    """A tiny LLaMA-Adapter V2 checkpoint with the tiny CLIP tower and a 64-piece sentencepiece tokenizer."""
    from lav2_jax.checkpoint import save_pretrained

    sp = write_sentencepiece(str(root / "tok" / "tokenizer.model"), vocab_size=64)
    b = tiny_bundle("release-bias", vision=True, config=CFG)
    return save_pretrained(str(root / "tiny-ckpt"), b.model, b.params, tokenizer=sp)


def png_bytes(width: int, height: int, seed: int = 0, noise: bool = True) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.integers(0, 255, (height, width, 3), dtype=np.uint8) if noise
              else np.full((height, width, 3), 120, np.uint8))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


def user(text: str, image_url: str | None = None) -> dict:
    if image_url is None:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                        {"type": "text", "text": text}]}


def body(messages, max_tokens: int = 8, **kw) -> dict:
    return {"messages": messages, "temperature": 0, "max_tokens": max_tokens, **kw}


class Gate:
    """Holds the batcher's next engine call until `open()`: makes "while a call runs" deterministic in tests."""

    def __init__(self, batcher):
        self.batcher, self.event, self.original = batcher, threading.Event(), batcher.run
        self.held = False

    def __enter__(self) -> "Gate":
        def run(group):
            if not self.held:
                self.held = True
                self.event.wait(600)
            return self.original(group)

        self.batcher.run = run
        return self

    def open(self) -> None:
        self.event.set()

    def __exit__(self, *exc) -> None:
        self.event.set()
        del self.batcher.run  # the class's method again
