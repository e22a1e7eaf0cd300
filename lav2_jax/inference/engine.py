"""The traced part of generation: prefill, one decode step, and the `lax.while_loop` decode.

Shapes (B = batch bucket, T = prompt bucket, N = new-token buffer, S = cache length, V = vocab):
  tokens [B, T] int32   right-padded prompts (BOS + prompt, no EOS); lengths [B] int32 real lengths (>= 1)
  budgets [B] int32     new tokens row b may produce (0 for padding rows); at most N
  images [B, H, W, 3] float32 and has_image [B] bool, or None

Every function takes the model (static), one `SamplingSpec` (how tokens are picked; its `greedy`, `cache_len` and
`new_len` are static, the rest are traced scalars) and the parameters; decoding carries one `DecodeState` pytree.

Prefill runs the whole prompt bucket once (adapter/visual prompt keys/values are computed there and cached, so
decode steps never recompute them) and samples token 0 from each row's last real position. Each decode step feeds
row b's previous token at position `lengths[b] + step - 1` (rows of different lengths continue at their own
positions; cache slots past a row's position are never attended, `lav2_jax.model.kv_cache`). A row stops at EOS or
when its budget is spent; stopped rows keep running in lockstep but their outputs are discarded (`pad_id`), and the
loop ends as soon as every row is done. Greedy selection is a static flag (no sort is compiled for it).

`generate_fn` is ONE jitted function (prefill + loop) per (model, greedy, S, N) and input shape bucket;
`prefill_fn`, `step_fn` and `loop_fn` are the same pieces jitted separately for streaming and benchmarks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from lav2_jax.inference.sampling import select_next
from lav2_jax.model.adapted_dense import AdaptedDense
from lav2_jax.model.kv_cache import init_cache


@struct.dataclass
class SamplingSpec:
    """How one engine call picks and stops tokens (frozen).

    Traced (changing them never recompiles): temperature [] float32 (> 0; ignored when greedy), top_p [] float32,
    eos_id / pad_id [] int32, key: the PRNG key (token k of every row is drawn with `fold_in(key, k)`).
    Static (part of the jit cache key): greedy (argmax instead of the top-p rule), cache_len S, new_len N.
    """

    temperature: jax.Array
    top_p: jax.Array
    eos_id: jax.Array
    pad_id: jax.Array
    key: jax.Array
    greedy: bool = struct.field(pytree_node=False)
    cache_len: int = struct.field(pytree_node=False)
    new_len: int = struct.field(pytree_node=False)

    @classmethod
    def create(cls, temperature: float, top_p: float, seed: int, *, eos_id: int, pad_id: int, cache_len: int,
               new_len: int) -> "SamplingSpec":
        """The spec of a user call: greedy at temperature 0, else the top-p rule at `temperature` (>= 0)."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        return cls(temperature=jnp.float32(max(temperature, 1e-6)), top_p=jnp.float32(top_p),
                   eos_id=jnp.int32(eos_id), pad_id=jnp.int32(pad_id), key=jax.random.PRNGKey(seed),
                   greedy=temperature == 0, cache_len=cache_len, new_len=new_len)


@struct.dataclass
class DecodeState:
    """What the decode loop carries.

    step [] int32: tokens produced so far per active row (the next column of `out`); tok [B] int32: last token of
    each row; cache: `lav2_jax.model.kv_cache` (length S); out [B, N] int32: generated ids (`pad_id` after a row
    stopped); count [B] int32: tokens row b produced; done [B] bool; lengths [B] / budgets [B] int32: the inputs'.
    """

    step: jax.Array
    tok: jax.Array
    cache: dict
    out: jax.Array
    count: jax.Array
    done: jax.Array
    lengths: jax.Array
    budgets: jax.Array


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


def _select(spec: SamplingSpec, logits: jax.Array, step) -> jax.Array:
    """logits [B, V] → token ids [B] int32 for token `step` of every row."""
    return select_next(jax.random.fold_in(spec.key, step), logits, spec.temperature, spec.top_p, spec.greedy)


def prefill(model, spec: SamplingSpec, params, tokens, lengths, budgets, images=None, has_image=None) -> DecodeState:
    """Runs the prompts through the model, fills the cache and picks token 0 of every row → the decode state."""
    B, T = tokens.shape
    with_visual = images is not None and model.adapter.visual_fusion == "early"
    cache = init_cache(model.config, model.adapter, B, spec.cache_len, with_visual=with_visual)
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    hidden, cache = model.apply({"params": params}, tokens, images, has_image, positions=positions, cache=cache,
                                return_hidden=True)
    tok = _select(spec, _last_logits(model, params, hidden, lengths), 0)
    active = budgets > 0
    tok = jnp.where(active, tok, spec.pad_id)
    count = active.astype(jnp.int32)
    out = jnp.full((B, spec.new_len), spec.pad_id, jnp.int32).at[:, 0].set(tok)
    done = ~active | (tok == spec.eos_id) | (count >= budgets)
    return DecodeState(step=jnp.int32(1), tok=tok, cache=cache, out=out, count=count, done=done, lengths=lengths,
                       budgets=budgets)


def step(model, spec: SamplingSpec, params, state: DecodeState) -> DecodeState:
    """One cached decode step for every row (stopped rows are computed but frozen)."""
    s = state.step
    cache_len = state.cache["layers"]["k"].shape[2]
    pos = jnp.minimum(state.lengths + s - 1, cache_len - 1)[:, None]  # clamp: done rows may run past their budget
    logits, cache = model.apply({"params": params}, state.tok[:, None], positions=pos, cache=state.cache,
                                decode=True)
    tok = _select(spec, logits[:, 0], s)
    active = ~state.done
    new = jnp.where(active, tok, spec.pad_id)
    count = state.count + active.astype(jnp.int32)
    done = state.done | (active & ((tok == spec.eos_id) | (count >= state.budgets)))
    out = jax.lax.dynamic_update_slice_in_dim(state.out, new[:, None], s, axis=1)
    return state.replace(step=s + 1, tok=jnp.where(active, tok, state.tok), cache=cache, out=out, count=count,
                         done=done)


def decode_loop(model, spec: SamplingSpec, params, state: DecodeState) -> DecodeState:
    """`lax.while_loop` of `step` until every row is done or the buffer [B, N] is full."""
    new_len = state.out.shape[1]

    def cond(s: DecodeState):
        return (s.step < new_len) & ~jnp.all(s.done)

    def body(s: DecodeState):
        return step(model, spec, params, s)

    return jax.lax.while_loop(cond, body, state)


def _generate(model, spec: SamplingSpec, params, tokens, lengths, budgets, images=None, has_image=None):
    """→ (out [B, N] int32, count [B] int32)."""
    state = prefill(model, spec, params, tokens, lengths, budgets, images, has_image)
    state = decode_loop(model, spec, params, state)
    return state.out, state.count


# One compiled program per (model, spec's static fields) and per input shape bucket.
generate_fn = jax.jit(_generate, static_argnames=("model",))
prefill_fn = jax.jit(prefill, static_argnames=("model",))
step_fn = jax.jit(step, static_argnames=("model",), donate_argnames=("state",))
loop_fn = jax.jit(decode_loop, static_argnames=("model",), donate_argnames=("state",))
