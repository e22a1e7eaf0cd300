"""KV cache: prefill + single-token steps reproduce one full forward (rows of different lengths, with prompts)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lav2_jax.model.kv_cache import init_cache
from model_utils import perturb_adapters, random_tokens, tiny, visual_kwargs


@pytest.mark.parametrize("adapter_name", ["none", "release-lora-bias", "paper"])
def test_prefill_then_decode_equals_full_forward(adapter_name):
    model, params = tiny(adapter_name)
    params = perturb_adapters(params, scale=0.3)  # open the gates so prompts and visual tokens matter
    B, steps, S = 3, 4, 24
    lengths = np.array([5, 9, 7])  # right-padded prompts of different lengths
    seq = random_tokens(B, int(lengths.max()) + steps, model.config.vocab_size, seed=3)
    vis = visual_kwargs(model, B)
    full = model.apply({"params": params}, seq, **vis)  # [B, T, V]

    cache = init_cache(model.config, model.adapter, B, S, with_visual="visual_tokens" in vis)
    prefill_len = int(lengths.max())
    positions = jnp.broadcast_to(jnp.arange(prefill_len), (B, prefill_len))
    apply = jax.jit(lambda p, t, pos, c, **kw: model.apply({"params": p}, t, positions=pos, cache=c, **kw),
                    static_argnames=())
    logits, cache = apply(params, seq[:, :prefill_len], positions, cache, **vis)
    for b, n in enumerate(lengths):  # each row's prompt part equals the full forward
        np.testing.assert_allclose(logits[b, :n], full[b, :n], atol=1e-5, rtol=0)

    step = jax.jit(lambda p, t, pos, c: model.apply({"params": p}, t, positions=pos, cache=c, decode=True))
    for j in range(steps):
        pos = jnp.asarray(lengths + j, jnp.int32)[:, None]  # row b continues at its own position
        tok = jnp.take_along_axis(seq, pos, axis=1)
        logits, cache = step(params, tok, pos, cache)
        ref = jnp.take_along_axis(full, pos[:, :, None], axis=1)
        np.testing.assert_allclose(logits, ref, atol=1e-5, rtol=0)


def test_decode_reads_prompt_kv_from_cache():
    """Decode steps use the prompt keys/values written at prefill: corrupting them changes the output."""
    model, params = tiny("release-bias")
    params = perturb_adapters(params, scale=0.3)
    B, T = 2, 5
    seq = random_tokens(B, T + 1, model.config.vocab_size)
    vis = visual_kwargs(model, B)
    cache = init_cache(model.config, model.adapter, B, 16)
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    _, cache = model.apply({"params": params}, seq[:, :T], positions=pos, cache=cache, **vis)
    assert float(jnp.abs(cache["layers"]["adapter_k"]).max()) > 0
    step_pos = jnp.full((B, 1), T, jnp.int32)
    good, _ = model.apply({"params": params}, seq[:, T:], positions=step_pos, cache=cache, decode=True)
    cache["layers"]["adapter_k"] = cache["layers"]["adapter_k"] * 0
    bad, _ = model.apply({"params": params}, seq[:, T:], positions=step_pos, cache=cache, decode=True)
    assert float(jnp.abs(good - bad).max()) > 1e-4
