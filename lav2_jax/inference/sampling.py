"""Next-token selection (docs/design.md §3.3.3).

* Greedy when the temperature is 0: `argmax(logits)` (ties → the lowest id, as `jnp.argmax`).
* Otherwise the release's top-p rule: `probs = softmax(logits / temperature)`, sorted descending; a token is
  dropped when the cumulative probability *before* it exceeds `top_p` (mask where `cumsum - p_sorted > top_p`),
  so the most likely token always survives; the survivors are renormalised and one is sampled.

Everything here is traceable (used inside the jitted decode loop of `lav2_jax.inference.generation`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def top_p_probs(logits: jax.Array, temperature: float | jax.Array, top_p: float | jax.Array) -> jax.Array:
    """logits [..., V] float → the renormalised distribution [..., V] the release samples from (float32)."""
    probs = jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    order = jnp.argsort(-probs, axis=-1, stable=True)  # descending; ties keep the lower id first
    p_sorted = jnp.take_along_axis(probs, order, axis=-1)
    drop = (jnp.cumsum(p_sorted, axis=-1) - p_sorted) > top_p
    p_sorted = jnp.where(drop, 0.0, p_sorted)
    p_sorted = p_sorted / jnp.sum(p_sorted, axis=-1, keepdims=True)
    # Scatter the kept mass back to vocabulary order: inverse permutation of `order`.
    inverse = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(p_sorted, inverse, axis=-1)


def sample_top_p(key: jax.Array, logits: jax.Array, temperature: float | jax.Array,
                 top_p: float | jax.Array) -> jax.Array:
    """logits [B, V] → token ids [B] int32 drawn from `top_p_probs` (rows drawn independently from one key)."""
    probs = top_p_probs(logits, temperature, top_p)
    log_probs = jnp.where(probs > 0, jnp.log(jnp.maximum(probs, 1e-38)), -jnp.inf)
    return jax.random.categorical(key, log_probs, axis=-1).astype(jnp.int32)


def select_next(key: jax.Array, logits: jax.Array, temperature: float | jax.Array, top_p: float | jax.Array,
                greedy: bool) -> jax.Array:
    """logits [B, V] → next token ids [B] int32. `greedy` (static) selects argmax and ignores key/temperature."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return sample_top_p(key, logits, temperature, top_p)
