"""Meta LLaMA checkpoints → our tree (docs/design.md §7.2): `params.json` + `consolidated.NN.pth` model-parallel
shards.

Shard merging, torch [out, in] layout: wq wk wv w1 w3 `output` concatenate on dim 0, wo w2 on dim 1,
`tok_embeddings` on dim 1; norms are replicated (taken from shard 0, checked in every shard); `rope.freqs` ignored.
wq / wk rows are RoPE-permuted to the half-split layout (k with n_kv_heads). `llama_plan` is shared with the
official and chat65b converters (`prefix` = `llama.` in released files).
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Optional

from lav2_jax.checkpoint.convert import ops
from lav2_jax.checkpoint.convert.plan import Ref, convert_plan, model_targets, single, stacked
from lav2_jax.checkpoint.convert.sources import TensorFile
from lav2_jax.checkpoint.layout import CheckpointConfig
from lav2_jax.core import presets
from lav2_jax.core.config import ModelConfig
from lav2_jax.data.tokenizer import load_tokenizer
from lav2_jax.model.factory import build_model

LINEARS = {"wq": ("attention", 0), "wk": ("attention", 0), "wv": ("attention", 0), "wo": ("attention", 1),
           "w1": ("feed_forward", 0), "w2": ("feed_forward", 1), "w3": ("feed_forward", 0)}
META_IGNORE = (r"(^|\.)rope\.freqs$",)


def read_params(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            params = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (a Meta checkpoint directory holds params.json)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable params.json: {e}") from None
    for key in ("dim", "n_layers", "n_heads"):
        if not isinstance(params.get(key), int):
            raise ValueError(f"{path}: missing or non-integer {key!r}")
    return params


def config_from_params(params: dict, path: str, *, vocab_size: Optional[int] = None, weight_dtype: str = "bfloat16",
                       max_seq_len: int = 2048) -> ModelConfig:
    """ModelConfig from a Meta `params.json` (vocab_size -1 in LLaMA-1/2: taken from the tokenizer)."""
    vocab = params.get("vocab_size", -1)
    if vocab is None or vocab <= 0:
        if vocab_size is None:
            raise ValueError(f"{path}: vocab_size is {vocab} and no tokenizer was given to take it from")
        vocab = vocab_size
    try:
        return ModelConfig(dim=params["dim"], n_layers=params["n_layers"], n_heads=params["n_heads"],
                           n_kv_heads=params.get("n_kv_heads"), vocab_size=vocab,
                           multiple_of=params.get("multiple_of", 256),
                           ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
                           norm_eps=params.get("norm_eps", 1e-6), rope_theta=params.get("rope_theta", 10000.0),
                           max_seq_len=max_seq_len, weight_dtype=weight_dtype, dtype=weight_dtype)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def shard_paths(directory: str) -> list[str]:
    """`consolidated.00.pth ... consolidated.NN.pth`, checked to be numbered 0..N-1."""
    paths = sorted(glob.glob(os.path.join(directory, "consolidated.*.pth")))
    if not paths:
        raise ValueError(f"{directory}: no consolidated.NN.pth files")
    numbers = [int(m.group(1)) if (m := re.search(r"consolidated\.(\d+)\.pth$", p)) else -1 for p in paths]
    if numbers != list(range(len(paths))):
        raise ValueError(f"{directory}: shard files are not numbered 00..{len(paths) - 1:02d}: "
                         f"{[os.path.basename(p) for p in paths]}")
    return paths


def shard_shape(full: tuple, axis: int, shards: list, key: str) -> tuple:
    """The shape each of `len(shards)` shards holds of a tensor of shape `full` split on `axis`."""
    n = len(shards)
    if axis is None or n == 1:
        return tuple(full)
    if full[axis] % n:
        raise ValueError(f"{shards[0].path}: {n} model-parallel shards do not divide {key} (dim {axis} of "
                         f"{tuple(full)})")
    return tuple(d // n if i == axis else d for i, d in enumerate(full))


def refs(shards: list, key: str, full: tuple, axis) -> list:
    """One Ref per shard (all of them, so that replicated tensors are checked in every shard)."""
    shape = shard_shape(full, axis, shards, key)
    return [Ref(f, key, shape) for f in shards]


def linear_shapes(c: ModelConfig) -> dict[str, tuple]:
    """torch [out, in] shapes of the seven linears."""
    q, kv, d, h = c.n_heads * c.head_dim, c.kv_heads * c.head_dim, c.dim, c.hidden_dim
    return {"wq": (q, d), "wk": (kv, d), "wv": (kv, d), "wo": (d, q), "w1": (h, d), "w2": (d, h), "w3": (h, d)}


def rope_heads(c: ModelConfig, name: str) -> int:
    """Heads whose output rows carry RoPE (0: none) for linear `name`."""
    return {"wq": c.n_heads, "wk": c.kv_heads}.get(name, 0)


def llama_plan(c: ModelConfig, shards: list, prefix: str = "", norms: bool = True) -> list:
    """LeafPlans of the frozen LLaMA (and its norms unless `norms` False: they come from an adapter file)."""
    L = c.n_layers
    lay = prefix + "layers.{}."
    plan = [single(("tok_embeddings", "embedding"), (c.vocab_size, c.dim),
                   refs(shards, prefix + "tok_embeddings.weight", (c.vocab_size, c.dim), 1), ops.cat(1)),
            single(("output", "kernel"), (c.dim, c.vocab_size),
                   refs(shards, prefix + "output.weight", (c.vocab_size, c.dim), 0), ops.linear(0))]
    for name, full in linear_shapes(c).items():
        group, axis = LINEARS[name]
        fn = ops.linear(axis, rope_heads(c, name))
        plan.append(stacked(("layers", group, name, "kernel"), full[::-1],
                            ((refs(shards, lay.format(i) + f"{group}.{name}.weight", full, axis), fn)
                             for i in range(L))))
    if norms:
        for norm in ("attention_norm", "ffn_norm"):
            plan.append(stacked(("layers", norm, "scale"), (c.dim,),
                                ((refs(shards, lay.format(i) + f"{norm}.weight", (c.dim,), None), ops.first)
                                 for i in range(L))))
        plan.append(single(("norm", "scale"), (c.dim,), refs(shards, prefix + "norm.weight", (c.dim,), None),
                           ops.first))
    return plan


def norm_keys(prefix: str = "") -> tuple[str, ...]:
    """Regexes of the norm keys (ignored in Meta shards when an adapter file supplies tuned norms)."""
    p = re.escape(prefix)
    return (rf"^{p}layers\.\d+\.(attention_norm|ffn_norm)\.weight$", rf"^{p}norm\.weight$")


def tokenizer_vocab(tokenizer: Optional[str]) -> Optional[int]:
    if tokenizer is None:
        return None
    return load_tokenizer(tokenizer).vocab_size


def convert_meta(ckpt_dir: str, out_dir: str, *, tokenizer: Optional[str] = None, weight_dtype: str = "bfloat16",
                 max_seq_len: int = 2048, overwrite: bool = False) -> str:
    """`lav2 convert meta`: a Meta LLaMA directory → a language-only checkpoint (adapter preset `none`)."""
    params_path = os.path.join(ckpt_dir, "params.json")
    if tokenizer is None:
        for cand in (os.path.join(ckpt_dir, "tokenizer.model"), os.path.join(ckpt_dir, "..", "tokenizer.model")):
            if os.path.isfile(cand):
                tokenizer = cand
                break
    config = config_from_params(read_params(params_path), params_path, vocab_size=tokenizer_vocab(tokenizer),
                                weight_dtype=weight_dtype, max_seq_len=max_seq_len)
    shards = [TensorFile(p) for p in shard_paths(ckpt_dir)]
    model = build_model(config, presets.get_adapter("none"))
    ckpt = CheckpointConfig(model=config, adapter=model.adapter, meta={"source": "meta", "shards": len(shards)})
    return convert_plan(out_dir, ckpt, model_targets(model), llama_plan(config, shards),
                        [(f, META_IGNORE) for f in shards], config_source=params_path, tokenizer=tokenizer,
                        overwrite=overwrite)
