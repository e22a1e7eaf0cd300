"""Helpers shared by the model tests: building tiny models, moving base weights, perturbing adapters."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lav2_jax.core import presets
from lav2_jax.model.factory import build_model, init_params

TINY = presets.get_model("tiny")


def tiny_model(adapter_name: str, config=TINY):
    """A tiny float32 model with a shrunk adapter preset."""
    adapter = presets.tiny_adapter(adapter_name, config) if adapter_name != "none" else presets.get_adapter("none")
    return build_model(config, adapter)


def tiny(adapter_name: str, seed: int = 0, config=TINY):
    """(model, params) for `tiny_model(adapter_name)`, randomly initialised (adapters at identity)."""
    model = tiny_model(adapter_name, config)
    return model, init_params(model, jax.random.PRNGKey(seed))


def base_subset(params: dict, base_params: dict) -> dict:
    """The leaves of `params` at the paths `base_params` has (adapted → base model weights)."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: flat[k] for k in traverse_util.flatten_dict(base_params)})


def with_base(params: dict, base_params: dict) -> dict:
    """`params` with every leaf that `base_params` also has replaced by the base value."""
    flat = traverse_util.flatten_dict(params)
    flat.update(traverse_util.flatten_dict(base_params))
    return traverse_util.unflatten_dict(flat)


FROZEN_LEAVES = ("kernel", "embedding")


def unbox(tree):
    """Plain arrays from a tree that may hold flax LogicallyPartitioned boxes."""
    return nn.unbox(tree)


def perturb_adapters(params: dict, seed: int = 1, scale: float = 0.5, subtrees: tuple = ("connector",)) -> dict:
    """Moves every non-kernel leaf away from its identity init (gates, biases, scales, LoRA, prompts, norms), and
    every leaf (kernels too) of the top-level `subtrees` (the trainable connector)."""
    flat = traverse_util.flatten_dict(unbox(params))
    keys = jax.random.split(jax.random.PRNGKey(seed), len(flat))
    out = {}
    for key, (path, leaf) in zip(keys, sorted(flat.items())):
        if path[-1] not in FROZEN_LEAVES or path[0] in subtrees:
            leaf = leaf + scale * jax.random.normal(key, leaf.shape, leaf.dtype)
        out[path] = leaf
    return traverse_util.unflatten_dict(out)


def random_tokens(batch: int, length: int, vocab: int, seed: int = 0) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).integers(3, vocab, size=(batch, length)), jnp.int32)


def visual_kwargs(model, batch: int, seed: int = 5) -> dict:
    """Random visual tokens (and a mixed has_image mask) for models with a visual fusion mode."""
    a = model.adapter
    if not a.has_visual:
        return {}
    vis = jax.random.normal(jax.random.PRNGKey(seed), (batch, a.query_len, model.config.dim))
    has_image = jnp.asarray([i % 2 == 0 for i in range(batch)])
    return {"visual_tokens": vis, "has_image": has_image}


def hf_llama_to_params(state_dict: dict, n_layers: int) -> dict:
    """Hugging Face LlamaForCausalLM state dict (torch) → our base parameter tree (same RoPE layout)."""
    def t(name):
        return np.asarray(state_dict[name].detach().float().numpy())

    def stack(fmt, transpose=True):
        arrs = [t(fmt.format(i)) for i in range(n_layers)]
        return jnp.asarray(np.stack([a.T if transpose else a for a in arrs]))

    lay = "model.layers.{}."
    lm_head = "lm_head.weight" if "lm_head.weight" in state_dict else "model.embed_tokens.weight"
    return {
        "tok_embeddings": {"embedding": jnp.asarray(t("model.embed_tokens.weight"))},
        "layers": {
            "attention_norm": {"scale": stack(lay + "input_layernorm.weight", False)},
            "ffn_norm": {"scale": stack(lay + "post_attention_layernorm.weight", False)},
            "attention": {w: {"kernel": stack(lay + f"self_attn.{hf}_proj.weight")}
                          for w, hf in (("wq", "q"), ("wk", "k"), ("wv", "v"), ("wo", "o"))},
            "feed_forward": {w: {"kernel": stack(lay + f"mlp.{hf}_proj.weight")}
                             for w, hf in (("w1", "gate"), ("w3", "up"), ("w2", "down"))},
        },
        "norm": {"scale": jnp.asarray(t("model.norm.weight"))},
        "output": {"kernel": jnp.asarray(t(lm_head).T)},
    }


def hand_splice(table, tokens, visual, image_token_id: int) -> np.ndarray:
    """Decoder input embeddings of a spliced prompt, built by hand (numpy; not `lav2_jax.model.splice`).

    table [V, D]; tokens [B, T]; visual [B, N, n_tok, D] (image j of row b: visual[b, j]). Row b's text tokens are
    looked up in the table; walking the row left to right, its k-th placeholder receives token k % n_tok of image
    k // n_tok."""
    table, tokens, visual = np.asarray(table), np.asarray(tokens), np.asarray(visual)
    B, T = tokens.shape
    n_tok = visual.shape[2]
    x = np.zeros((B, T, table.shape[1]), table.dtype)
    for b in range(B):
        k = 0
        for t in range(T):
            if tokens[b, t] == image_token_id:
                x[b, t] = visual[b, k // n_tok, k % n_tok]
                k += 1
            else:
                x[b, t] = table[tokens[b, t]]
    return x


def logits_from_embeddings(model, params: dict, x) -> np.ndarray:
    """Logits [B, T, V] of `model`'s language model run on input embeddings x [B, T, D] (`hand_splice`).

    The decoder takes token ids only, so it runs as a text-only copy whose vocabulary gains B·T rows holding x (row
    V + b·T + t = x[b, t]) and whose head gains B·T zero columns (dropped); the vision tower and projector are left
    out, so nothing of the model's own splice runs."""
    x = np.asarray(x)
    B, T, D = x.shape
    V = model.config.vocab_size
    text = build_model(model.config.replace(vocab_size=V + B * T), model.adapter.replace(splice=None))
    flat = {k: v for k, v in traverse_util.flatten_dict(unbox(params)).items()
            if k[0] in ("tok_embeddings", "layers", "norm", "output") or k[0].startswith("layers_")}
    table = flat[("tok_embeddings", "embedding")]
    flat[("tok_embeddings", "embedding")] = jnp.concatenate([table, jnp.asarray(x.reshape(B * T, D), table.dtype)])
    kernel = flat[("output", "kernel")]
    flat[("output", "kernel")] = jnp.concatenate([kernel, jnp.zeros((D, B * T), kernel.dtype)], axis=1)
    ids = V + np.arange(B * T, dtype=np.int32).reshape(B, T)
    logits = jax.jit(text.apply)({"params": traverse_util.unflatten_dict(flat)}, jnp.asarray(ids))
    return np.asarray(logits)[..., :V]
