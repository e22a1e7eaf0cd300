"""The traced part of generation: prefill, one decode step, and the `lax.while_loop` decode.

Shapes (B = batch bucket, T = prompt bucket, N = new-token buffer, S = cache length, V = vocab):
  tokens [B, T] int32   right-padded prompts (BOS + prompt, no EOS); lengths [B] int32 real lengths (>= 1)
  budgets [B] int32     new tokens row b may produce (0 for padding rows); at most N
  images [B, H, W, 3] float32 and has_image [B] bool, or None
  state (a dict):  step int32 (tokens produced so far per active row, i.e. the next column of `out`),
                   tok [B] (last token of each row), cache (lav2_jax.model.kv_cache), out [B, N] int32
                   (generated ids, `pad_id` after a row stopped), count [B] int32, done [B] bool

Prefill runs the whole prompt bucket once (adapter/visual prompt keys/values are computed there and cached, so
decode steps never recompute them) and samples token 0 from each row's last real position. Each decode step feeds
row b's previous token at position `lengths[b] + step - 1` (rows of different lengths continue at their own
positions; slots past a row's position are never attended: DESIGN kv_cache semantics). A row stops at EOS or when
its budget is spent; stopped rows keep running in lockstep but their outputs are discarded (`pad_id`), and the
loop ends as soon as every row is done. Greedy selection is a static flag (no sort is compiled for it).

`generate_fn` is ONE jitted function (prefill + loop) per (model, greedy, S, N) and input shape bucket;
`prefill_fn`, `step_fn` and `loop_fn` are the same pieces jitted separately for streaming and benchmarks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lav2_jax.model.adapted_dense import AdaptedDense
from lav2_jax.model.kv_cache import init_cache
from lav2_jax.inference.sampling import select_next


def bucket(n: int, minimum: int = 16, cap: int | None = None) -> int:
    """The smallest power of two >= max(n, minimum), capped at `cap`: few distinct shapes → few compilations."""
    size = minimum
    while size < n:
        size *= 2
    return min(size, cap) if cap is not None else size


def batch_bucket(n: int, multiple: int = 1) -> int:
    """Batch sizes 1, 2, 4, 8, 16, … rounded up to a multiple of the data-parallel size `multiple`."""
    size = bucket(n, minimum=1)
    return -(-size // multiple) * multiple


def _last_logits(model, params, hidden: jax.Array, lengths: jax.Array) -> jax.Array:
    """hidden [B, T, D] (final-normed) → logits [B, V] float32 at each row's last real position only."""
    c = model.config
    last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)  # [B, 1, D]
    head = AdaptedDense(c.vocab_size, ("embed", "vocab"), weight_dtype=c.weight_dtype, dtype=c.dtype)
    return head.apply({"params": params["output"]}, last)[:, 0].astype(jnp.float32)


def _keys(key: jax.Array, step) -> jax.Array:
    return jax.random.fold_in(key, step)


def prefill(model, greedy: bool, cache_len: int, new_len: int, params, tokens, lengths, budgets, images, has_image,
            key, temperature, top_p, eos_id, pad_id) -> dict:
    """Runs the prompts through the model, fills the cache and picks token 0 of every row → state."""
    B, T = tokens.shape
    with_visual = images is not None and model.adapter.visual_fusion == "early"
    cache = init_cache(model.config, model.adapter, B, cache_len, with_visual=with_visual)
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    hidden, cache = model.apply({"params": params}, tokens, images, has_image, positions=positions, cache=cache,
                                return_hidden=True)
    tok = select_next(_keys(key, 0), _last_logits(model, params, hidden, lengths), temperature, top_p, greedy)
    active = budgets > 0
    tok = jnp.where(active, tok, pad_id)
    count = active.astype(jnp.int32)
    out = jnp.full((B, new_len), pad_id, jnp.int32).at[:, 0].set(tok)
    done = ~active | (tok == eos_id) | (count >= budgets)
    return {"step": jnp.int32(1), "tok": tok, "cache": cache, "out": out, "count": count, "done": done}


def step(model, greedy: bool, params, state: dict, lengths, budgets, key, temperature, top_p, eos_id, pad_id) -> dict:
    """One cached decode step for every row (stopped rows are computed but frozen)."""
    s = state["step"]
    cache_len = state["cache"]["layers"]["k"].shape[2]
    pos = jnp.minimum(lengths + s - 1, cache_len - 1)[:, None]  # clamp: done rows may run past their budget
    logits, cache = model.apply({"params": params}, state["tok"][:, None], positions=pos, cache=state["cache"],
                                decode=True)
    tok = select_next(_keys(key, s), logits[:, 0], temperature, top_p, greedy)
    active = ~state["done"]
    new = jnp.where(active, tok, pad_id)
    count = state["count"] + active.astype(jnp.int32)
    done = state["done"] | (active & ((tok == eos_id) | (count >= budgets)))
    out = jax.lax.dynamic_update_slice_in_dim(state["out"], new[:, None], s, axis=1)
    return {"step": s + 1, "tok": jnp.where(active, tok, state["tok"]), "cache": cache, "out": out,
            "count": count, "done": done}


def decode_loop(model, greedy: bool, params, state: dict, lengths, budgets, key, temperature, top_p, eos_id,
                pad_id) -> dict:
    """`lax.while_loop` of `step` until every row is done or the buffer [B, N] is full."""
    new_len = state["out"].shape[1]

    def cond(s):
        return (s["step"] < new_len) & ~jnp.all(s["done"])

    def body(s):
        return step(model, greedy, params, s, lengths, budgets, key, temperature, top_p, eos_id, pad_id)

    return jax.lax.while_loop(cond, body, state)


def _generate(model, greedy, cache_len, new_len, params, tokens, lengths, budgets, images, has_image, key,
              temperature, top_p, eos_id, pad_id):
    state = prefill(model, greedy, cache_len, new_len, params, tokens, lengths, budgets, images, has_image, key,
                    temperature, top_p, eos_id, pad_id)
    state = decode_loop(model, greedy, params, state, lengths, budgets, key, temperature, top_p, eos_id, pad_id)
    return state["out"], state["count"]


_STATIC = ("model", "greedy", "cache_len", "new_len")

# One compiled program per (model, greedy, cache length, buffer length) and per input shape bucket.
generate_fn = jax.jit(_generate, static_argnames=_STATIC)
prefill_fn = jax.jit(prefill, static_argnames=_STATIC)
step_fn = jax.jit(step, static_argnames=("model", "greedy"), donate_argnames=("state",))
loop_fn = jax.jit(decode_loop, static_argnames=("model", "greedy"), donate_argnames=("state",))

