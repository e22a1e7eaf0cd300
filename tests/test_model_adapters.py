"""Hand-checked adapters: non-zero bias/scale/LoRA/gates against plain-numpy references of docs/design.md §3.1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lav2_jax.core import presets
from lav2_jax.model.adapted_dense import AdaptedDense
from lav2_jax.model.attention import Attention
from model_utils import TINY, perturb_adapters, unbox

RNG = np.random.default_rng(0)


def np_linear(x, p, scale_kind, lora_scale=1.0, use_lora=True):
    """The three placements: output s*(Wx+b); input W(s*x)+b; bias-only Wx+b; plus alpha/r * B(Ax)."""
    h = x * p["scale"] if scale_kind == "input" else x
    y = h @ p["kernel"]
    if "bias" in p:
        y = y + p["bias"]
    if scale_kind == "output":
        y = y * p["scale"]
    if use_lora and "lora_a" in p:
        y = y + lora_scale * (x @ p["lora_a"]) @ p["lora_b"]
    return y


@pytest.mark.parametrize("scale,bias,rank", [("output", True, 0), ("input", True, 0), ("none", True, 0),
                                             ("none", False, 3), ("output", True, 3), ("input", True, 2)])
def test_adapted_dense_formula(scale, bias, rank):
    layer = AdaptedDense(12, ("embed", "mlp"), bias=bias, scale=scale, lora_rank=rank, lora_scale=0.5)
    x = jnp.asarray(RNG.normal(size=(2, 3, 8)), jnp.float32)
    params = unbox(layer.init(jax.random.PRNGKey(0), x)["params"])
    moved = {k: np.asarray(v) + (RNG.normal(size=v.shape).astype(np.float32) if k != "kernel" else 0)
             for k, v in params.items()}
    got = np.asarray(layer.apply({"params": moved}, x))
    np.testing.assert_allclose(got, np_linear(np.asarray(x), moved, scale, 0.5), atol=1e-5, rtol=0)
    no_lora = np.asarray(layer.apply({"params": moved}, x, use_lora=False))
    np.testing.assert_allclose(no_lora, np_linear(np.asarray(x), moved, scale, 0.5, use_lora=False), atol=1e-5)


def np_rope(x, positions, theta):
    """Half-split RoPE: dim i pairs with i + hd/2."""
    hd = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = positions[..., None] * inv
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
    return x * cos[:, :, None] + rot * sin[:, :, None]


def softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def np_attention(x, p, adapter, cfg, prompt_sources):
    """Causal GQA attention + Σ over prompt sources of gate_w * softmax(q k_P^T / sqrt(hd)) v_P, then wo."""
    B, T, D = x.shape
    N, K, H = cfg.n_heads, cfg.kv_heads, cfg.head_dim
    kind = lambda name: adapter.linear_kind if adapter.linear_has_scale(name) else "none"  # noqa: E731
    lin = lambda name, v, use_lora=True: np_linear(v, p[name], kind(name), adapter.lora_scale, use_lora)  # noqa
    pos = np.broadcast_to(np.arange(T), (B, T))
    q = np_rope(lin("wq", x).reshape(B, T, N, H), pos, cfg.rope_theta)
    k = np_rope(lin("wk", x).reshape(B, T, K, H), pos, cfg.rope_theta)
    v = lin("wv", x).reshape(B, T, K, H)
    rep = N // K
    k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)  # head h uses kv head h // rep
    s = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(H)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    out = np.einsum("bhts,bshd->bthd", softmax(s), v)
    for tokens, weight in prompt_sources:  # tokens [B|1, P, D], weight [B|1, N]
        kp = np.repeat(lin("wk", tokens, False).reshape(tokens.shape[0], -1, K, H), rep, axis=2)
        vp = np.repeat(lin("wv", tokens, False).reshape(tokens.shape[0], -1, K, H), rep, axis=2)
        sp = softmax(np.einsum("bthd,bphd->bhtp", q, kp) / np.sqrt(H))
        out = out + weight[:, None, :, None] * np.einsum("bhtp,bphd->bthd", sp, vp)
    return lin("wo", out.reshape(B, T, N * H))


@pytest.mark.parametrize("adapter_name", ["paper", "release-lora-bias", "chat65b"])
def test_attention_with_prompts_matches_numpy(adapter_name):
    cfg = TINY
    adapter = presets.tiny_adapter(adapter_name)
    B, T, P = 2, 6, adapter.prompt_len
    x = jnp.asarray(RNG.normal(size=(B, T, cfg.dim)), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    prompts = {}
    sources = []
    if adapter.has_prompts:
        prompts = {"adapter": jnp.asarray(RNG.normal(size=(1, P, cfg.dim)), jnp.float32),
                   "adapter_on": jnp.float32(1.0)}
    if adapter.visual_fusion == "early":
        prompts.update(visual=jnp.asarray(RNG.normal(size=(B, adapter.query_len, cfg.dim)), jnp.float32),
                       visual_gate=jnp.asarray(RNG.normal(size=(cfg.n_heads,)), jnp.float32),
                       visual_on=jnp.asarray([1.0, 0.0]))
    layer = Attention(cfg, adapter)
    params = layer.init(jax.random.PRNGKey(0), x, positions, prompts)["params"]
    params = jax.tree_util.tree_map(np.asarray, perturb_adapters(params, scale=0.25))
    if adapter.has_prompts:
        w = np.tanh(params["gate"])[None] * (params["new_gate"][0] if adapter.new_gate else 1.0)
        sources.append((np.asarray(prompts["adapter"]), w))
        assert np.all(np.abs(w) > 1e-3)
    if adapter.visual_fusion == "early":
        w = np.tanh(np.asarray(prompts["visual_gate"]))[None] * np.asarray(prompts["visual_on"])[:, None]
        sources.append((np.asarray(prompts["visual"]), w))
    got, _ = layer.apply({"params": params}, x, positions, prompts)
    ref = np_attention(np.asarray(x, np.float64), jax.tree_util.tree_map(lambda a: a.astype(np.float64), params),
                       adapter, cfg, [(t.astype(np.float64), w) for t, w in sources])
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5, rtol=0)
