"""The jitted train step: disjoint groups, gradient accumulation, NaN guard (paper §4.2, docs/design.md §6, §8).

A *recipe* is a tuple of `Stream`s: a stream names the batch it reads (`batch[stream.batch_key]`) and the trainable
groups its loss updates. Streams of one step train disjoint groups, so each loss's gradient reaches only its own
group:

  joint     caption batch → caption group; instruction batch → instruction group (paper joint training)
  pretrain  caption batch → caption group (released stage 1)
  finetune  instruction batch → instruction group (released stage 2)
  full      one `train` batch → both groups (later recipes)

Only the trainable leaves are differentiated: for each stream the trainable tree is split into the leaves it trains
and the rest, and `jax.value_and_grad` sees the former only; frozen weights enter as a separate, never-donated
argument. Groups no stream trains (a caption-only step of the joint recipe) keep their parameters and their optimizer
state bit-identical.

State (a plain dict, what the checkpoint holds): `step` int32 [], `params` the trainable tree (float32 master
weights), `opt_state` (`optax.multi_transform` state over trainable leaves only), `rng` uint32 [2] (split every
step; the second half, folded with stream and micro-batch index, is the `dropout` rng of training-only dropout).

Batches: per stream `tokens`/`targets` int32 [B, T], `loss_mask` float32 [B, T], optionally `images` float32
[B, H, W, 3] and `has_image` bool [B] (`lav2_jax.data.pipeline`). With `accum_steps = k`, B is cut into k
micro-batches (row i goes to micro-batch i mod k, which keeps every device's rows local) scanned by `lax.scan`;
the per-token loss sums and gradient sums are accumulated and divided once by the total answer-token count, so k
micro-batches equal one batch k times larger (up to float summation order).

Non-finite loss or gradient norm in a stream: that stream's groups keep their previous parameters and optimizer
state for the step (their schedule count still advances with the global step), its gradients are zeroed before
anything else sees them, and the metrics carry `finite/<group>` = 0 for the trainer to stop on (or to skip).
`clip_norm > 0` clips each stream's gradients by that stream's own global norm, never by a norm over streams.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lav2_jax.core import param_groups as pg
from lav2_jax.train import optimizer as optim
from lav2_jax.train.loss import token_loss_sums
from lav2_jax.train.optimizer import TRAINABLE_GROUPS


@dataclasses.dataclass(frozen=True)
class Stream:
    batch_key: str
    groups: tuple[str, ...]


RECIPES: dict[str, tuple[Stream, ...]] = {
    "joint": (Stream("caption", ("caption",)), Stream("instruction", ("instruction",))),
    "pretrain": (Stream("caption", ("caption",)),),
    "finetune": (Stream("instruction", ("instruction",)),),
    "full": (Stream("train", ("caption", "instruction")),),
}


def recipe_streams(recipe: str) -> tuple[Stream, ...]:
    try:
        return RECIPES[recipe]
    except KeyError:
        raise ValueError(f"unknown training recipe {recipe!r}; known: {', '.join(RECIPES)}") from None


def check_streams(streams: tuple[Stream, ...]) -> None:
    seen: set[str] = set()
    for s in streams:
        for g in s.groups:
            if g not in TRAINABLE_GROUPS:
                raise ValueError(f"stream {s.batch_key!r}: {g!r} is not a trainable group {TRAINABLE_GROUPS}")
            if g in seen:
                raise ValueError(f"group {g!r} is trained by two streams: groups of one step must be disjoint")
            seen.add(g)


def init_state(trainable: Mapping, tx: optax.GradientTransformation, seed: int = 0) -> dict:
    """A fresh train state for trainable parameters `trainable` (float32)."""
    return {"step": jnp.zeros((), jnp.int32), "params": trainable, "opt_state": tx.init(trainable),
            "rng": jax.random.PRNGKey(seed)}


def _split_micro(x: jax.Array, k: int) -> jax.Array:
    """[B, ...] → [k, B/k, ...] with row i in micro-batch i mod k (a local reshape for row-sharded arrays)."""
    if x.shape[0] % k:
        raise ValueError(f"batch of {x.shape[0]} rows does not split into {k} micro-batches")
    return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)


def _keep(labels: Mapping, groups_ok: Mapping[str, Any], new: Mapping, old: Mapping) -> dict:
    """Per leaf: `new` where its group's flag is True (Python bool or traced bool), else `old`."""
    def pick(label, n, o):
        ok = groups_ok.get(label, False)
        if ok is True:
            return n
        if ok is False:
            return o
        return jnp.where(ok, n, o)
    return jax.tree_util.tree_map(pick, labels, new, old)


def make_step_fn(model: nn.Module, labels: Mapping, tx: optax.GradientTransformation, streams: tuple[Stream, ...],
                 accum_steps: int = 1, clip_norm: float = 0.0, vocab_chunk: int = 0,
                 position_chunk: int = 0) -> Callable:
    """The pure step `(state, frozen, batch) -> (state, metrics)`; `labels` label the trainable tree only.
    `vocab_chunk` / `position_chunk`: the loss's (`lav2_jax.train.loss.token_loss_sums`)."""
    check_streams(streams)
    k = int(accum_steps)

    def stream_grads(params, frozen, stream: Stream, mb, key):
        active, rest = pg.split(params, labels, stream.groups)

        def loss_fn(active):
            full = pg.merge(active, rest, frozen)
            hidden = model.apply({"params": full}, mb["tokens"], mb.get("images"), mb.get("has_image"),
                                 segment_ids=mb.get("segment_ids"), positions=mb.get("positions"),
                                 return_hidden=True,  # packed batches carry segment ids and positions
                                 rngs={"dropout": key})  # training-only dropout (LoRA dropout, abstractor)
            return token_loss_sums(hidden, full["output"]["kernel"], mb["targets"], mb["loss_mask"], vocab_chunk,
                                   position_chunk)

        (loss_sum, n), grads = jax.value_and_grad(loss_fn, has_aux=True)(active)
        return grads, loss_sum, n

    def accumulate(params, frozen, batch, key):
        def one(mbatch, key):
            return [stream_grads(params, frozen, s, mbatch[s.batch_key], jax.random.fold_in(key, i))
                    for i, s in enumerate(streams)]

        if k == 1:
            return one(batch, key)
        micro = jax.tree_util.tree_map(lambda x: _split_micro(x, k), batch)

        def body(carry, xs):
            mbatch, i = xs
            out = one(mbatch, jax.random.fold_in(key, 1000 + i))
            return jax.tree_util.tree_map(jnp.add, carry, out), None

        zero = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(one, jax.tree_util.tree_map(lambda x: x[0],
                                                                                              micro), key))
        carry, _ = jax.lax.scan(body, zero, (micro, jnp.arange(k)))
        return carry

    def step(state, frozen, batch):
        params = state["params"]
        rng, dropout_key = jax.random.split(state["rng"])
        per_stream = accumulate(params, frozen, batch, dropout_key)
        metrics: dict[str, jax.Array] = {}
        grads_parts, ok_groups, norms = [], {}, {}
        for s, (grads, loss_sum, n) in zip(streams, per_stream):
            grads = jax.tree_util.tree_map(lambda g: g / jnp.maximum(n, 1.0), grads)
            loss = loss_sum / jnp.maximum(n, 1.0)
            metrics[f"loss/{s.batch_key}"] = loss
            metrics[f"tokens/{s.batch_key}"] = n
            stream_norm = optax.global_norm(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(stream_norm)
            for g in s.groups:
                norms[g] = optax.global_norm(pg.split(grads, labels, (g,))[0])
                ok_groups[g] = finite
            grads_parts.append(_clip_or_zero(grads, stream_norm, finite, clip_norm))
        grads = pg.merge(*grads_parts)
        total_norm = optax.global_norm(grads)
        idle = tuple(g for g in TRAINABLE_GROUPS if g not in ok_groups)
        if idle:  # groups no stream trains: zero gradients in, previous params and state out
            grads = pg.merge(grads, jax.tree_util.tree_map(jnp.zeros_like, pg.split(params, labels, idle)[0]))
        trained = tuple(ok_groups)  # schedules count global steps, also across skipped ones (logged lr = applied)
        opt_state = optim.with_schedule_count(state["opt_state"], trained, state["step"])
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = _keep(labels, ok_groups, optax.apply_updates(params, updates), params)
        inner = dict(new_opt.inner_states)
        for g in inner:
            ok = ok_groups.get(g, False)
            if ok is False:
                inner[g] = state["opt_state"].inner_states[g]
            else:
                inner[g] = jax.tree_util.tree_map(lambda n_, o: jnp.where(ok, n_, o), inner[g],
                                                  state["opt_state"].inner_states[g])
        new_opt = optim.with_schedule_count(new_opt._replace(inner_states=inner), trained, state["step"] + 1)
        for g in TRAINABLE_GROUPS:
            if g in ok_groups:
                metrics[f"grad_norm/{g}"] = norms[g]
                metrics[f"finite/{g}"] = ok_groups[g].astype(jnp.float32)
        metrics["grad_norm/total"] = total_norm
        metrics.update(gate_metrics(new_params))
        new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": new_opt, "rng": rng}
        return new_state, metrics

    return step


def _clip_or_zero(grads, norm, finite, clip_norm: float):
    """One stream's gradients clipped by their own global norm (`clip_norm` > 0), so no stream rescales another's
    update (paper §4.2: independent groups); zeros where the stream is non-finite, so its NaN reaches no other
    group and no optimizer arithmetic (its groups keep their previous state, see `step`)."""
    def one(g):
        if clip_norm > 0:
            g = jnp.where(norm < clip_norm, g, g * (clip_norm / norm))
        return jnp.where(finite, g, jnp.zeros_like(g))
    return jax.tree_util.tree_map(one, grads)


def gate_metrics(params: Mapping) -> dict[str, jax.Array]:
    """Mean |tanh(gate)| over heads per layer [L] (adapter prompts) and [K] (visual prompts), when trainable."""
    out = {}
    layers = params.get("layers", {})
    if "gate" in layers.get("attention", {}):
        out["gate/adapter"] = jnp.abs(jnp.tanh(layers["attention"]["gate"])).mean(-1)
    if "visual_gate" in params:
        out["gate/visual"] = jnp.abs(jnp.tanh(params["visual_gate"])).mean(-1)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Shardings and the jitted step.

def batch_axes(mesh) -> tuple[str, ...]:
    """Mesh axes the batch dimension is split over (data parallel and FSDP both split the batch)."""
    return tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)


def batch_sharding(mesh, ndim: int) -> NamedSharding:
    return NamedSharding(mesh, P(batch_axes(mesh), *([None] * (ndim - 1))))


def opt_state_shardings(opt_state_shapes, param_shardings: Mapping, mesh):
    """Shardings of an optimizer state: a leaf whose path ends with a parameter's path and has its shape takes that
    parameter's sharding (AdamW moments), anything else (step counts) is replicated."""
    flat_sh = traverse_util.flatten_dict(param_shardings)
    replicated = NamedSharding(mesh, P())

    def keyname(k):
        return getattr(k, "key", getattr(k, "name", None))

    def one(path, leaf):
        keys = tuple(keyname(k) for k in path if isinstance(k, jax.tree_util.DictKey))
        for n in range(len(keys), 0, -1):
            sh = flat_sh.get(keys[-n:])
            if sh is not None and len(sh.spec) <= len(leaf.shape):
                return sh
        return replicated

    return jax.tree_util.tree_map_with_path(one, opt_state_shapes)


class TrainStep:
    """`jax.jit` of `make_step_fn` with explicit in/out shardings and the state donated.

    One compilation per batch structure and shape (the data pipeline's length buckets). Call inside nothing: the
    mesh and logical-axis rules are entered here for tracing.
    """

    def __init__(self, step_fn: Callable, mesh, state_shardings, frozen_shardings, rules):
        self.step_fn, self.mesh, self.rules = step_fn, mesh, rules
        self.state_shardings, self.frozen_shardings = state_shardings, frozen_shardings
        self._jitted: dict = {}

    def batch_shardings(self, batch):
        return jax.tree_util.tree_map(lambda x: batch_sharding(self.mesh, len(x.shape)), batch)

    def jitted(self, batch):
        key = jax.tree_util.tree_structure(batch)
        if key not in self._jitted:
            replicated = NamedSharding(self.mesh, P())
            self._jitted[key] = jax.jit(
                self.step_fn, in_shardings=(self.state_shardings, self.frozen_shardings, self.batch_shardings(batch)),
                out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))
        return self._jitted[key]

    def __call__(self, state, frozen, batch):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self.jitted(batch)(state, frozen, batch)

    def lower(self, state, frozen, batch):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self.jitted(batch).lower(state, frozen, batch)
