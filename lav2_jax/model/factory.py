"""Building and initialising models: the one place that knows which dummy inputs a configuration needs."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lav2_jax.core import registry
from lav2_jax.core.config import AdapterConfig, ModelConfig, VisionConfig
from lav2_jax.model.transformer import Transformer


def build_model(config: ModelConfig, adapter: AdapterConfig, vision: Optional[VisionConfig] = None) -> Transformer:
    """The Transformer of `adapter`'s system (`lav2_jax.core.registry.of`), with that system's visual front-end
    (`System.visual_front_end`) after its config checks (`System.check_configs`)."""
    adapter.check(config)
    system = registry.of(adapter)
    system.check_configs(adapter, vision)
    front_end = system.visual_front_end(adapter)
    if adapter.splice is not None and front_end is None:
        raise ValueError(f"system {system.name!r} has no visual front-end for a spliced visual path "
                         f"(SpliceConfig.system={adapter.splice.system!r})")
    return Transformer(config, adapter, vision, front_end)


def dummy_inputs(model: Transformer, batch: int = 1, length: int = 1) -> dict:
    """Abstract inputs that touch every parameter of `model` (visual tokens or images when it has a fusion mode)."""
    inputs = {"tokens": jax.ShapeDtypeStruct((batch, length), jnp.int32)}
    splice = model.adapter.splice
    if splice is not None:  # a spliced system: one image slot (or its visual tokens) per row
        if model.vision is not None:
            s = model.vision.image_size
            inputs["images"] = jax.ShapeDtypeStruct((batch, 1, s, s, 3), jnp.float32)
        else:
            inputs["visual_tokens"] = jax.ShapeDtypeStruct((batch, 1, splice.n_tokens, model.config.dim), jnp.float32)
    if model.adapter.has_visual:
        if model.vision is not None:
            s = model.vision.image_size
            inputs["images"] = jax.ShapeDtypeStruct((batch, s, s, 3), jnp.float32)
            inputs["has_image"] = jax.ShapeDtypeStruct((batch,), jnp.bool_)
        else:
            inputs["visual_tokens"] = jax.ShapeDtypeStruct((batch, model.adapter.query_len, model.config.dim),
                                                           jnp.float32)
    return inputs


def _zeros(inputs: dict) -> dict:
    return {k: jnp.zeros(v.shape, v.dtype) for k, v in inputs.items()}


def init_params(model: Transformer, rng: jax.Array, boxed: bool = False) -> dict:
    """Random parameters (frozen weights in their weight dtype, adapters in float32; adapters at identity)."""
    inputs = _zeros(dummy_inputs(model))

    @jax.jit
    def init(rng, inputs):
        params = model.init(rng, inputs.pop("tokens"), **inputs)["params"]
        return params if boxed else nn.unbox(params)

    return init(rng, inputs)


def abstract_params(model: Transformer, boxed: bool = False) -> dict:
    """ShapeDtypeStructs of every parameter, via `jax.eval_shape` (allocates nothing: 65B answers in seconds)."""
    inputs = dummy_inputs(model)

    def init(rng, tokens, **kw):
        return model.init(rng, tokens, **kw)["params"]

    params = jax.eval_shape(init, jax.ShapeDtypeStruct((2,), jnp.uint32), inputs.pop("tokens"), **inputs)
    return params if boxed else nn.unbox(params)


def unstack_layers(params: dict, n_layers: int, consume: bool = False) -> dict:
    """Stacked `layers/...` [L, ...] → `layers_0 … layers_{L-1}` (the tree of a `scan_layers=False` model).

    `consume=True` frees each stacked array as soon as its L slices exist (the caller must not use `params`
    afterwards), so host memory peaks at the weights plus one stacked leaf instead of two copies of the weights.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params["layers"])
    per_layer = [[] for _ in range(n_layers)]
    for leaf in leaves:
        slices = [leaf[i] for i in range(n_layers)]
        if consume and isinstance(leaf, jax.Array):
            jax.block_until_ready(slices)
            leaf.delete()
        for i, x in enumerate(slices):
            per_layer[i].append(x)
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(n_layers):
        out[f"layers_{i}"] = jax.tree_util.tree_unflatten(treedef, per_layer[i])
    return out


def unscanned(model: Transformer) -> Transformer:
    """The same model with its layers as a Python loop (`ModelConfig.scan_layers=False`)."""
    return model.clone(config=model.config.replace(scan_layers=False))
