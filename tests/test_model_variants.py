"""chex variants (jit / no jit) of the core modules, and remat policies that change memory, not results."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lav2_jax.core import presets
from lav2_jax.model.adapted_dense import AdaptedDense
from lav2_jax.model.attention import Attention
from lav2_jax.model.factory import build_model, init_params
from lav2_jax.model.norms import RMSNorm
from model_utils import TINY, perturb_adapters, random_tokens, visual_kwargs


class VariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_rmsnorm(self):
        x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8)) * 3
        norm = RMSNorm(eps=1e-6)
        params = norm.init(jax.random.PRNGKey(1), x)
        y = self.variant(norm.apply)(params, x)
        chex.assert_shape(y, (2, 3, 8))
        np.testing.assert_allclose(np.sqrt(np.mean(np.square(y), -1)), 1.0, atol=1e-4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_adapted_dense(self):
        x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))
        layer = AdaptedDense(6, ("embed", "mlp"), bias=True, scale="output", lora_rank=2)
        params = layer.init(jax.random.PRNGKey(1), x)
        chex.assert_shape(self.variant(layer.apply)(params, x), (2, 5, 6))

    @chex.variants(with_jit=True, without_jit=True)
    def test_attention(self):
        adapter = presets.tiny_adapter("release-lora-bias")
        x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, TINY.dim))
        pos = jnp.broadcast_to(jnp.arange(5), (2, 5))
        prompts = {"adapter": jnp.ones((1, adapter.prompt_len, TINY.dim)), "adapter_on": jnp.float32(1)}
        layer = Attention(TINY, adapter)
        params = layer.init(jax.random.PRNGKey(1), x, pos, prompts)
        out, cache = self.variant(lambda p, x: layer.apply(p, x, pos, prompts))(params, x)
        chex.assert_shape(out, (2, 5, TINY.dim))
        assert cache is None

    @chex.variants(with_jit=True, without_jit=True)
    def test_transformer(self):
        model = build_model(TINY, presets.tiny_adapter("paper"))
        params = init_params(model, jax.random.PRNGKey(0))
        tokens = random_tokens(2, 7, TINY.vocab_size)
        kw = visual_kwargs(model, 2)
        out = self.variant(lambda p, t: model.apply({"params": p}, t, **kw))(params, tokens)
        chex.assert_shape(out, (2, 7, TINY.vocab_size))
        chex.assert_tree_all_finite(out)


@pytest.mark.parametrize("policy", ["full", "dots", "save_attn_ffn_out"])
def test_remat_policy_same_loss_and_grads(policy):
    adapter = presets.tiny_adapter("release-lora-bias")
    ref_model = build_model(TINY, adapter)
    model = build_model(TINY.replace(remat_policy=policy), adapter)
    params = perturb_adapters(init_params(ref_model, jax.random.PRNGKey(0)), scale=0.3)
    tokens = random_tokens(2, 8, TINY.vocab_size)
    kw = visual_kwargs(model, 2)

    def loss(m):
        return jax.jit(jax.value_and_grad(lambda p: jnp.mean(m.apply({"params": p}, tokens, **kw) ** 2)))(params)

    (l0, g0), (l1, g1) = loss(ref_model), loss(model)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    chex.assert_trees_all_close(g0, g1, atol=1e-6, rtol=1e-5)


def test_every_parameter_has_logical_axes():
    import flax.linen as nn
    from flax import traverse_util

    from lav2_jax.model.factory import abstract_params
    from lav2_jax.core.sharding import LOGICAL_RULES

    known = {name for name, _ in LOGICAL_RULES}
    model = build_model(TINY, presets.tiny_adapter("release-lora-bias"), presets.get_vision("tiny"))
    boxed = traverse_util.flatten_dict(abstract_params(model, boxed=True))
    for path, leaf in boxed.items():
        assert isinstance(leaf, nn.LogicallyPartitioned), path
        assert len(leaf.names) == len(leaf.value.shape), path
        assert all(n is None or n in known for n in leaf.names), (path, leaf.names)


def test_program_size_independent_of_depth():
    """One scanned layer body: the traced program does not grow with n_layers (80 layers compile like 1)."""
    adapter = presets.tiny_adapter("release-bias").replace(prompt_layers=1)
    tokens = jnp.ones((1, 4), jnp.int32)

    def n_eqns(layers):
        model = build_model(TINY.replace(n_layers=layers), adapter)
        params = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))
        jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, tokens, **visual_kwargs(model, 1)))(params)
        return len(jaxpr.jaxpr.eqns)

    assert n_eqns(2) == n_eqns(16)


def test_unscanned_layers_equal_scanned():
    """`scan_layers=False` over `unstack_layers(params)` is the same function (forward, prefill and decode)."""
    from lav2_jax.model.factory import unscanned, unstack_layers
    from lav2_jax.model.kv_cache import init_cache

    model = build_model(TINY, presets.tiny_adapter("paper"))
    params = perturb_adapters(init_params(model, jax.random.PRNGKey(0)), scale=0.3)
    flat_model, flat_params = unscanned(model), unstack_layers(params, TINY.n_layers)
    assert "layers" not in flat_params and f"layers_{TINY.n_layers - 1}" in flat_params
    tokens = random_tokens(2, 7, TINY.vocab_size)
    kw = visual_kwargs(model, 2)
    np.testing.assert_allclose(flat_model.apply({"params": flat_params}, tokens, **kw),
                               model.apply({"params": params}, tokens, **kw), atol=1e-6, rtol=0)
    pos = jnp.broadcast_to(jnp.arange(7), (2, 7))
    outs = []
    for m, p in ((model, params), (flat_model, flat_params)):
        cache = init_cache(TINY, model.adapter, 2, 16, with_visual=True)
        _, cache = m.apply({"params": p}, tokens, positions=pos, cache=cache, **kw)
        outs.append(m.apply({"params": p}, tokens[:, :1], positions=jnp.full((2, 1), 7), cache=cache,
                            decode=True)[0])
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-6, rtol=0)
