"""Gated prompt attention — LLaMA-Adapter's zero-initialised attention (paper §3, §4.3; docs/design.md §3.1.3).

For a layer with prompt tokens P [B|1, len, D] the prompts' keys/values come from the layer's own wk/wv (with their
bias/scale adapter, without LoRA, without RoPE). The queries are the layer's ordinary (rotated) queries. Prompt
scores get their own softmax over the prompt tokens (no mask), are weighted per head by `gate_w` — tanh(gate[h]),
times `new_gate` for LoRA checkpoints, times 0/1 flags for layers or samples without prompts — and `scores @ v_P`
is added to the causal attention output before wo. With gate = 0 the layer is exactly the frozen layer.

Shapes: B batch, T query length, P prompt length, K kv heads, G query heads per kv head (N = K·G), H head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def prompt_kv(wk, wv, prompts: jax.Array, n_kv_heads: int, head_dim: int) -> tuple[jax.Array, jax.Array]:
    """prompts [B|1, P, D] → keys, values [B|1, P, K, H] through the layer's adapted wk / wv, without LoRA."""
    lead = prompts.shape[:-1]
    k = wk(prompts, use_lora=False).reshape(*lead, n_kv_heads, head_dim)
    v = wv(prompts, use_lora=False).reshape(*lead, n_kv_heads, head_dim)
    return k, v


def gate_weight(gate: jax.Array, new_gate: jax.Array | None = None, on: jax.Array | None = None) -> jax.Array:
    """tanh(gate) [N] (× new_gate scalar) (× on [B] or scalar flags) → per-head weights [B|1, N] float32."""
    w = jnp.tanh(gate.astype(jnp.float32))[None, :]
    if new_gate is not None:
        w = w * new_gate.astype(jnp.float32).reshape(())
    if on is not None:
        w = w * jnp.reshape(on.astype(jnp.float32), (-1, 1))
    return w


def gated_prompt_attention(q: jax.Array, k_p: jax.Array, v_p: jax.Array, weight: jax.Array,
                           mask: jax.Array | None = None) -> jax.Array:
    """q [B, T, K, G, H] (already scaled by 1/sqrt(H)); k_p, v_p [B|1, P, K, H]; weight [B|1, N] → [B, T, K, G, H].

    `mask` [B, 1, 1, T, P] bool (packed rows, `lav2_jax.model.segments.prompt_mask`): the softmax runs over the
    query's own segment's prompts only; a query with no prompt in its segment gets an exact zero."""
    scores = jnp.einsum("BTKGH,BPKH->BKGTP", q, k_p.astype(q.dtype), preferred_element_type=jnp.float32)
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    if mask is not None:
        probs = jnp.where(mask, probs, 0.0)
    n_kv, groups = q.shape[2], q.shape[3]
    probs = probs * weight.reshape(weight.shape[0], n_kv, groups, 1, 1)
    return jnp.einsum("BKGTP,BPKH->BTKGH", probs.astype(q.dtype), v_p.astype(q.dtype))
