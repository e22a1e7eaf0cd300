"""The multimodal model: CLIP + connector + both fusion modes, on mixed image / text-only batches."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from lav2_jax.core import param_groups as pg
from lav2_jax.core import presets
from lav2_jax.model.factory import build_model, init_params
from model_utils import TINY, base_subset, perturb_adapters, random_tokens, tiny

VISION = presets.get_vision("tiny")
B, T = 4, 9


def mm(adapter_name, seed=0):
    model = build_model(TINY, presets.tiny_adapter(adapter_name), VISION)
    return model, init_params(model, jax.random.PRNGKey(seed))


def batch(seed=0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.normal(size=(B, VISION.image_size, VISION.image_size, 3)), jnp.float32)
    has_image = jnp.asarray([True, False, True, False])
    return random_tokens(B, T, TINY.vocab_size, seed), images, has_image


@pytest.mark.parametrize("adapter_name", ["paper", "release-bias", "release-lora-bias"])
def test_identity_at_init_with_images(adapter_name):
    model, params = mm(adapter_name)
    base_model, base_params = tiny("none")
    tokens, images, has_image = batch()
    base = base_model.apply({"params": base_subset(params, base_params)}, tokens)
    out = model.apply({"params": params}, tokens, images, has_image)
    chex.assert_shape(out, (B, T, TINY.vocab_size))
    np.testing.assert_allclose(np.asarray(out), np.asarray(base), rtol=0, atol=1e-6)


def test_official_fusion_adds_visual_tokens_to_adapter_prompts():
    """Official fusion with visual tokens V == the same model whose adapter prompts are adapter_query + V."""
    model, params = mm("release-bias")
    params = perturb_adapters(params, scale=0.3)
    tokens = random_tokens(1, T, TINY.vocab_size)
    vis = jax.random.normal(jax.random.PRNGKey(3), (1, model.adapter.query_len, TINY.dim))
    fused = model.apply({"params": params}, tokens, visual_tokens=vis)
    shifted = dict(params, adapter_query=params["adapter_query"] + vis[0][None])
    text_only = build_model(TINY, model.adapter.replace(visual_fusion="none"))
    moved = {k: v for k, v in shifted.items() if k not in ("clip", "connector")}
    np.testing.assert_allclose(fused, text_only.apply({"params": moved}, tokens), atol=1e-5, rtol=0)
    assert float(jnp.abs(fused - model.apply({"params": params}, tokens, visual_tokens=0 * vis)).max()) > 1e-4


def test_official_text_only_rows_see_a_zero_image():
    model, params = mm("release-bias")
    params = perturb_adapters(params, scale=0.3)
    tokens, images, has_image = batch()
    mixed = model.apply({"params": params}, tokens, images, has_image)
    zeros = model.apply({"params": params}, tokens, jnp.zeros_like(images), jnp.ones((B,), bool))
    no_images = model.apply({"params": params}, tokens)  # an image-less call: every row sees the zero image
    np.testing.assert_allclose(mixed[1], zeros[1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(mixed[3], no_images[3], atol=1e-5, rtol=0)
    assert float(jnp.abs(mixed[0] - zeros[0]).max()) > 1e-4


def _prompt_contributions(model, params, *args):
    _, state = model.apply({"params": params}, *args, mutable=["intermediates"])
    attn = state["intermediates"]["layers"]["attention"]
    per_layer = lambda name: np.asarray(jnp.abs(attn[name][0]).reshape(model.config.n_layers, -1).max(-1))  # noqa
    return {name: per_layer(name) for name in attn}


def test_early_fusion_layer_placement():
    """Visual prompts reach only layers < K (and only image rows); adapter prompts only layers >= n - L."""
    adapter = presets.tiny_adapter("paper").replace(early_layers=1, prompt_layers=2)
    model = build_model(TINY, adapter, VISION)
    params = perturb_adapters(init_params(model, jax.random.PRNGKey(0)), scale=0.3)
    tokens, images, has_image = batch()
    contrib = _prompt_contributions(model, params, tokens, images, has_image)
    n = TINY.n_layers
    layers = np.arange(n)
    assert np.all(contrib["visual_prompt_out"][layers < 1] > 1e-4)
    assert np.all(contrib["visual_prompt_out"][layers >= 1] == 0)
    assert np.all(contrib["adapter_prompt_out"][layers >= n - 2] > 1e-4)
    assert np.all(contrib["adapter_prompt_out"][layers < n - 2] == 0)
    # text-only rows get no visual prompts: their logits do not depend on the image
    other = jnp.asarray(np.random.default_rng(9).normal(size=images.shape), jnp.float32)
    a = model.apply({"params": params}, tokens, images, has_image)
    b = model.apply({"params": params}, tokens, other, has_image)
    np.testing.assert_array_equal(np.asarray(a[~np.asarray(has_image)]), np.asarray(b[~np.asarray(has_image)]))
    assert float(jnp.abs(a[0] - b[0]).max()) > 1e-4


def _loss(model, trainable, frozen, tokens, images, has_image):
    logits = model.apply({"params": pg.merge(trainable, frozen)}, tokens, images, has_image)
    targets = jnp.roll(tokens, -1, axis=1)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


@pytest.mark.parametrize("adapter_name", ["paper", "release-bias"])
def test_jit_forward_backward_mixed_batch(adapter_name):
    """Caption-group loss: non-zero, finite gradients for the connector (and early gates); CLIP is never
    differentiated (it is not among the differentiated leaves)."""
    model, params = mm(adapter_name)
    params = perturb_adapters(params, scale=0.3)
    recipe = "paper-joint" if adapter_name == "paper" else "release-pretrain"
    labels = pg.param_groups(params, recipe, model.adapter)
    caption, frozen = pg.split(params, labels, ["caption"])
    assert "clip" in frozen and "clip" not in caption and "connector" in caption
    tokens, images, has_image = batch()
    loss, grads = jax.jit(jax.value_and_grad(lambda c, f: _loss(model, c, f, tokens, images, has_image)))(
        caption, frozen)
    assert np.isfinite(float(loss))
    flat = traverse_util.flatten_dict(grads)
    assert set(flat) == set(traverse_util.flatten_dict(caption))
    for path, g in flat.items():
        assert np.all(np.isfinite(g)), path
        assert float(jnp.abs(g).max()) > 0, path
    if adapter_name == "paper":
        assert ("visual_gate",) in flat


def test_info_reports_visual_counts_at_7b():
    from lav2_jax.cli.info import param_report

    release = param_report("llama1-7b", "release-bias")
    assert release["adapter_total"] == 63_095_552  # exactly the released BIAS-7B file
    assert release["clip"] == 303_966_208  # OpenAI ViT-L/14 visual tower
    paper = param_report("llama1-7b", "paper")
    # 4,256,800 language side (see test_info) + one-block connector: 590,592 + 1,536 clip_proj, 20×768 queries,
    # 7,087,872 block, 3,149,824 + 8,192 visual_proj; the early visual gate (32) is part of the language side.
    connector = 590_592 + 1_536 + 20 * 768 + 7_087_872 + 3_149_824 + 8_192
    assert paper["adapter_total"] == 4_256_800 + connector == 15_110_176
    assert paper["recipes"]["paper-joint"]["caption"] == connector + 32
