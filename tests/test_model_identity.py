"""Every adapter preset is the identity at init: adapted logits equal the frozen base model's (docs/design.md §3.1)."""

import chex
import jax
import numpy as np
import pytest

from lav2_jax.model.factory import abstract_params
from model_utils import base_subset, random_tokens, tiny, tiny_model, visual_kwargs

ADAPTERS = ["paper", "release-bias", "release-lora-bias", "chat65b", "lora"]


@pytest.mark.parametrize("adapter_name", ADAPTERS)
def test_adapted_equals_base_at_init(adapter_name):
    model, params = tiny(adapter_name, seed=0)
    base_model, base_params = tiny("none", seed=0)
    base_params = base_subset(params, base_params)  # the adapted model's own base weights
    tokens = random_tokens(3, 11, model.config.vocab_size)
    base = base_model.apply({"params": base_params}, tokens)
    adapted = model.apply({"params": params}, tokens, **visual_kwargs(model, 3))
    # f32 with s=1, b=0, B_lora=0, tanh(0)=0: every added term is an exact zero. XLA may still fuse the scale
    # multiply into the matmul and reorder its reduction (seen: 6e-8 for `output`/`input` scales), hence 1e-6.
    np.testing.assert_allclose(np.asarray(adapted), np.asarray(base), rtol=0, atol=1e-6)
    chex.assert_shape(adapted, (3, 11, model.config.vocab_size))


def test_base_weights_are_shared_paths():
    """Adapted parameter trees contain the base tree unchanged (same paths, shapes, dtypes)."""
    base = abstract_params(tiny_model("none"))
    for name in ADAPTERS:
        sub = base_subset(abstract_params(tiny_model(name)), base)
        chex.assert_trees_all_equal_shapes_and_dtypes(sub, base)


def test_adapter_changes_logits_once_moved():
    """Sanity for the test above: with non-zero gates/biases the logits do differ."""
    from model_utils import perturb_adapters

    model, params = tiny("release-lora-bias")
    tokens = random_tokens(2, 7, model.config.vocab_size)
    kw = visual_kwargs(model, 2)
    before = model.apply({"params": params}, tokens, **kw)
    after = model.apply({"params": perturb_adapters(params)}, tokens, **kw)
    assert float(jax.numpy.max(jax.numpy.abs(after - before))) > 1e-3
