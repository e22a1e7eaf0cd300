"""The released 65B chat model (language only; docs/design.md §3.1.1 `input` placement, §7.4) → a checkpoint.

A full state dict under `'model'` (Meta keys, optionally `llama.`-prefixed), one file or model-parallel shards,
plus per layer `attention.w{q,k,v,o}_bias` / `_scale` and `feed_forward.w{1,2,3}_bias` / `_scale`: the bias is
sized by the linear's output, the (input-side) scale by its input. Shard axes follow the linear: column-parallel
wq wk wv w1 w3 split their weight and bias on dim 0 and replicate the scale; row-parallel wo w2 split the weight on
dim 1 and the scale on dim 0 and replicate the bias. wq/wk bias rows are RoPE-permuted (output side); scales are
input side and stay. Adapter preset `chat65b`: input-side scale + bias on all linears, tuned norms, no prompts.
"""

from __future__ import annotations

from lav2_jax.checkpoint.convert import ops
from lav2_jax.checkpoint.convert.meta import (LINEARS, META_IGNORE, config_from_params, linear_shapes, llama_plan,
                                              read_params, refs, rope_heads, tokenizer_vocab)
from lav2_jax.checkpoint.convert.plan import convert_plan, model_targets, stacked
from lav2_jax.checkpoint.convert.sources import TensorFile
from lav2_jax.checkpoint.layout import CheckpointConfig
from lav2_jax.core import presets
from lav2_jax.model.factory import build_model


def chat_plan(c, shards: list, prefix: str) -> list:
    """LeafPlans of the bias / scale leaves (the rest is `llama_plan`)."""
    plan = []
    lay = prefix + "layers.{}."
    for name, (out, inp) in linear_shapes(c).items():
        group, axis = LINEARS[name]
        bias_axis, scale_axis = (0, None) if axis == 0 else (None, 0)
        bias_fn = ops.first if bias_axis is None else ops.vector(0, rope_heads(c, name))
        scale_fn = ops.first if scale_axis is None else ops.vector(0)
        plan.append(stacked(("layers", group, name, "bias"), (out,),
                            ((refs(shards, lay.format(i) + f"{group}.{name}_bias", (out,), bias_axis), bias_fn)
                             for i in range(c.n_layers))))
        plan.append(stacked(("layers", group, name, "scale"), (inp,),
                            ((refs(shards, lay.format(i) + f"{group}.{name}_scale", (inp,), scale_axis), scale_fn)
                             for i in range(c.n_layers))))
    return plan


def convert_chat65b(ckpts: list, params: str, tokenizer: str, out_dir: str, *, weight_dtype: str = "bfloat16",
                    max_seq_len: int = 2048, overwrite: bool = False) -> str:
    """`lav2 convert chat65b --ckpt FILE [FILE ...] --params params.json --tokenizer tokenizer.model --out OUT`."""
    config = config_from_params(read_params(params), params, vocab_size=tokenizer_vocab(tokenizer),
                                weight_dtype=weight_dtype, max_seq_len=max_seq_len)
    shards = [TensorFile(p, subkey="model") for p in ckpts]
    prefix = "llama." if any(k.startswith("llama.") for k in shards[0].keys()) else ""
    model = build_model(config, presets.get_adapter("chat65b"))
    plan = llama_plan(config, shards, prefix) + chat_plan(config, shards, prefix)
    ckpt = CheckpointConfig(model=config, adapter=model.adapter, meta={"source": "chat65b", "shards": len(shards)})
    return convert_plan(out_dir, ckpt, model_targets(model), plan, [(f, META_IGNORE) for f in shards],
                        config_source=params, tokenizer=tokenizer, overwrite=overwrite)
