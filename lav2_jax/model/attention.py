"""Causal GQA self-attention with RoPE, adapted linears and gated prompts (docs/design.md §2.3, §3.1).

One module serves training (no cache), prefill (cache given, `decode=False`: writes keys/values and computes the
prompts' keys/values once into the cache) and decoding (`decode=True`: reads the prompts' keys/values from the cache,
so they are computed once per generation call, not per step).

Prompt sources handled per layer (`prompts` dict, all entries optional):
  adapter [B|1, P, D], adapter_on scalar     — adapter prompts (official fusion: + visual tokens), gate `gate` [N]
  visual [B, Pv, D], visual_gate [N], visual_on [B] — early-fusion visual prompts with their own gate
In decode mode the token entries are absent; the flags and gates still are.
Packed rows (`segment_ids` [B, T], `lav2_jax.model.segments`): causal attention stays inside each segment, and a
source may carry prompt segment ids (`adapter_segments` / `visual_segments` [B, P]) so that each segment's queries
see only their own segment's prompts. `ModelConfig.attention="flash"` runs the causal part with the Pallas TPU
splash kernel (`lav2_jax.model.flash`) when there is no cache and T is a multiple of 128; `"blocked"` runs it in
causal query blocks of 128 when there is no cache (`lav2_jax.model.blocked_attention`, for XLA:CPU training).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lav2_jax.core.config import AdapterConfig, ModelConfig
from lav2_jax.model.adapted_dense import adapted_dense
from lav2_jax.model.blocked_attention import blocked_causal_attention
from lav2_jax.model.common import as_dtype, constrain, tag, trainable_param
from lav2_jax.model.flash import splash_attention
from lav2_jax.model.prompt_attention import gate_weight, gated_prompt_attention, prompt_kv
from lav2_jax.model.rope import apply_rope, rope_angles
from lav2_jax.model.segments import causal_mask, prompt_mask


def _write(cache: jax.Array, layer: jax.Array, update: jax.Array, positions: jax.Array) -> jax.Array:
    """cache [L, B, S, K, H] ← update [B, T, K, H] at layer `layer`, slots `positions` [B, T] (a scatter on the
    whole stacked cache, which XLA performs in place inside the decode loop: nothing else is copied)."""
    rows = jnp.arange(update.shape[0])[:, None]
    return cache.at[layer, rows, positions].set(update.astype(cache.dtype))


class Attention(nn.Module):
    """x [B, T, D], positions [B, T] → ([B, T, D], updated cache or None).

    `cache` is the whole stacked cache (`kv_cache.init_cache(...)["layers"]`, every leaf [L, ...]) and `layer` this
    layer's index in it; keys and values are written at [layer, row, position] and this layer's slices read back.
    """

    config: ModelConfig
    adapter: AdapterConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, prompts: dict, cache: Optional[dict] = None,
                 layer: Optional[jax.Array] = None, *, segment_ids: Optional[jax.Array] = None):
        c, a = self.config, self.adapter
        B, T, _ = x.shape
        N, K, H = c.n_heads, c.kv_heads, c.head_dim
        G = N // K
        dtype = as_dtype(c.dtype)
        dense = lambda name, f, axes: adapted_dense(a, name, f, axes, c.weight_dtype, c.dtype)  # noqa: E731
        wq, wk = dense("wq", N * H, ("embed", "heads")), dense("wk", K * H, ("embed", "kv_heads"))
        wv, wo = dense("wv", K * H, ("embed", "kv_heads")), dense("wo", c.dim, ("heads", "embed"))

        q = tag(wq(x).reshape(B, T, N, H), "query")
        k = tag(wk(x).reshape(B, T, K, H), "key")
        v = tag(wv(x).reshape(B, T, K, H), "value")
        cos, sin = rope_angles(positions, H, c.rope_theta)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q = constrain(q * H ** -0.5, ("act_batch", "act_length", "act_heads", None)).reshape(B, T, K, G, H)

        new_cache = None
        if cache is not None:
            new_cache = dict(cache)
            new_cache["k"] = _write(cache["k"], layer, k, positions)
            new_cache["v"] = _write(cache["v"], layer, v, positions)
            k_all, v_all = new_cache["k"][layer], new_cache["v"][layer]  # [B, S, K, H]
            k_pos = jnp.broadcast_to(jnp.arange(k_all.shape[1]), (B, k_all.shape[1]))
        else:
            k_all, v_all, k_pos = k, v, positions

        if c.attention == "flash" and cache is None and T % 128 == 0:  # the kernel tiles T by 128 (else XLA)
            out = splash_attention(q, k.astype(dtype), v.astype(dtype), segment_ids)
        elif c.attention == "blocked" and cache is None:  # causal query blocks (lav2_jax.model.blocked_attention)
            out = blocked_causal_attention(q, k.astype(dtype), v.astype(dtype), positions, segment_ids)
        else:
            scores = jnp.einsum("BTKGH,BSKH->BKGTS", q, k_all.astype(dtype), preferred_element_type=jnp.float32)
            seg = segment_ids if cache is None else None  # packed rows are training / scoring only (no cache)
            causal = causal_mask(positions, k_pos, seg, seg)  # [B, 1, 1, T, S]
            scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
            out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v_all.astype(dtype))

        new_gate = None
        if a.new_gate:
            new_gate = trainable_param(self, "new_gate", nn.initializers.ones, (1,), (None,))
        if a.has_prompts:
            gate = trainable_param(self, "gate", nn.initializers.zeros, (N,), (None,))
            pk, pv = self._prompt_kv("adapter", prompts, cache, new_cache, layer, wk, wv)
            w = gate_weight(gate, new_gate, prompts["adapter_on"])
            mask = self._prompt_mask("adapter", prompts, segment_ids)
            out = out + self._sown("adapter_prompt_out", gated_prompt_attention(q, pk, pv, w, mask))
        if a.visual_fusion == "early" and "visual_on" in prompts:
            pk, pv = self._prompt_kv("visual", prompts, cache, new_cache, layer, wk, wv)
            w = gate_weight(prompts["visual_gate"], None, prompts["visual_on"])
            mask = self._prompt_mask("visual", prompts, segment_ids)
            out = out + self._sown("visual_prompt_out", gated_prompt_attention(q, pk, pv, w, mask))

        out = tag(out.reshape(B, T, N * H), "attn_out")
        return wo(out), new_cache

    @staticmethod
    def _prompt_mask(source: str, prompts: dict, segment_ids: Optional[jax.Array]):
        """[B, 1, 1, T, P] "prompt in the query's segment" when the source carries prompt segment ids, else None."""
        p_seg = prompts.get(f"{source}_segments")
        return None if p_seg is None or segment_ids is None else prompt_mask(segment_ids, p_seg)

    def _sown(self, name: str, contribution: jax.Array) -> jax.Array:
        """Records a prompt source's contribution [B, T, K, G, H] in the `intermediates` collection (a no-op unless
        `apply(..., mutable=["intermediates"])`), so tests and monitoring can see which layers each source reaches."""
        self.sow("intermediates", name, contribution)
        return contribution

    def _prompt_kv(self, source: str, prompts: dict, cache, new_cache, layer, wk, wv):
        """The source's prompt keys/values: read from the cache when decoding, else computed (and cached)."""
        c = self.config
        if self.decode:
            return cache[f"{source}_k"][layer], cache[f"{source}_v"][layer]
        pk, pv = prompt_kv(wk, wv, prompts[source], c.kv_heads, c.head_dim)
        if new_cache is not None:
            for name, value in ((f"{source}_k", pk), (f"{source}_v", pv)):
                stacked = new_cache[name]
                value = jnp.broadcast_to(value, stacked.shape[1:]).astype(stacked.dtype)
                new_cache[name] = stacked.at[layer].set(value)
        return pk, pv
