"""A checkpoint → a plain Hugging Face Llama directory, adapters merged into the weights (issue 4).

Per linear (our kernel K [in, out], bias b [out], scale s, LoRA A [in, r], B [r, out], factor f):
  output  y = s ⊙ (K·x + b) + f·B(A x)  →  K' = K ⊙ s[None, :] + f·A B,  b' = s ⊙ b
  input   y = K·(s ⊙ x) + b + f·B(A x)  →  K' = s[:, None] ⊙ K + f·A B,  b' = b
  HF weight = K'.T. Any bias on q/k/v/o → `attention_bias=True` (absent ones written as zeros); on the FFN →
  `mlp_bias=True`. Norms copy. Our RoPE layout is HF's, so nothing is permuted.
Refused (ValueError with the reason): adapter prompts or visual fusion, which a plain Llama cannot express.
Written one safetensors file per layer (+ one for embeddings / norm / head) with `model.safetensors.index.json`.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
from flax import traverse_util

from lav2_jax.config import LINEAR_NAMES

HF = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj", "wo": "self_attn.o_proj",
      "w1": "mlp.gate_proj", "w2": "mlp.down_proj", "w3": "mlp.up_proj"}
ATTN = ("wq", "wk", "wv", "wo")


def check_mergeable(a, where: str) -> None:
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
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from lav2_jax.checkpoint.atomic import atomic_directory
    from lav2_jax.checkpoint.export import export_config
    from lav2_jax.checkpoint.layout import TOKENIZER_DIR
    from lav2_jax.checkpoint.pretrained import load_pretrained

    export_config(ckpt, out_dir, overwrite, check_mergeable)
    bundle = load_pretrained(ckpt)
    c, a = bundle.model.config, bundle.model.adapter
    dtype = dtype or c.weight_dtype
    tdtype = getattr(torch, dtype)
    flat = traverse_util.flatten_dict(bundle.params)
    group = lambda n: "attention" if n in ATTN else "feed_forward"  # noqa: E731
    attn_bias = any(a.linear_has_bias(n) for n in ATTN)
    mlp_bias = any(a.linear_has_bias(n) for n in LINEAR_NAMES if n not in ATTN)
    hf_cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.hidden_dim,
                         num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads,
                         rms_norm_eps=c.norm_eps, max_position_embeddings=c.max_seq_len, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                         attention_bias=attn_bias, mlp_bias=mlp_bias, dtype=dtype)
    t = lambda x: torch.from_numpy(np.array(x, np.float32, copy=True, order="C")).to(tdtype)  # noqa: E731
    n_files = c.n_layers + 1
    fname = lambda j: f"model-{j + 1:05d}-of-{n_files:05d}.safetensors"  # noqa: E731
    weight_map: dict[str, str] = {}
    with atomic_directory(out_dir, overwrite) as tmp:
        for i in range(c.n_layers):
            pre, tensors = f"model.layers.{i}.", {}
            for name in LINEAR_NAMES:
                leaf = {k[-1]: v for k, v in flat.items() if k[:3] == ("layers", group(name), name)}
                w, b = merge_linear(a, name, leaf, i)
                tensors[pre + HF[name] + ".weight"] = t(w)
                if attn_bias if name in ATTN else mlp_bias:
                    tensors[pre + HF[name] + ".bias"] = t(b if b is not None else np.zeros(w.shape[0]))
            tensors[pre + "input_layernorm.weight"] = t(flat[("layers", "attention_norm", "scale")][i])
            tensors[pre + "post_attention_layernorm.weight"] = t(flat[("layers", "ffn_norm", "scale")][i])
            save_file(tensors, os.path.join(tmp, fname(i)), metadata={"format": "pt"})
            weight_map.update({k: fname(i) for k in tensors})
        tensors = {"model.embed_tokens.weight": t(flat[("tok_embeddings", "embedding")]),
                   "model.norm.weight": t(flat[("norm", "scale")]),
                   "lm_head.weight": t(np.asarray(flat[("output", "kernel")], np.float32).T)}
        save_file(tensors, os.path.join(tmp, fname(c.n_layers)), metadata={"format": "pt"})
        weight_map.update({k: fname(c.n_layers) for k in tensors})
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)
        hf_cfg.save_pretrained(tmp)
        if os.path.isdir(os.path.join(ckpt, TOKENIZER_DIR)):
            for n in os.listdir(os.path.join(ckpt, TOKENIZER_DIR)):
                shutil.copyfile(os.path.join(ckpt, TOKENIZER_DIR, n), os.path.join(tmp, n))
    return os.path.abspath(out_dir)
