"""Small synthetic inputs for tests and benchmarks: a tiny sentencepiece model, images, source files.

Nothing is downloaded; everything is generated from a seed into a folder the caller owns. Only tests and benchmarks
import this module; `train_sentencepiece` lives in `lav2_jax.data.tokenizer_train` (production code uses it too)
and is offered here with the other helpers.
"""

from __future__ import annotations

import io
import json
import os
from typing import Iterable

import numpy as np
from PIL import Image

from lav2_jax.data.tokenizer_train import train_sentencepiece

__all__ = ["image_bytes", "train_sentencepiece", "write_image", "write_jsonl"]


def image_bytes(width: int, height: int, seed: int = 0, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """A random smooth-ish image encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR)
    noise = rng.integers(-20, 21, (height, width, 3))
    img = Image.fromarray(np.clip(np.asarray(img).astype(int) + noise, 0, 255).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: str, width: int, height: int, seed: int = 0, fmt: str = "PNG") -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(image_bytes(width, height, seed, fmt))
    return path


def write_jsonl(path: str, records: Iterable[object]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path
