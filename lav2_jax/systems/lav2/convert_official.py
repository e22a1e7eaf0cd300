"""Released LLaMA-Adapter V2 multimodal files → a ready multimodal checkpoint (docs/design.md §3.1–3.2, §7.4).

A released file is `{'model': {...}, 'config': {'w_bias', 'w_lora', 'lora_rank'}}` (BIAS-7B, LORA-BIAS-7B,
CAPTION-7B, LORA-BIAS-7B-v21). Its sizes come from its tensors: `visual_query.weight` [Q, V] (query_len = prompt
length Q, connector width V), `adapter_query.weight` [Lp*Q, D] (Lp prompted layers), the `visual_blocks.N` count,
the LoRA rank; only the connector's heads (`--v-num-heads`, 16) and the context length (512) are flags.
Key map (released → ours; torch [out, in] → kernel [in, out]; Meta RoPE order → half-split for q/k output rows):
  llama.layers.N.attention.gate [1,H,1,1] → layers/attention/gate[N] [H]; new_gate [1,1,1,1] → new_gate[N] [1]
  llama.layers.N.attention.wq.bias → layers/attention/wq/bias[N] (RoPE-permuted); wo / feed_forward w1 w2 w3 .bias
  llama.layers.N.attention.lora_w{q,k,v,o}_l1.weight [r, in] → w*/lora_a[N] = l1.T
  llama.layers.N.attention.lora_w{q,k,v,o}_l2.weight [out, r] → w*/lora_b[N] = l2.T (q/k rows RoPE-permuted)
  llama.layers.N.feed_forward.lora_w{1,2,3}_l{1,2}.weight likewise; norms → */scale (tuned norms)
  adapter_query.weight [Lp*Q, D] → adapter_query [Lp, Q, D]; visual_query.weight → connector/visual_query
  clip_proj, clip_proj_norm, visual_blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, visual_proj,
  visual_proj_norm → connector/... (weights transposed; LayerNorm weight → scale)
`meta['official']` keeps the file's config and tensor dtypes so `lav2 export official` writes it back bit-exactly.
"""

from __future__ import annotations

import os
import re
from typing import Optional

from lav2_jax.checkpoint.convert import ops
from lav2_jax.checkpoint.convert.clip import clip_plan, clip_sources, hf_heads, infer_vision, open_clip
from lav2_jax.checkpoint.convert.meta import (META_IGNORE, config_from_params, linear_shapes, llama_plan, norm_keys,
                                              read_params, rope_heads, shard_paths, tokenizer_vocab)
from lav2_jax.checkpoint.convert.plan import Ref, convert_plan, model_targets, single, stacked
from lav2_jax.checkpoint.convert.sources import TensorFile
from lav2_jax.checkpoint.layout import CheckpointConfig
from lav2_jax.core.config import LINEAR_NAMES, AdapterConfig, ModelConfig
from lav2_jax.model.factory import build_model

GROUP = {n: "attention" if n in ("wq", "wk", "wv", "wo") else "feed_forward" for n in LINEAR_NAMES}
BIAS_LINEARS = ("wq", "wo", "w1", "w2", "w3")
CONNECTOR_DENSE = ("clip_proj", "visual_proj")
CONNECTOR_NORMS = ("clip_proj_norm", "visual_proj_norm")
BLOCK_DENSE = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
BLOCK_NORMS = ("norm1", "norm2")


def _need(f, key: str) -> tuple:
    if key not in f:
        raise ValueError(f"{f.path}: missing key {key!r}")
    return tuple(f.shape(key))


def infer_adapter(f, v_num_heads: int = 16) -> AdapterConfig:
    """The AdapterConfig a released file implies; its `config` must agree with its keys."""
    cfg = f.extra.get("config")
    if not isinstance(cfg, dict) or not {"w_bias", "w_lora"} <= set(cfg):
        raise ValueError(f"{f.path}: no 'config' dict with w_bias / w_lora (not a released adapter file?)")
    keys = f.keys()
    has_lora = any("lora_" in k for k in keys)
    has_bias = any(re.search(r"\.(wq|wo|w1|w2|w3)\.bias$", k) for k in keys)
    if bool(cfg["w_lora"]) != has_lora:
        example = next((k for k in keys if "lora_" in k), "llama.layers.0.attention.lora_wq_l1.weight")
        raise ValueError(f"{f.path}: config w_lora={cfg['w_lora']} but key {example!r} is "
                         f"{'present' if has_lora else 'missing'}")
    if bool(cfg["w_bias"]) != has_bias:
        example = next((k for k in keys if re.search(r"\.(wq|wo|w1|w2|w3)\.bias$", k)),
                       "llama.layers.0.attention.wq.bias")
        raise ValueError(f"{f.path}: config w_bias={cfg['w_bias']} but key {example!r} is "
                         f"{'present' if has_bias else 'missing'}")
    q_len, v_width = _need(f, "visual_query.weight")
    rows = _need(f, "adapter_query.weight")[0]
    if rows % q_len:
        raise ValueError(f"{f.path}: adapter_query.weight has {rows} rows, not a multiple of query_len {q_len}")
    rank = 0
    if has_lora:
        rank = _need(f, "llama.layers.0.attention.lora_wq_l1.weight")[0]
        if cfg.get("lora_rank", rank) != rank:
            raise ValueError(f"{f.path}: config lora_rank={cfg['lora_rank']} but "
                             f"llama.layers.0.attention.lora_wq_l1.weight has rank {rank}")
    depth = len({m.group(1) for k in keys if (m := re.match(r"visual_blocks\.(\d+)\.", k))})
    mlp = _need(f, "visual_blocks.0.mlp.fc1.weight")[0] / v_width if depth else 4.0
    return AdapterConfig(linear_kind="bias_qo_ffn" if has_bias else "none",
                         norm_tuning="llama.norm.weight" in f, lora_rank=rank, new_gate=has_lora,
                         prompt_len=q_len, prompt_layers=rows // q_len, visual_fusion="official", query_len=q_len,
                         v_depth=depth, v_width=v_width, v_num_heads=v_num_heads, v_mlp_ratio=mlp)


def adapter_plan(c: ModelConfig, a: AdapterConfig, f) -> list:
    """LeafPlans of every adapter leaf from released file `f` (norms included when tuned)."""
    L, H, D, V, Q = c.n_layers, c.n_heads, c.dim, a.v_width, a.query_len
    lay = "llama.layers.{}."

    def r(key, shape):
        return [Ref(f, key, tuple(shape))]

    def layers(leaf, shape, key, src_shape, fn):
        return stacked(("layers",) + leaf, shape, ((r(lay.format(i) + key, src_shape), fn) for i in range(L)))

    flat = lambda x: x[0].reshape(-1)  # noqa: E731
    plan = [layers(("attention", "gate"), (H,), "attention.gate", (1, H, 1, 1), flat),
            single(("adapter_query",), (a.prompt_layers, Q, D), r("adapter_query.weight", (a.prompt_layers * Q, D)),
                   lambda x: x[0].reshape(a.prompt_layers, Q, D))]
    if a.new_gate:
        plan.append(layers(("attention", "new_gate"), (1,), "attention.new_gate", (1, 1, 1, 1), flat))
    shapes = linear_shapes(c)
    for name in LINEAR_NAMES:
        out, inp = shapes[name]
        g, nh = GROUP[name], rope_heads(c, name)
        if a.linear_has_bias(name):
            plan.append(layers((g, name, "bias"), (out,), f"{g}.{name}.bias", (out,), ops.vector(0, nh)))
        if a.linear_has_lora(name):
            rk = a.lora_rank
            plan.append(layers((g, name, "lora_a"), (inp, rk), f"{g}.lora_{name}_l1.weight", (rk, inp),
                               ops.linear(0)))
            plan.append(layers((g, name, "lora_b"), (rk, out), f"{g}.lora_{name}_l2.weight", (out, rk),
                               ops.linear(0, nh)))
    if a.norm_tuning:
        for norm in ("attention_norm", "ffn_norm"):
            plan.append(layers((norm, "scale"), (D,), f"{norm}.weight", (D,), ops.first))
        plan.append(single(("norm", "scale"), (D,), r("llama.norm.weight", (D,)), ops.first))
    return plan + connector_plan(c, a, f)


def connector_plan(c: ModelConfig, a: AdapterConfig, f) -> list:
    V, M, Q = a.v_width, int(a.v_width * a.v_mlp_ratio), a.query_len
    clip_out = _need(f, "clip_proj.weight")[1]
    conn = ("connector",)

    def r(key, shape):
        return [Ref(f, key, tuple(shape))]

    dense_io = {"clip_proj": (clip_out, V), "visual_proj": (V, c.dim)}
    plan = [single(conn + ("visual_query",), (Q, V), r("visual_query.weight", (Q, V)), ops.first)]
    for name, (i, o) in dense_io.items():
        plan.append(single(conn + (name, "kernel"), (i, o), r(f"{name}.weight", (o, i)), ops.linear(0)))
        plan.append(single(conn + (name, "bias"), (o,), r(f"{name}.bias", (o,)), ops.first))
    for name, dim in (("clip_proj_norm", V), ("visual_proj_norm", c.dim)):
        plan.append(single(conn + (name, "scale"), (dim,), r(f"{name}.weight", (dim,)), ops.first))
        plan.append(single(conn + (name, "bias"), (dim,), r(f"{name}.bias", (dim,)), ops.first))
    block_io = {"attn.qkv": (V, 3 * V), "attn.proj": (V, V), "mlp.fc1": (V, M), "mlp.fc2": (M, V)}

    def blocks(leaf, shape, key, src_shape, fn):
        return stacked(conn + ("visual_blocks",) + leaf, shape,
                       ((r(f"visual_blocks.{i}.{key}", src_shape), fn) for i in range(a.v_depth)))

    if a.v_depth:
        for name, (i, o) in block_io.items():
            leaf = tuple(name.split("."))
            plan.append(blocks(leaf + ("kernel",), (i, o), f"{name}.weight", (o, i), ops.linear(0)))
            plan.append(blocks(leaf + ("bias",), (o,), f"{name}.bias", (o,), ops.first))
        for name in BLOCK_NORMS:
            plan.append(blocks((name, "scale"), (V,), f"{name}.weight", (V,), ops.first))
            plan.append(blocks((name, "bias"), (V,), f"{name}.bias", (V,), ops.first))
    return plan


def official_meta(f) -> dict:
    """What `lav2 export official` needs to write the file back bit-exactly."""
    dtypes = {k: str(f.dtype(k)) for k in f.keys()}
    return {"config": {k: (v.item() if hasattr(v, "item") else v) for k, v in f.extra["config"].items()},
            "dtypes": dtypes}


def convert_official(llama_dir: str, llama_type: str, adapter: str, clip: str, out_dir: str, *,
                     v_num_heads: int = 16, max_seq_len: int = 512, weight_dtype: str = "bfloat16",
                     clip_heads: Optional[int] = None, overwrite: bool = False) -> str:
    """`lav2 convert official`: base LLaMA (Meta layout) + released adapter + OpenAI CLIP → one checkpoint."""
    model_dir = os.path.join(llama_dir, llama_type)
    tokenizer = os.path.join(llama_dir, "tokenizer.model")
    if not os.path.isfile(tokenizer):
        raise ValueError(f"{tokenizer}: no such file (the release keeps tokenizer.model beside the model folders)")
    params_path = os.path.join(model_dir, "params.json")
    config = config_from_params(read_params(params_path), params_path, vocab_size=tokenizer_vocab(tokenizer),
                                weight_dtype=weight_dtype, max_seq_len=max_seq_len)
    shards = [TensorFile(p) for p in shard_paths(model_dir)]
    ad_file = TensorFile(adapter, subkey="model")
    a = infer_adapter(ad_file, v_num_heads)
    fmt, clip_keys, clip_files = open_clip(clip)
    vision = infer_vision(clip_keys, fmt, clip, clip_heads or hf_heads(clip), weight_dtype)
    try:
        model = build_model(config, a, vision)
    except ValueError as e:
        raise ValueError(f"{adapter}: adapter does not fit {params_path}: {e}") from None
    plan = (llama_plan(config, shards, norms=not a.norm_tuning) + adapter_plan(config, a, ad_file)
            + clip_plan(vision, clip_keys, fmt, clip))
    meta_ignore = META_IGNORE + (norm_keys() if a.norm_tuning else ())
    sources = [(f, meta_ignore) for f in shards] + [(ad_file, ())] + clip_sources(fmt, clip_files)
    ckpt = CheckpointConfig(model=config, adapter=a, vision=vision, channel_order="bgr",
                            meta={"source": "official", "official": official_meta(ad_file)})
    return convert_plan(out_dir, ckpt, model_targets(model), plan, sources,
                        config_source=f"{params_path} and {os.path.basename(adapter)}", tokenizer=tokenizer,
                        overwrite=overwrite)
