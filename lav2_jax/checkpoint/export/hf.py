"""A checkpoint → a plain Hugging Face Llama directory, adapters merged into the weights.

Per linear (our kernel K [in, out], bias b [out], scale s, LoRA A [in, r], B [r, out], factor f):
  output  y = s ⊙ (K·x + b) + f·B(A x)  →  K' = K ⊙ s[None, :] + f·A B,  b' = s ⊙ b
  input   y = K·(s ⊙ x) + b + f·B(A x)  →  K' = s[:, None] ⊙ K + f·A B,  b' = b
  HF weight = K'.T. Any bias on q/k/v/o → `attention_bias=True` (absent ones written as zeros); on the FFN →
  `mlp_bias=True`. Norms copy. Our RoPE layout is HF's, so nothing is permuted.
Refused (ValueError with the reason): adapter prompts or visual fusion, which a plain Llama cannot express.
A spliced model exports as its system's transformers model (`System.hf_export`; LLaVA:
`LlavaForConditionalGeneration`, the Llama under `language_model.`, plus the tower and the projector); a system
without one is refused.
Streamed: one safetensors file per linear (all layers' q_proj, …), one for the norms and one for embeddings and head,
with `model.safetensors.index.json`; only the leaves of the file being written are read (host memory ≈ one stacked
kernel, not the model).
"""

from __future__ import annotations

import functools
import json
import os
import shutil

import numpy as np
from tqdm import tqdm

from lav2_jax.checkpoint.atomic import atomic_directory
from lav2_jax.checkpoint.export import export_config
from lav2_jax.checkpoint.layout import TOKENIZER_DIR
from lav2_jax.checkpoint.pretrained import checkpoint_reader
from lav2_jax.core import registry
from lav2_jax.core.config import LINEAR_NAMES

HF = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj", "wo": "self_attn.o_proj",
      "w1": "mlp.gate_proj", "w2": "mlp.down_proj", "w3": "mlp.up_proj"}
ATTN = ("wq", "wk", "wv", "wo")


def check_mergeable(a, where: str) -> None:
    registry.of(a).hf_export(a, where)  # ValueError for a model without a Hugging Face equivalent
    if a.has_prompts or a.has_visual:
        what = [w for w, on in (("adapter prompts", a.has_prompts), (f"{a.visual_fusion} visual fusion",
                                                                      a.has_visual)) if on]
        raise ValueError(f"{where}: a plain Hugging Face Llama cannot express {' and '.join(what)} (gated prompt "
                         "attention has no HF equivalent); only biases, scales, norms and LoRA can be merged")


def merge_linear(a, name: str, leaf: dict, i: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(torch weight [out, in], bias [out] or None) of layer i's linear `name` with its adapters folded in."""
    k = np.asarray(leaf["kernel"][i], np.float32)
    b = np.asarray(leaf["bias"][i], np.float32) if "bias" in leaf else None
    if "scale" in leaf:
        s = np.asarray(leaf["scale"][i], np.float32)
        if a.linear_kind == "output":
            k, b = k * s[None, :], (b * s if b is not None else None)
        else:
            k = s[:, None] * k
    if "lora_a" in leaf:
        k = k + a.lora_scale * (np.asarray(leaf["lora_a"][i], np.float32) @ np.asarray(leaf["lora_b"][i], np.float32))
    return np.ascontiguousarray(k.T), b


def export_hf(ckpt: str, out_dir: str, dtype: str | None = None, overwrite: bool = False) -> str:
    """`lav2 export hf --ckpt C --out DIR [--dtype float32|bfloat16]`."""
    # Lazy: torch, safetensors and transformers are optional dependencies (the `test` extra)
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    export_config(ckpt, out_dir, overwrite, check_mergeable)
    model, _, keys, read = checkpoint_reader(ckpt)
    c, a = model.config, model.adapter
    dtype = dtype or c.weight_dtype
    tdtype = getattr(torch, dtype)
    group = lambda n: "attention" if n in ATTN else "feed_forward"  # noqa: E731
    attn_bias = any(a.linear_has_bias(n) for n in ATTN)
    mlp_bias = any(a.linear_has_bias(n) for n in LINEAR_NAMES if n not in ATTN)
    hf_cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.hidden_dim,
                         num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads,
                         rms_norm_eps=c.norm_eps, max_position_embeddings=c.max_seq_len, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                         attention_bias=attn_bias, mlp_bias=mlp_bias, dtype=dtype)
    t = lambda x: torch.from_numpy(np.array(x, np.float32, copy=True, order="C")).to(tdtype)  # noqa: E731
    system_part = registry.of(a).hf_export(a, ckpt)  # None: a plain Llama
    pre = "" if system_part is None else system_part.prefix  # LLaVA: the Llama inside LlavaForConditionalGeneration
    layer = lambda i, name: f"{pre}model.layers.{i}.{name}"  # noqa: E731

    def linear(name: str) -> dict:
        leaf = {k[-1]: v for k, v in read([k for k in keys if k[:3] == ("layers", group(name), name)]).items()}
        tensors = {}
        for i in range(c.n_layers):
            w, b = merge_linear(a, name, leaf, i)
            tensors[layer(i, HF[name] + ".weight")] = t(w)
            if attn_bias if name in ATTN else mlp_bias:
                tensors[layer(i, HF[name] + ".bias")] = t(b if b is not None else np.zeros(w.shape[0]))
        return tensors

    def norms() -> dict:
        flat = read([("layers", "attention_norm", "scale"), ("layers", "ffn_norm", "scale"), ("norm", "scale")])
        tensors = {pre + "model.norm.weight": t(flat[("norm", "scale")])}
        for i in range(c.n_layers):
            tensors[layer(i, "input_layernorm.weight")] = t(flat[("layers", "attention_norm", "scale")][i])
            tensors[layer(i, "post_attention_layernorm.weight")] = t(flat[("layers", "ffn_norm", "scale")][i])
        return tensors

    def embeddings() -> dict:
        flat = read([("tok_embeddings", "embedding"), ("output", "kernel")])
        return {pre + "model.embed_tokens.weight": t(flat[("tok_embeddings", "embedding")]),
                pre + "lm_head.weight": t(np.asarray(flat[("output", "kernel")], np.float32).T)}

    # One file per stacked leaf group, so only one group is in host memory at a time.
    parts = [functools.partial(linear, n) for n in LINEAR_NAMES] + [norms, embeddings]
    if system_part is not None:
        hf_cfg = system_part.config(hf_cfg, model)
        parts += system_part.parts(read, keys, model, t)
    fname = lambda j: f"model-{j + 1:05d}-of-{len(parts):05d}.safetensors"  # noqa: E731
    weight_map: dict[str, str] = {}
    with atomic_directory(out_dir, overwrite) as tmp:
        for j, part in enumerate(tqdm(parts, desc="export hf", unit="file", disable=None)):
            tensors = part()
            save_file(tensors, os.path.join(tmp, fname(j)), metadata={"format": "pt"})
            weight_map.update({k: fname(j) for k in tensors})
            del tensors
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)
        hf_cfg.save_pretrained(tmp)
        if os.path.isdir(os.path.join(ckpt, TOKENIZER_DIR)):
            for n in os.listdir(os.path.join(ckpt, TOKENIZER_DIR)):
                shutil.copyfile(os.path.join(ckpt, TOKENIZER_DIR, n), os.path.join(tmp, n))
    return os.path.abspath(out_dir)
