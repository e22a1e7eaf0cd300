"""The loss head at loss positions only (`loss.position_chunk`): equal to the whole-row loss, values and gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lav2_jax.core.sharding import LOGICAL_RULES, make_mesh
from lav2_jax.train import state as state_lib
from lav2_jax.train import step as step_lib
from lav2_jax.train.defaults import base_config
from lav2_jax.train.loss import loss_positions_first, token_loss_sums
from lav2_jax.train.mesh import global_batch

B, T, D, V, P = 3, 22, 16, 48, 4


def _mask() -> np.ndarray:
    """Prompts (0), responses (1) and padding (0): row 0 prompt 5 / response 11 / padding 6 (11 loss positions, not
    a multiple of P, so a loop one chunk short drops 3 of them); row 1 no loss at all; row 2 two packed samples
    with prompts and a response at the very end (loss positions scattered over the row). 3 of the 6 chunks of
    P = 4 (T padded to 24) hold a loss position, the last 3 are all masked and must be skipped."""
    m = np.zeros((B, T), np.float32)
    m[0, 5:16] = 1
    m[2, 3:7] = 1
    m[2, 12:14] = 1
    m[2, 19:22] = 1
    return m


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((D, V)) * 0.5, jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
    return hidden, kernel, targets, jnp.asarray(_mask())


def test_loss_positions_come_first_in_row_order():
    order = np.asarray(loss_positions_first(jnp.asarray(_mask()), P))
    chex.assert_shape(order, (B, 24))
    np.testing.assert_array_equal(order[0, :11], np.arange(5, 16))
    np.testing.assert_array_equal(order[2, :9], [3, 4, 5, 6, 12, 13, 19, 20, 21])
    for row in order:  # a permutation of the row plus its padding
        np.testing.assert_array_equal(np.sort(row), np.arange(24))


@pytest.mark.parametrize("vocab_chunk", [0, 16])
def test_equals_whole_row_loss_and_gradients_under_jit(inputs, vocab_chunk):
    hidden, kernel, targets, mask = inputs

    def loss(position_chunk):
        def f(h, k):
            total, n = token_loss_sums(h, k, targets, mask, vocab_chunk, position_chunk)
            return total / n
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))

    want, (dh_want, dk_want) = loss(0)(hidden, kernel)
    got, (dh_got, dk_got) = loss(P)(hidden, kernel)
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(dh_got, dh_want, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(dk_got, dk_want, atol=1e-5, rtol=1e-5)
    # the gradient reaches every loss position (also those in the last chunk that holds one) and nothing else
    np.testing.assert_array_equal(np.abs(np.asarray(dh_got)).sum(-1) > 0, _mask() > 0)


def test_train_step_equal_with_and_without_position_chunks():
    """One step of the tiny text model on rows with prompts, responses and padding: same loss and parameters."""
    from lav2_jax.core import presets
    from lav2_jax.model.factory import build_model

    cfg = presets.get_model("tiny")
    model = build_model(cfg, presets.get_adapter("release-bias").replace(visual_fusion="none", prompt_layers=2), None)
    config = base_config()
    config.param_recipe, config.recipe, config.batch.train, config.loss.vocab_chunk = "all-adapters", "full", B, 0
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    setup, state = state_lib.build(config, mesh, model=model)
    tokens = np.random.default_rng(1).integers(3, cfg.vocab_size, (B, T + 1)).astype(np.int32)
    batch = global_batch({"train": {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": _mask()}}, mesh)
    host = jax.device_get(state)
    out = {}
    for chunk in (0, P):
        fn = step_lib.make_step_fn(setup.model, setup.labels, setup.tx, setup.streams, position_chunk=chunk)
        run = step_lib.TrainStep(fn, mesh, setup.state_shardings, setup.frozen_shardings, LOGICAL_RULES)
        new, metrics = run(jax.device_put(host, setup.state_shardings), setup.frozen, batch)
        out[chunk] = jax.device_get((new["params"], metrics["loss/train"], metrics["grad_norm/total"]))
    chex.assert_trees_all_close(out[P], out[0], atol=1e-5, rtol=1e-5)
    assert out[0][2] > 0


@pytest.mark.parametrize("vocab_chunk", [0, 16])
def test_masked_targets_outside_the_vocabulary_stay_finite(vocab_chunk):
    """A spliced system's image placeholder may lie past the vocabulary (LLaVA: id 32000 over 32000 words); its
    target carries no loss, and the loss must not turn NaN (which the step would drop as a non-finite stream)."""
    rng = np.random.default_rng(0)
    V, D = 64, 8
    hidden = jnp.asarray(rng.normal(size=(2, 6, D)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, size=(2, 6)), jnp.int32)
    mask = jnp.ones((2, 6), jnp.float32).at[:, 2:4].set(0.0)
    total, n = token_loss_sums(hidden, kernel, targets, mask, vocab_chunk)
    placeholder = targets.at[:, 2:4].set(V)  # past the vocabulary, masked
    total_p, n_p = token_loss_sums(hidden, kernel, placeholder, mask, vocab_chunk)
    chex.assert_trees_all_close((total_p, n_p), (total, n), atol=1e-6)
