"""Functional KV cache (Gemma-style: a plain dict of arrays, threaded through `apply`).

Layout (stacked over layers so the scanned decoder slices it per layer):
  layers/k, layers/v                   [L, B, S, K, H]   slot s holds the token at absolute position s
  layers/adapter_k, layers/adapter_v   [L, B, P, K, H]   adapter-prompt keys/values (prompted models)
  layers/visual_k, layers/visual_v     [L, B, Q, K, H]   early-fusion visual-prompt keys/values (with images)
  visual_on                            [B]               1.0 for rows with an image (early fusion)
Prefill (`decode=False`) writes prompt keys/values once; decode steps read them. Rows may have different lengths:
row b writes its token at slot `positions[b]` and attends to slots `<= positions[b]`, so stale slots past a row's
position never leak in.
"""

from __future__ import annotations

import jax.numpy as jnp

from lav2_jax.core.config import AdapterConfig, ModelConfig
from lav2_jax.model.common import as_dtype


def init_cache(config: ModelConfig, adapter: AdapterConfig, batch: int, max_len: int, *, with_visual: bool = False,
               dtype=None) -> dict:
    """An empty cache for `batch` rows of up to `max_len` positions."""
    dtype = as_dtype(dtype or config.dtype)
    L, K, H = config.n_layers, config.kv_heads, config.head_dim
    zeros = lambda n: jnp.zeros((L, batch, n, K, H), dtype)  # noqa: E731
    layers = {"k": zeros(max_len), "v": zeros(max_len)}
    if adapter.has_prompts:
        layers["adapter_k"], layers["adapter_v"] = zeros(adapter.prompt_len), zeros(adapter.prompt_len)
    cache = {"layers": layers}
    if adapter.visual_fusion == "early" and with_visual:
        layers["visual_k"], layers["visual_v"] = zeros(adapter.query_len), zeros(adapter.query_len)
        cache["visual_on"] = jnp.zeros((batch,), jnp.float32)
    return cache
