"""Trainable parameters → the released LLaMA-Adapter V2 file format (inverse of `convert.official`).

`export_official(ckpt, out_file)` writes `{'model': {...}, 'config': {'w_bias', 'w_lora', 'lora_rank'}}` with the
key map of `lav2_jax.systems.lav2.convert_official` run backwards (kernels transposed back to torch [out, in], q/k
output rows back to Meta's interleaved RoPE order). A checkpoint converted from a released file keeps that file's
config and tensor dtypes in `meta['official']`, so `official → orbax → official` is bit-exact. Only adapters the
released format can express are accepted: official fusion, bias on wq wo w1 w2 w3 (or none), LoRA on all seven.
"""

from __future__ import annotations

import os

import numpy as np
from flax import traverse_util

from lav2_jax.checkpoint.convert.ops import half_to_meta
from lav2_jax.checkpoint.export import export_config
from lav2_jax.checkpoint.pretrained import load_adapter
from lav2_jax.core.config import LINEAR_NAMES
from lav2_jax.model.factory import build_model
from lav2_jax.systems.lav2.convert_official import BLOCK_DENSE, BLOCK_NORMS, CONNECTOR_DENSE, CONNECTOR_NORMS, GROUP


def check_exportable(a, where: str) -> None:
    problems = []
    if a.visual_fusion != "official":
        problems.append(f"visual_fusion={a.visual_fusion!r} (the release adds visual tokens to prompts: 'official')")
    if a.linear_kind not in ("bias_qo_ffn", "none"):
        problems.append(f"linear_kind={a.linear_kind!r} (the release has bias on wq wo w1 w2 w3 only)")
    if a.lora_rank and (tuple(sorted(a.lora_targets)) != tuple(sorted(LINEAR_NAMES)) or a.lora_scale != 1.0):
        problems.append("LoRA must target all seven linears with factor 1")
    if a.lora_rank and not a.new_gate:
        problems.append("released LoRA files carry new_gate")
    if problems:
        raise ValueError(f"{where}: the released file format cannot express this adapter: {'; '.join(problems)}")


def official_state_dict(model, adapter_params: dict) -> dict[str, np.ndarray]:
    """Released keys → float32 numpy arrays, from our adapter leaves."""
    c, a = model.config, model.adapter
    p = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(adapter_params).items()}
    heads = {"wq": c.n_heads, "wk": c.kv_heads}
    out: dict[str, np.ndarray] = {}
    for i in range(c.n_layers):
        lay = f"llama.layers.{i}."
        out[lay + "attention.gate"] = p[("layers", "attention", "gate")][i].reshape(1, -1, 1, 1)
        if a.new_gate:
            out[lay + "attention.new_gate"] = p[("layers", "attention", "new_gate")][i].reshape(1, 1, 1, 1)
        for name in LINEAR_NAMES:
            g, nh = GROUP[name], heads.get(name, 0)
            unperm = (lambda w, n=nh: half_to_meta(w, n)) if nh else (lambda w: w)
            if a.linear_has_bias(name):
                out[lay + f"{g}.{name}.bias"] = unperm(p[("layers", g, name, "bias")][i])
            if a.linear_has_lora(name):
                out[lay + f"{g}.lora_{name}_l1.weight"] = p[("layers", g, name, "lora_a")][i].T
                out[lay + f"{g}.lora_{name}_l2.weight"] = unperm(p[("layers", g, name, "lora_b")][i].T)
        if a.norm_tuning:
            for norm in ("attention_norm", "ffn_norm"):
                out[lay + f"{norm}.weight"] = p[("layers", norm, "scale")][i]
    if a.norm_tuning:
        out["llama.norm.weight"] = p[("norm", "scale")]
    q = p[("adapter_query",)]
    out["adapter_query.weight"] = q.reshape(-1, q.shape[-1])
    out["visual_query.weight"] = p[("connector", "visual_query")]
    for name in CONNECTOR_DENSE:
        out[f"{name}.weight"] = p[("connector", name, "kernel")].T
        out[f"{name}.bias"] = p[("connector", name, "bias")]
    for name in CONNECTOR_NORMS:
        out[f"{name}.weight"] = p[("connector", name, "scale")]
        out[f"{name}.bias"] = p[("connector", name, "bias")]
    for j in range(a.v_depth):
        blk = ("connector", "visual_blocks")
        for name in BLOCK_DENSE:
            leaf = blk + tuple(name.split("."))
            out[f"visual_blocks.{j}.{name}.weight"] = p[leaf + ("kernel",)][j].T
            out[f"visual_blocks.{j}.{name}.bias"] = p[leaf + ("bias",)][j]
        for name in BLOCK_NORMS:
            out[f"visual_blocks.{j}.{name}.weight"] = p[blk + (name, "scale")][j]
            out[f"visual_blocks.{j}.{name}.bias"] = p[blk + (name, "bias")][j]
    return out


def export_official(ckpt: str, out_file: str, overwrite: bool = False) -> str:
    """`lav2 export official --ckpt C --out FILE.pth`."""
    import torch  # lazy: the optional `convert` extra

    cfg = export_config(ckpt, out_file, overwrite, check_exportable)
    model = build_model(cfg.model, cfg.adapter, cfg.vision)
    sd = official_state_dict(model, load_adapter(ckpt))
    info = cfg.meta.get("official", {})
    dtypes = info.get("dtypes", {})
    a = cfg.adapter
    config = info.get("config") or {"w_bias": a.linear_kind == "bias_qo_ffn", "w_lora": a.lora_rank > 0,
                                    "lora_rank": a.lora_rank or 16}
    tensors = {k: torch.from_numpy(np.array(v, copy=True)).to(getattr(torch, dtypes.get(k, "float32")))
               for k, v in sd.items()}
    tmp = f"{out_file}.tmp-{os.getpid()}"
    torch.save({"model": tensors, "config": dict(config)}, tmp)
    os.replace(tmp, out_file)
    return os.path.abspath(out_file)
