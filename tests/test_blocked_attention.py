"""Causal attention in query blocks (`ModelConfig.attention="blocked"`, `lav2_jax.model.blocked_attention`): the core
on packed rows equals attention written from its definition (`tests.attention_reference`: float64 masks, softmax
and its derivative; values and gradients), and the whole tiny model's logits equal the plain XLA attention's."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from lav2_jax.core import presets
from lav2_jax.model import blocked_attention
from lav2_jax.model.factory import build_model, init_params
from lav2_jax.model.segments import segment_positions
from tests import attention_reference as ref
from tests.model_utils import perturb_adapters

TINY = presets.get_model("tiny")


def _packed_ids(B=3, T=20):
    """Segment ids of packed rows: three samples and a padding tail; two samples filling the row; padding before
    two samples (keys a real query must not see even though they come earlier)."""
    seg = np.zeros((3, T), np.int32)
    seg[0, :7], seg[0, 7:15], seg[0, 15:18] = 1, 2, 3
    seg[1, :11], seg[1, 11:] = 1, 2
    seg[2, 3:12], seg[2, 12:] = 1, 2
    return jnp.asarray(seg[:B])


def test_blocked_core_equals_reference_on_packed_rows():
    B, T, K, G, H = 3, 20, 2, 2, 8
    kq, kk, kv, kc = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(kq, (B, T, K, G, H))
    k, v = jax.random.normal(kk, (B, T, K, H)), jax.random.normal(kv, (B, T, K, H))
    cot = jax.random.normal(kc, (B, T, K, G, H))
    seg = _packed_ids(B, T)
    np.testing.assert_array_equal(segment_positions(seg), ref.positions(seg))  # restarts at every segment
    unpacked = np.ones((B, T), np.int32)
    for ids, pos, mask, real in ((seg, ref.positions(seg), ref.allowed(seg), np.asarray(seg) != 0),
                                 (None, ref.positions(unpacked), ref.allowed(unpacked), unpacked > 0)):
        def blocked(q, k, v, ids=ids, pos=jnp.asarray(pos, jnp.int32)):
            return blocked_attention.blocked_causal_attention(q, k, v, pos, ids, block=8)  # blocks of 8, 8, 4

        out = blocked(q, k, v)
        chex.assert_shape(out, (B, T, K, G, H))
        chex.assert_tree_all_finite(out)  # padding rows too: they must not poison the backward pass
        np.testing.assert_allclose(np.asarray(out)[real], ref.attention(q, k, v, mask)[real], atol=1e-5, rtol=0)
        d_out = cot * real[:, :, None, None, None]  # the loss reads real tokens only
        got = jax.grad(lambda *a: jnp.sum(blocked(*a) * d_out), argnums=(0, 1, 2))(q, k, v)
        for g, want in zip(got, ref.attention_vjp(q, k, v, mask, d_out)):
            np.testing.assert_allclose(g, want, atol=1e-5, rtol=0)
        chex.assert_tree_all_finite(jax.grad(lambda *a: jnp.sum(blocked(*a) * cot), argnums=(0, 1, 2))(q, k, v))


def test_blocked_model_logits_equal_xla(monkeypatch):
    monkeypatch.setattr(blocked_attention, "BLOCK", 4)  # 5 blocks over the 20 tokens
    adapter = presets.tiny_adapter("release-bias", TINY, presets.get_vision("tiny")).replace(visual_fusion="none")
    xla = build_model(TINY, adapter, None)
    blocked = build_model(TINY.replace(attention="blocked"), adapter, None)
    params = perturb_adapters(init_params(xla, jax.random.PRNGKey(1)), scale=0.5)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 20), 3, TINY.vocab_size)
    seg = _packed_ids(B=2)
    for kw in ({}, {"segment_ids": seg}):
        want = xla.apply({"params": params}, tokens, **kw)
        got = blocked.apply({"params": params}, tokens, **kw)
        chex.assert_trees_all_close(got, want, atol=1e-5)
        assert float(jnp.abs(want).max()) > 0.1  # a real comparison, not two zero tensors
