"""Conventions shared by every module: dtypes, logical-axis parameters, remat policies.

Dtype policy (Levanter-style, trainability-aware): frozen weights are stored in `weight_dtype` (bf16 by default),
trainable adapter parameters always in float32, activations in the compute `dtype`; norm statistics, softmax and
logits in float32.

Logical axes (docs/design.md §8.1): parameters and activations carry names only;
`lav2_jax.core.sharding.LOGICAL_RULES` maps them to mesh axes. Parameter names: batch, length, embed, heads,
kv_heads, head_dim, mlp, vocab, layers, prompt, plus the vision names vis_embed, vis_mlp, vis_heads, vis_tokens.
Activations use the `act_` prefix so that an activation's embed axis can stay replicated while a weight's embed axis
is sharded over `fsdp`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

Dtype = Any

TRAINABLE_DTYPE = jnp.float32


def as_dtype(name: str | Dtype) -> Dtype:
    return jnp.dtype(name) if isinstance(name, str) else name


def frozen_param(module: nn.Module, name: str, init: Callable, shape: Sequence[int], axes: Sequence[str | None],
                 dtype: str | Dtype):
    """A frozen base weight stored in `dtype` with logical `axes`."""
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), as_dtype(dtype))


def trainable_param(module: nn.Module, name: str, init: Callable, shape: Sequence[int], axes: Sequence[str | None]):
    """A trainable adapter parameter, always float32 (master weights)."""
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), TRAINABLE_DTYPE)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Logical sharding constraint on an activation (a no-op outside a mesh / rules context)."""
    return nn.with_logical_constraint(x, tuple(axes))


def tag(x: jax.Array, name: str) -> jax.Array:
    """Names an activation for the named remat policies below."""
    return checkpoint_name(x, name)


def remat_policy(name: str):
    """Named rematerialisation policies for the scanned layers (MaxText-style).

    none: keep every activation (no remat); full: save nothing, recompute the layer in the backward pass;
    dots / dots_no_batch: save matmul outputs; save_qkv_out: save the tagged q/k/v and attention outputs;
    save_attn_ffn_out: save the tagged attention and FFN block outputs only.
    """
    cp = jax.checkpoint_policies
    table = {
        "full": cp.nothing_saveable,
        "dots": cp.checkpoint_dots,
        "dots_no_batch": cp.dots_with_no_batch_dims_saveable,
        "save_qkv_out": cp.save_only_these_names("query", "key", "value", "attn_out"),
        "save_attn_ffn_out": cp.save_only_these_names("attn_out", "ffn_out"),
    }
    if name == "none":
        return None
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown remat policy {name!r}; known: none, {', '.join(table)}") from None


def maybe_remat(block_cls, policy_name: str, static_argnums: tuple = ()):
    """Wraps a module class in `nn.remat` with the named policy (identity for `none`)."""
    if policy_name == "none":
        return block_cls
    return nn.remat(block_cls, policy=remat_policy(policy_name), prevent_cse=False, static_argnums=static_argnums)


def scan_layers(block_cls, length: int, in_axes: tuple):
    """Scans `block_cls` over `length` layers: params (and sown intermediates) stacked on a leading `layers` axis."""
    return nn.scan(block_cls, variable_axes={"params": 0, "intermediates": 0},
                   split_rngs={"params": True, "dropout": True}, in_axes=in_axes,
                   length=length, metadata_params={nn.PARTITION_NAME: "layers"})
