"""Helpers for the inference tests: a character tokenizer, tiny bundles with open gates, a no-cache reference."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lav2_jax.core import presets
from lav2_jax.model.factory import build_model, init_params
from flax import traverse_util

from model_utils import TINY


class CharTokenizer:
    """id = ord(c) + 3 for characters below 253; BOS 1, EOS 2 (configurable), pad 0. Fits the tiny vocab (256)."""

    def __init__(self, bos_id: int = 1, eos_id: int = 2, pad_id: int = 0):
        self.bos_id, self.eos_id, self.pad_id, self.vocab_size = bos_id, eos_id, pad_id, 256

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = [ord(ch) % 253 + 3 for ch in text]
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_continuation(self, text: str) -> list[int]:
        return self.encode(text)

    def decode(self, ids) -> str:
        return "".join(chr(int(i) - 3) if int(i) >= 3 else "" for i in ids)


@dataclasses.dataclass
class TinyBundle:
    model: Any
    params: dict
    tokenizer: Any
    channel_order: str = "rgb"


def _perturb(params: dict, seed: int, scale: float, visual_gain: float) -> dict:
    """As `model_utils.perturb_adapters` (non-kernel leaves and the whole connector move away from identity), with
    host-side noise (no compilation); the connector's output LayerNorm is then multiplied by `visual_gain` so that
    visual tokens are large enough to change greedy choices of a tiny random model (its 0.02-scale k/v kernels
    shrink prompt contributions)."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in sorted(traverse_util.flatten_dict(params).items()):
        leaf = np.asarray(leaf)
        if path[0] == "connector" or (path[0] != "clip" and path[-1] not in ("kernel", "embedding")):
            leaf = leaf + scale * rng.standard_normal(leaf.shape).astype(leaf.dtype)
        if path[:2] == ("connector", "visual_proj_norm"):
            leaf = leaf * visual_gain
        out[path] = jnp.asarray(leaf)
    return traverse_util.unflatten_dict(out)


@functools.lru_cache(maxsize=None)
def tiny_bundle(adapter_name: str = "release-bias", vision: bool = False, seed: int = 0, scale: float = 0.3,
                visual_gain: float = 100.0, config=TINY) -> TinyBundle:
    """A tiny float32 model (optionally with the tiny CLIP tower) whose adapters are perturbed (gates open).

    Cached: tests share bundles (and so their compilations); treat the result as read-only.
    """
    adapter = presets.tiny_adapter(adapter_name, config) if adapter_name != "none" else presets.get_adapter("none")
    model = build_model(config, adapter, presets.get_vision("tiny") if vision else None)
    params = init_params(model, jax.random.PRNGKey(seed))
    params = _perturb(params, seed + 1, scale, visual_gain)
    return TinyBundle(model, params, CharTokenizer())


def random_images(n: int, size: int = 32, seed: int = 7) -> np.ndarray:
    """n clearly different "preprocessed" images [n, size, size, 3]: noise around per-image offsets and contrasts
    (plain noise images all look alike to a random tiny CLIP tower + connector)."""
    rng = np.random.default_rng(seed)
    offsets = np.linspace(-2.0, 2.0, n) if n > 1 else np.zeros(1)
    return np.stack([o + (0.2 + i % 3) * rng.standard_normal((size, size, 3)) for i, o in enumerate(offsets)]
                    ).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _forward_fn(model):
    return jax.jit(lambda p, t, **k: model.apply({"params": p}, t, **k))


def greedy_reference(bundle, prompt: str, max_new: int, image=None, width: int = 64) -> list[int]:
    """Greedy decoding by repeated full forwards without a cache (one row); stops at EOS (excluded).

    The sequence is right-padded to a fixed `width` (causal attention: padding after position t cannot change the
    logits at t), so the forward compiles once.
    """
    model, tok = bundle.model, bundle.tokenizer
    ids = tok.encode(prompt, bos=True)
    kw = {}
    if image is not None:
        kw = {"images": jnp.asarray(image)[None], "has_image": jnp.ones((1,), bool)}
    forward = _forward_fn(model)
    out: list[int] = []
    for _ in range(min(max_new, model.config.max_seq_len - len(ids))):
        seq = ids + out
        padded = np.full((1, max(width, len(seq))), tok.pad_id, np.int32)
        padded[0, :len(seq)] = seq
        nxt = int(jnp.argmax(forward(bundle.params, jnp.asarray(padded), **kw)[0, len(seq) - 1]))
        if nxt == tok.eos_id:
            break
        out.append(nxt)
    return out
