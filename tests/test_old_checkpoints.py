"""Checkpoints written before the systems registry still load (tests/data/old_checkpoints, made by
tests/data/make_old_checkpoints.py with the code of commit d4ffbee): one tiny float32 model per system, its
config.json without a `system` entry. Today's `load_pretrained` must find the same system, the same parameter paths
in the same items (base / adapter) and give the logits the old code computed for a fixed input."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from lav2_jax.checkpoint import load_pretrained
from lav2_jax.checkpoint.items import item_shapes
from lav2_jax.checkpoint.pretrained import split_params

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "old_checkpoints")


@pytest.fixture(scope="module")
def reference():
    with np.load(os.path.join(DATA, "logits.npz")) as f:
        return dict(f)


@pytest.mark.parametrize("system", ["lav2", "llava", "owl"])
def test_old_checkpoint_loads_with_its_logits(system, reference):
    path = os.path.join(DATA, system)
    with open(os.path.join(path, "config.json")) as f:
        assert "system" not in json.load(f)  # written before config.json named its system
    bundle = load_pretrained(path)
    assert bundle.config.system == system and bundle.tokenizer is None
    assert (bundle.model.adapter.splice is None) == (system == "lav2")

    # the same parameter paths, split the same way between the base and adapter items
    base, adapter = split_params(bundle.model, bundle.params)
    for item, leaves in (("base", base), ("adapter", adapter)):
        assert set(item_shapes(os.path.join(path, item))) == set(leaves), item
    assert adapter and all(v.dtype == jnp.float32 for v in traverse_util.flatten_dict(bundle.params).values())

    tokens, images = reference[f"{system}/tokens"], reference[f"{system}/images"]
    has_image = reference.get(f"{system}/has_image")
    apply = lambda im: np.asarray(bundle.model.apply(  # noqa: E731
        {"params": bundle.params}, jnp.asarray(tokens), jnp.asarray(im),
        None if has_image is None else jnp.asarray(has_image)))
    out, expected = apply(images), reference[f"{system}/logits"]
    assert out.shape == expected.shape == tokens.shape + (bundle.model.config.vocab_size,)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    # the visual path is part of the check: row 0 holds an image (row 1 none), and blanking it changes row 0 only
    blank = apply(np.zeros_like(images))
    assert float(np.abs(blank[0] - expected[0]).max()) > 1e-3
    np.testing.assert_allclose(blank[1], expected[1], rtol=0, atol=1e-6)
