"""Per-group AdamW for the disjoint parameter groups (paper §4.2, docs/design.md §6, §3.3).

`build_optimizer` returns an `optax.multi_transform` over the labels `caption`, `instruction` and `frozen`
(`optax.set_to_zero()`); each trainable group gets its own AdamW (betas 0.9/0.95 by default), its own learning rate
with a linear warmup then a half-cycle cosine per step (the released schedule; a group's `decay="linear"` decays
linearly instead, the Hugging Face Trainer's default that mPLUG-Owl's release uses), and its own weight decay,
applied only to leaves whose role is not a per-layer vector (biases, scales, gates: `NO_DECAY_PATTERN`) and whose
per-layer rank is ≥ 2 (no decay on 1-D tensors and biases, docs/design.md §3.3.4). Schedules count global steps
(`with_schedule_count`).

The optimizer is only ever given the *trainable* leaves (`lav2_jax.core.param_groups.split`): frozen weights are never
differentiated and hold no optimizer state; the `frozen` entry only guarantees that a frozen leaf handed to it by
mistake is zeroed rather than passed through (`optax.masked` alone would pass raw gradients, docs/design.md §6.1).

Gradient clipping is done by the train step (`lav2_jax.train.step`), per stream (each stream's gradients by their own
global norm), because a step may update only some groups and must leave the others' optimizer state untouched.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from lav2_jax.core.param_groups import GROUPS

TRAINABLE_GROUPS = ("caption", "instruction")


def learning_rate(base_lr: float, global_batch: int, scale_by_batch: bool) -> float:
    """`lr = blr * global_batch / 256` when `scale_by_batch` (the released rule), else `base_lr` itself."""
    return base_lr * global_batch / 256.0 if scale_by_batch else base_lr


DECAYS = ("cosine", "linear")


def warmup_cosine(peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0, decay: str = "cosine"):
    """Linear warmup from 0 to `peak_lr` over `warmup_steps`, then a half-cycle cosine down to `min_lr` at
    `total_steps`, evaluated per optimizer step (the released per-iteration schedule). `decay="linear"`: a straight
    line down to `min_lr` instead (`transformers.get_linear_schedule_with_warmup` with min_lr 0)."""
    if decay not in DECAYS:
        raise ValueError(f"learning-rate decay {decay!r}: expected one of {DECAYS}")
    warmup_steps = max(int(warmup_steps), 0)
    decay_steps = max(int(total_steps) - warmup_steps, 1)

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm = peak_lr * count / max(warmup_steps, 1)
        progress = jnp.clip((count - warmup_steps) / decay_steps, 0.0, 1.0)
        shape = 1.0 - progress if decay == "linear" else 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(count < warmup_steps, warm, min_lr + (peak_lr - min_lr) * shape)

    return schedule


# Leaves whose role is a vector per layer (whatever axes stack them: [D], [L, D] scanned, [K, N] visual gates):
# biases, norm and linear-adapter scales, zero-init gates. They are never decayed (docs/design.md §3.3.4: no weight
# decay on 1-D tensors and biases); the rule reads the leaf's name, not logical axis names, so it holds without them.
NO_DECAY_PATTERN = r"(^|/)(bias|scale|gate|new_gate|visual_gate|class_embedding)$"
_NO_DECAY = re.compile(NO_DECAY_PATTERN)


def decay_mask(params: Mapping, logical_names: Mapping | None = None) -> dict:
    """True where weight decay applies: the leaf's role is not a per-layer vector (`NO_DECAY_PATTERN`), and its
    rank is ≥ 2 once its stacked `layers` axes are discounted.

    `logical_names` (a tree of logical axis-name tuples, e.g. from `nn.get_partition_spec` of boxed params) only
    refines the rank rule for leaves the pattern does not name; without them only leaves under `layers/` count one
    stacked axis.
    """
    flat = traverse_util.flatten_dict(params)
    names = traverse_util.flatten_dict(logical_names) if logical_names is not None else {}
    out = {}
    for path, leaf in flat.items():
        axes = names.get(path)
        stacked = sum(1 for a in tuple(axes) if a == "layers") if axes is not None else int(path[0] == "layers")
        role_vector = _NO_DECAY.search("/".join(str(k) for k in path)) is not None
        out[path] = not role_vector and (len(leaf.shape) - stacked) >= 2
    return traverse_util.unflatten_dict(out)


def group_transform(lr: float, warmup_steps: int, total_steps: int, weight_decay: float, b1: float, b2: float,
                    eps: float, mask, min_lr: float = 0.0, decay: str = "cosine") -> optax.GradientTransformation:
    """AdamW with the warmup + half-cycle cosine (or linear, `decay`) schedule for one group."""
    return optax.adamw(warmup_cosine(lr, warmup_steps, total_steps, min_lr, decay), b1=b1, b2=b2, eps=eps,
                       weight_decay=weight_decay, mask=mask)


def build_optimizer(trainable: Mapping, labels: Mapping, groups_cfg: Mapping[str, Any], total_steps: int,
                    global_batch: int | Mapping[str, int], logical_names: Mapping | None = None
                    ) -> optax.GradientTransformation:
    """`optax.multi_transform` for a trainable tree `trainable` with group `labels` (same structure).

    groups_cfg[group] has: base_lr, scale_lr_by_batch, warmup_steps, weight_decay, b1, b2, eps, min_lr, and
    optionally decay (cosine | linear; default cosine).
    `total_steps` is the number of optimizer steps of the run (the cosine reaches `min_lr` there); `global_batch`
    (one number or one per group) scales the learning rate when `scale_lr_by_batch`.
    """
    mask = decay_mask(trainable, logical_names)
    transforms: dict[str, optax.GradientTransformation] = {"frozen": optax.set_to_zero()}
    for g in TRAINABLE_GROUPS:
        c = groups_cfg[g]
        lr = learning_rate(c["base_lr"], _batch_of(global_batch, g), c.get("scale_lr_by_batch", True))
        transforms[g] = group_transform(lr, c.get("warmup_steps", 0), total_steps, c.get("weight_decay", 0.0),
                                        c.get("b1", 0.9), c.get("b2", 0.95), c.get("eps", 1e-8), mask,
                                        c.get("min_lr", 0.0), c.get("decay", "cosine"))
    return optax.multi_transform(transforms, labels)


def _batch_of(global_batch, group: str) -> int:
    return int(global_batch[group]) if isinstance(global_batch, Mapping) else int(global_batch)


def group_learning_rates(groups_cfg: Mapping[str, Any], total_steps: int, global_batch, step: int
                         ) -> dict[str, float]:
    """The learning rate each trainable group uses at optimizer step `step` (for logging)."""
    out = {}
    for g in TRAINABLE_GROUPS:
        c = groups_cfg[g]
        lr = learning_rate(c["base_lr"], _batch_of(global_batch, g), c.get("scale_lr_by_batch", True))
        out[g] = float(warmup_cosine(lr, c.get("warmup_steps", 0), total_steps, c.get("min_lr", 0.0),
                                     c.get("decay", "cosine"))(step))
    return out


def with_schedule_count(opt_state, groups, count):
    """`opt_state` (of `build_optimizer`) with the learning-rate schedule count of each group in `groups` set to
    `count` (the global step), so a group whose update was skipped stays on the global schedule and the logged
    learning rate is the applied one. Adam's own count (bias correction) is left alone: it counts moment updates."""
    inner = dict(opt_state.inner_states)
    count = jnp.asarray(count, jnp.int32)

    def sync(s):
        return s._replace(count=count.astype(s.count.dtype)) if isinstance(s, optax.ScaleByScheduleState) else s

    for g in groups:
        inner[g] = jax.tree_util.tree_map(sync, inner[g], is_leaf=lambda s: isinstance(s, optax.ScaleByScheduleState))
    return opt_state._replace(inner_states=inner)


def state_leaf_count(opt_state) -> int:
    """Number of scalars in an optimizer state (array leaves only)."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(opt_state) if hasattr(x, "size"))


assert set(TRAINABLE_GROUPS) | {"frozen"} == set(GROUPS)
