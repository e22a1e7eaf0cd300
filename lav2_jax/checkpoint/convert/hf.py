"""Hugging Face Llama directories → our tree (docs/design.md §7.3).

Reads `config.json` and the weights: `model.safetensors.index.json` (+ shards), `model.safetensors`,
`pytorch_model.bin.index.json` (+ shards) or `pytorch_model.bin`. HF already uses the half-split RoPE layout, so
no row permutation; `lm_head.weight` absent (tied) → the output kernel is the embedding transposed.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from lav2_jax.checkpoint.convert import ops
from lav2_jax.checkpoint.convert.meta import linear_shapes
from lav2_jax.checkpoint.convert.plan import Ref, convert_plan, model_targets, single, stacked
from lav2_jax.checkpoint.convert.sources import TensorFile
from lav2_jax.checkpoint.layout import CheckpointConfig
from lav2_jax.core import presets
from lav2_jax.core.config import ModelConfig
from lav2_jax.model.factory import build_model

HF_LINEARS = {"wq": ("attention", "self_attn.q_proj"), "wk": ("attention", "self_attn.k_proj"),
              "wv": ("attention", "self_attn.v_proj"), "wo": ("attention", "self_attn.o_proj"),
              "w1": ("feed_forward", "mlp.gate_proj"), "w2": ("feed_forward", "mlp.down_proj"),
              "w3": ("feed_forward", "mlp.up_proj")}
HF_IGNORE = (r"rotary_emb\.inv_freq$",)
WEIGHT_FILES = (("model.safetensors.index.json", True), ("model.safetensors", False),
                ("pytorch_model.bin.index.json", True), ("pytorch_model.bin", False))


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable JSON: {e}") from None


def hf_config(cfg: dict, path: str, weight_dtype: str, max_seq_len: Optional[int]) -> tuple[ModelConfig, bool]:
    """(ModelConfig, tied) from a Llama `config.json`; refuses what our model cannot express."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise ValueError(f"{path}: rope scaling {rope.get('rope_type', rope.get('type'))!r} is not supported")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise ValueError(f"{path}: {flag}=true is not a plain LLaMA (no base biases in this model)")
    try:
        dim, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        if cfg.get("head_dim") not in (None, dim // heads):
            raise ValueError(f"head_dim {cfg['head_dim']} != hidden_size / num_attention_heads")
        theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        config = ModelConfig(dim=dim, n_layers=cfg["num_hidden_layers"], n_heads=heads,
                             n_kv_heads=cfg.get("num_key_value_heads"), vocab_size=cfg["vocab_size"],
                             ffn_hidden_dim=cfg["intermediate_size"], norm_eps=cfg.get("rms_norm_eps", 1e-6),
                             rope_theta=float(theta),
                             max_seq_len=max_seq_len or cfg.get("max_position_embeddings", 2048),
                             weight_dtype=weight_dtype, dtype=weight_dtype)
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: {type(e).__name__}: {e}") from None
    return config, bool(cfg.get("tie_word_embeddings", False))


def weight_files(directory: str) -> tuple[dict, list]:
    """({key: TensorFile}, [TensorFile]) over the directory's weight files (index checked against the files)."""
    for name, is_index in WEIGHT_FILES:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        if not is_index:
            f = TensorFile(path)
            return {k: f for k in f.keys()}, [f]
        weight_map = read_json(path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{path}: no weight_map")
        files = {n: TensorFile(os.path.join(directory, n)) for n in sorted(set(weight_map.values()))}
        by_key = {}
        for key, n in weight_map.items():
            if key not in files[n]:
                raise ValueError(f"{files[n].path}: missing key {key!r} (listed in {name})")
            by_key[key] = files[n]
        for f in files.values():
            for key in f.keys():
                if by_key.get(key) is not f:
                    raise ValueError(f"{f.path}: key {key!r} is not listed for this file in {name}")
        return by_key, list(files.values())
    raise ValueError(f"{directory}: no model.safetensors[.index.json] or pytorch_model.bin[.index.json]")


def hf_llama_plan(c: ModelConfig, by_key: dict, tied: bool, where: str, prefix: str = "") -> list:
    """LeafPlans of the LLaMA from HF keys; `prefix` precedes every key (`language_model.` in multimodal files)."""
    def ref(key, shape):
        key = prefix + key
        if key not in by_key:
            raise ValueError(f"{where}: missing key {key!r}")
        return [Ref(by_key[key], key, shape)]

    emb = ref("model.embed_tokens.weight", (c.vocab_size, c.dim))
    untied = not tied and prefix + "lm_head.weight" in by_key
    head = ref("lm_head.weight", (c.vocab_size, c.dim)) if untied else emb
    plan = [single(("tok_embeddings", "embedding"), (c.vocab_size, c.dim), emb, ops.first),
            single(("output", "kernel"), (c.dim, c.vocab_size), head, ops.linear(0)),
            single(("norm", "scale"), (c.dim,), ref("model.norm.weight", (c.dim,)), ops.first)]
    for name, full in linear_shapes(c).items():
        group, hf = HF_LINEARS[name]
        plan.append(stacked(("layers", group, name, "kernel"), full[::-1],
                            ((ref(f"model.layers.{i}.{hf}.weight", full), ops.linear(0)) for i in range(c.n_layers))))
    for norm, hf in (("attention_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
        plan.append(stacked(("layers", norm, "scale"), (c.dim,),
                            ((ref(f"model.layers.{i}.{hf}.weight", (c.dim,)), ops.first) for i in range(c.n_layers))))
    return plan


def convert_hf(hf_dir: str, out_dir: str, *, weight_dtype: str = "bfloat16", max_seq_len: Optional[int] = None,
               overwrite: bool = False) -> str:
    """`lav2 convert hf`: a Hugging Face Llama directory → a language-only checkpoint (adapter preset `none`)."""
    cfg_path = os.path.join(hf_dir, "config.json")
    config, tied = hf_config(read_json(cfg_path), cfg_path, weight_dtype, max_seq_len)
    by_key, files = weight_files(hf_dir)
    model = build_model(config, presets.get_adapter("none"))
    tokenizer = hf_dir if any(os.path.isfile(os.path.join(hf_dir, n)) for n in ("tokenizer.json", "tokenizer.model")) \
        else None
    ckpt = CheckpointConfig(model=config, adapter=model.adapter, meta={"source": "hf", "tied": tied})
    plan = hf_llama_plan(config, by_key, tied, hf_dir)
    ignore = HF_IGNORE + ((r"^lm_head\.weight$",) if tied else ())
    return convert_plan(out_dir, ckpt, model_targets(model), plan, [(f, ignore) for f in files],
                        config_source=cfg_path, tokenizer=_tokenizer_subset(tokenizer), overwrite=overwrite)


def _tokenizer_subset(hf_dir: Optional[str]) -> Optional[str]:
    """The tokenizer file to copy: `tokenizer.model` when present (sentencepiece), else the HF directory."""
    if hf_dir is None:
        return None
    spm = os.path.join(hf_dir, "tokenizer.model")
    return spm if os.path.isfile(spm) else hf_dir
