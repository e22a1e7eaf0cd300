"""Causal attention in query blocks (`ModelConfig.attention="blocked"`, `lav2_jax.model.blocked_attention`) equals
the plain XLA attention: the core on packed rows (values and gradients), and the whole tiny model's logits."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from lav2_jax.core import presets
from lav2_jax.model import blocked_attention
from lav2_jax.model.factory import build_model, init_params
from lav2_jax.model.segments import causal_mask, segment_positions
from tests.model_utils import perturb_adapters

TINY = presets.get_model("tiny")


def _plain(q, k, v, positions, segment_ids):
    """The full-T × T reference: the XLA branch of `lav2_jax.model.attention.Attention`."""
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
    scores = jnp.where(causal_mask(positions, positions, segment_ids, segment_ids), scores,
                       jnp.finfo(jnp.float32).min)
    return jnp.einsum("BKGTS,BSKH->BTKGH", jax.nn.softmax(scores, axis=-1), v)


def _packed_ids(B=2, T=20):
    """Segment ids of packed rows (three samples and a padding tail; one row without padding)."""
    seg = np.zeros((B, T), np.int32)
    seg[0, :7], seg[0, 7:15], seg[0, 15:18] = 1, 2, 3
    seg[1, :11], seg[1, 11:] = 1, 2
    return jnp.asarray(seg)


def test_blocked_core_equals_plain_on_packed_rows():
    B, T, K, G, H = 2, 20, 2, 2, 8
    kq, kk, kv, kc = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(kq, (B, T, K, G, H))
    k, v = jax.random.normal(kk, (B, T, K, H)), jax.random.normal(kv, (B, T, K, H))
    cot = jax.random.normal(kc, (B, T, K, G, H))
    seg = _packed_ids(B, T)
    pos = segment_positions(seg)
    for ids, positions in ((seg, pos), (None, jnp.broadcast_to(jnp.arange(T), (B, T)))):
        def loss(fn, q, k, v):
            return jnp.sum(fn(q, k, v) * cot)

        def blocked(q, k, v):
            return blocked_attention.blocked_causal_attention(q, k, v, positions, ids, block=8)

        def plain(q, k, v):
            return _plain(q, k, v, positions, ids)

        chex.assert_shape(blocked(q, k, v), (B, T, K, G, H))
        chex.assert_trees_all_close(blocked(q, k, v), plain(q, k, v), atol=1e-5)  # blocks of 8, 8, 4
        g_b = jax.grad(lambda *a: loss(blocked, *a), argnums=(0, 1, 2))(q, k, v)
        g_p = jax.grad(lambda *a: loss(plain, *a), argnums=(0, 1, 2))(q, k, v)
        chex.assert_trees_all_close(g_b, g_p, atol=1e-5)


def test_blocked_model_logits_equal_xla(monkeypatch):
    monkeypatch.setattr(blocked_attention, "BLOCK", 4)  # 5 blocks over the 20 tokens
    adapter = presets.tiny_adapter("release-bias", TINY, presets.get_vision("tiny")).replace(visual_fusion="none")
    xla = build_model(TINY, adapter, None)
    blocked = build_model(TINY.replace(attention="blocked"), adapter, None)
    params = perturb_adapters(init_params(xla, jax.random.PRNGKey(1)), scale=0.5)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 20), 3, TINY.vocab_size)
    seg = _packed_ids()
    for kw in ({}, {"segment_ids": seg}):
        want = xla.apply({"params": params}, tokens, **kw)
        got = blocked.apply({"params": params}, tokens, **kw)
        chex.assert_trees_all_close(got, want, atol=1e-5)
        assert float(jnp.abs(want).max()) > 0.1  # a real comparison, not two zero tensors
