"""VisualConnector (docs/design.md §3.2.2): numpy reference, shapes, jit, remat, dtypes and the released parameter
count."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest
from scipy.special import erf

from lav2_jax.core.config import AdapterConfig
from lav2_jax.systems.lav2.connector import VisualConnector

# CLIP output_dim 24 ≠ v_width 32, so clip_proj really changes width.
ADAPTER = AdapterConfig(query_len=5, v_depth=2, v_width=32, v_num_heads=4, v_mlp_ratio=4.0)
CLIP_DIM, N_TOKENS, OUT_DIM, BATCH = 24, 17, 48, 2


@functools.lru_cache(maxsize=None)
def _init(adapter=ADAPTER, out_dim=OUT_DIM, seed=0, noise=0.1):
    """Initialised params with every leaf perturbed (norm scales ≠ 1, biases ≠ 0) so the reference sees them all."""
    model = VisualConnector(adapter, out_dim)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, N_TOKENS, CLIP_DIM)))["params"])
    rng = np.random.default_rng(seed + 1)
    return jax.tree.map(lambda x: np.asarray(x) + noise * rng.standard_normal(x.shape).astype(np.float32), params)


def _tokens(seed=1, batch=BATCH):
    return np.random.default_rng(seed).standard_normal((batch, N_TOKENS, CLIP_DIM), np.float32)


# ---- numpy reference, float64, written from the formulas in docs/design.md §3.2.2 ---------------------------------

def _ln(x, p, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _linear(x, p):
    return x @ p["kernel"] + p["bias"]


def _softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _block(x, p, heads):
    b, t, d = x.shape
    q, k, v = np.split(_linear(_ln(x, p["norm1"]), p["attn"]["qkv"]), 3, axis=-1)
    split = lambda y: y.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)  # [B, N, T, H]
    q, k, v = split(q), split(k), split(v)
    att = _softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads)) @ v
    x = x + _linear(att.transpose(0, 2, 1, 3).reshape(b, t, d), p["attn"]["proj"])
    h = _linear(_ln(x, p["norm2"]), p["mlp"]["fc1"])
    h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))
    return x + _linear(h, p["mlp"]["fc2"])


def reference(params, clip_tokens, adapter):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = _ln(_linear(np.asarray(clip_tokens, np.float64), p["clip_proj"]), p["clip_proj_norm"])
    query = np.broadcast_to(p["visual_query"], (x.shape[0],) + p["visual_query"].shape)
    x = np.concatenate([query, x], axis=1)
    for i in range(adapter.v_depth):
        x = _block(x, jax.tree.map(lambda a: a[i], p["visual_blocks"]), adapter.v_num_heads)
    return _ln(_linear(x[:, :adapter.query_len], p["visual_proj"]), p["visual_proj_norm"])


# ---- tests -------------------------------------------------------------------------------------------------------

def test_matches_numpy_reference():
    params, tokens = _init(), _tokens()
    out = jax.jit(VisualConnector(ADAPTER, OUT_DIM).apply)({"params": params}, tokens)
    chex.assert_shape(out, (BATCH, ADAPTER.query_len, OUT_DIM))
    np.testing.assert_allclose(np.asarray(out), reference(params, tokens, ADAPTER), rtol=0, atol=1e-5)


def test_zero_depth_has_no_blocks_and_matches_reference():
    adapter = ADAPTER.replace(v_depth=0)
    params, tokens = _init(adapter), _tokens()
    assert "visual_blocks" not in params
    out = jax.jit(VisualConnector(adapter, OUT_DIM).apply)({"params": params}, tokens)
    np.testing.assert_allclose(np.asarray(out), reference(params, tokens, adapter), rtol=0, atol=1e-5)


def test_param_tree_layout_and_dtypes():
    params = _init(noise=0.0)
    L, V, Q, M = ADAPTER.v_depth, ADAPTER.v_width, ADAPTER.query_len, int(ADAPTER.v_width * ADAPTER.v_mlp_ratio)
    shapes = {jax.tree_util.keystr(k, simple=True, separator="/"): v.shape
              for k, v in jax.tree_util.tree_leaves_with_path(params)}
    assert shapes == {
        "clip_proj/kernel": (CLIP_DIM, V), "clip_proj/bias": (V,),
        "clip_proj_norm/scale": (V,), "clip_proj_norm/bias": (V,), "visual_query": (Q, V),
        "visual_blocks/norm1/scale": (L, V), "visual_blocks/norm1/bias": (L, V),
        "visual_blocks/attn/qkv/kernel": (L, V, 3 * V), "visual_blocks/attn/qkv/bias": (L, 3 * V),
        "visual_blocks/attn/proj/kernel": (L, V, V), "visual_blocks/attn/proj/bias": (L, V),
        "visual_blocks/norm2/scale": (L, V), "visual_blocks/norm2/bias": (L, V),
        "visual_blocks/mlp/fc1/kernel": (L, V, M), "visual_blocks/mlp/fc1/bias": (L, M),
        "visual_blocks/mlp/fc2/kernel": (L, M, V), "visual_blocks/mlp/fc2/bias": (L, V),
        "visual_proj/kernel": (V, OUT_DIM), "visual_proj/bias": (OUT_DIM,),
        "visual_proj_norm/scale": (OUT_DIM,), "visual_proj_norm/bias": (OUT_DIM,),
    }
    # Trainable: float32 master weights even when computing in bfloat16.
    bf16 = VisualConnector(ADAPTER, OUT_DIM, dtype="bfloat16")
    variables = {"params": params}
    out = jax.jit(bf16.apply)(variables, _tokens())
    assert out.dtype == jnp.bfloat16
    ref = np.asarray(jax.jit(VisualConnector(ADAPTER, OUT_DIM).apply)(variables, _tokens()))
    # bf16 compute against the float32 forward of the same weights: no float32 bound applies. The output is a
    # LayerNorm (|y| < 3.3 here) rounded to bf16, whose spacing is 2^-6 ≈ 0.016 in [2, 4); measured over 4 input
    # seeds: max-abs 0.0126–0.0145, relative L2 error 0.4%. Bounds: 2^-5 (two spacings) and 1%.
    err = np.asarray(out, np.float32) - ref
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=0, atol=2 ** -5)
    assert np.linalg.norm(err) / np.linalg.norm(ref) < 0.01
    init_shapes = jax.eval_shape(bf16.init, jax.random.key(0), jax.ShapeDtypeStruct((1, N_TOKENS, CLIP_DIM),
                                                                                     jnp.float32))
    assert {x.dtype for x in jax.tree.leaves(nn.unbox(init_shapes))} == {jnp.dtype(jnp.float32)}


class ConnectorVariantsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_shapes(self):
        params = _init()
        fn = self.variant(lambda p, x: VisualConnector(ADAPTER, OUT_DIM).apply({"params": p}, x))
        out = fn(params, _tokens(batch=3))
        chex.assert_shape(out, (3, ADAPTER.query_len, OUT_DIM))
        chex.assert_tree_all_finite(out)


@functools.lru_cache(maxsize=None)
def _loss_and_grads(policy: str):
    """Value and (params, input) gradients of a random linear functional of the output under a remat policy."""
    model = VisualConnector(ADAPTER, OUT_DIM, remat_policy=policy)
    cot = np.random.default_rng(3).standard_normal((BATCH, ADAPTER.query_len, OUT_DIM)).astype(np.float32)
    loss = lambda p, x: jnp.vdot(model.apply({"params": p}, x), cot)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(_init(), jnp.asarray(_tokens()))


@pytest.mark.parametrize("policy", ["full", "save_qkv_out"])
def test_remat_policy_matches_none(policy):
    value, grads = _loss_and_grads(policy)
    ref_value, ref_grads = _loss_and_grads("none")
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    chex.assert_trees_all_close(grads, ref_grads, atol=1e-5, rtol=1e-5)  # float reassociation only
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(ref_grads))  # every parameter is reached


def test_released_bias7b_parameter_count():
    """AdapterConfig(v_depth=8, v_width=768, v_num_heads=16, query_len=10), CLIP 768 → LLaMA 4096: 60,460,800."""
    adapter = AdapterConfig(v_depth=8, v_width=768, v_num_heads=16, query_len=10)
    model = VisualConnector(adapter, 4096)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 257, 768), jnp.float32))
    params = nn.unbox(shapes["params"])
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    assert count(params["visual_blocks"]) == 8 * 7_087_872
    assert count(params["clip_proj"]) + count(params["clip_proj_norm"]) == 590_592 + 1_536
    assert count(params["visual_query"]) == 7_680
    assert count(params["visual_proj"]) + count(params["visual_proj_norm"]) == 3_149_824 + 8_192
    assert count(params) == 60_460_800


if __name__ == "__main__":
    absltest.main()
