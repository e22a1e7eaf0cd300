"""Gradients reach every trainable group (finite, non-zero); frozen weights are not differentiated at all."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from lav2_jax.core import param_groups as pg
from model_utils import perturb_adapters, random_tokens, tiny, visual_kwargs


def ce_loss(model, params, tokens, **kw):
    logits = model.apply({"params": params}, tokens, **kw)
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))


@pytest.mark.parametrize("adapter_name,recipe", [("paper", "paper-joint"), ("release-lora-bias", "release-pretrain"),
                                                 ("release-lora-bias", "release-finetune"), ("chat65b", "chat65b")])
def test_group_gradients(adapter_name, recipe):
    model, params = tiny(adapter_name)
    params = perturb_adapters(params, scale=0.3)  # at init zero gates/LoRA-B give prompts/LoRA-A zero gradients
    labels = pg.param_groups(params, recipe, model.adapter)
    trainable, frozen = pg.split(params, labels)
    tokens = random_tokens(4, 10, model.config.vocab_size)
    kw = visual_kwargs(model, 4)

    grads = jax.jit(jax.grad(lambda t, f: ce_loss(model, pg.merge(t, f), tokens, **kw)))(trainable, frozen)
    flat_grads = traverse_util.flatten_dict(grads)
    flat_labels = traverse_util.flatten_dict(labels)
    # the differentiated tree is exactly the trainable leaves: no frozen leaf gets a gradient
    assert set(flat_grads) == {k for k, g in flat_labels.items() if g != "frozen"}
    groups = {flat_labels[k] for k in flat_grads}
    assert groups, "recipe has trainable parameters"
    for path, g in flat_grads.items():
        assert np.all(np.isfinite(g)), path
        assert float(jnp.abs(g).max()) > 0, f"zero gradient for {'/'.join(path)}"


def test_frozen_kernels_never_differentiated():
    """The gradient jaxpr w.r.t. trainables produces no cotangent with the shape of a frozen kernel."""
    model, params = tiny("paper")
    labels = pg.param_groups(params, "paper-joint", model.adapter)
    trainable, frozen = pg.split(params, labels)
    tokens = random_tokens(2, 6, model.config.vocab_size)
    kw = visual_kwargs(model, 2)
    jaxpr = jax.make_jaxpr(jax.grad(lambda t, f: ce_loss(model, pg.merge(t, f), tokens, **kw)))(trainable, frozen)
    out_shapes = {tuple(v.aval.shape) for v in jaxpr.jaxpr.outvars}
    frozen_shapes = {tuple(v.shape) for v in jax.tree_util.tree_leaves(frozen)}
    trainable_shapes = {tuple(v.shape) for v in jax.tree_util.tree_leaves(trainable)}
    assert not (out_shapes & (frozen_shapes - trainable_shapes))
