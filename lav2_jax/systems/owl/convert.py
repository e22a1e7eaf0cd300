"""mPLUG-Owl (v1) checkpoints → our tree (docs/design.md §5.1, §5.2, §7.7; trees in `lav2_jax.systems.owl.vision`
and `lav2_jax.systems.owl.abstractor`).

Released layout (`MAGAer13/mplug-owl-llama-7b`, an HF-style directory: `config.json`, `pytorch_model*.bin` or
safetensors, `tokenizer.model`): `vision_model.*` → `owl_vision/...`, `abstractor.*` + the top-level
`query_tokens` → `abstractor/...`, `language_model.{model.*, lm_head.weight}` → the LLaMA leaves (the HF Llama map
of `convert.hf`; `…rotary_emb.inv_freq` buffers ignored). The fused `query_key_value` rows are already per head
and are kept as they are; torch [out, in] weights become [in, out] kernels; [1, 1, D] / [1, T, D] embeddings lose
their leading ones.

`config.json` → configs: `text_config` (a Llama config) → ModelConfig, `vision_config` (hidden_size,
intermediate_size, num_hidden_layers, num_attention_heads, image_size, patch_size, layer_norm_eps) → VisionConfig,
`visual_abstractor_config` (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
layer_norm_eps, attention_probs_dropout_prob) + `num_query_tokens` → AbstractorConfig. A missing field takes the
release's value (ViT-L/14 at 224 px, eps 1e-6; 6 layers, 16 heads, 2816, 64 queries).

CLIP → Owl vision (`clip_owl_plan`, used by `lav2 convert clip --layout owl`): the CLIP tower's names are mapped as
§5.1 lists and the `[q; k; v]` rows re-ordered per head (`owl_vision.blocked_to_per_head`); `proj` is dropped. The
eps change (1e-5 → 1e-6) is a config difference, not a weight one: the written VisionConfig carries eps 1e-6.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lav2_jax.checkpoint.convert import ops
from lav2_jax.checkpoint.convert.clip import (HF_IGNORE, OPENAI_IGNORE, TOP, _names, hf_heads, infer_vision, nn_unbox,
                                              open_clip)
from lav2_jax.checkpoint.convert.hf import _tokenizer_subset, hf_config, hf_llama_plan, read_json, weight_files
from lav2_jax.checkpoint.convert.plan import Ref, convert_plan, model_targets, single, stacked
from lav2_jax.checkpoint.layout import BASE_ITEM, CheckpointConfig
from lav2_jax.core.config import AbstractorConfig, AdapterConfig, VisionConfig
from lav2_jax.model.factory import build_model
from lav2_jax.systems.owl.vision import OwlVisionModel, blocked_to_per_head
from lav2_jax.systems.owl.visual import owl_splice

OWL_LN_EPS = 1e-6
VISION_DEFAULTS = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                   "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "layer_norm_eps": OWL_LN_EPS}
ABSTRACTOR_DEFAULTS = {"hidden_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 16,
                       "intermediate_size": 2816, "layer_norm_eps": OWL_LN_EPS, "attention_probs_dropout_prob": 0.1}
OWL_IGNORE = (r"rotary_emb\.inv_freq$",)


def _get(cfg: dict, defaults: dict, key: str, where: str):
    value = cfg.get(key, defaults[key])
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{where}: field {key!r} is {value!r}, expected a number")
    return value


def owl_vision_config(cfg: dict, where: str, weight_dtype: str) -> VisionConfig:
    """VisionConfig from a release `vision_config` dict (`output_dim` = width: Owl has no projection)."""
    g = lambda k: _get(cfg, VISION_DEFAULTS, k, f"{where}: vision_config")  # noqa: E731
    width = int(g("hidden_size"))
    return VisionConfig(image_size=int(g("image_size")), patch_size=int(g("patch_size")), width=width,
                        layers=int(g("num_hidden_layers")), heads=int(g("num_attention_heads")),
                        mlp_ratio=int(g("intermediate_size")) / width, output_dim=width,
                        layer_norm_eps=float(g("layer_norm_eps")), weight_dtype=weight_dtype, dtype=weight_dtype)


def abstractor_config(cfg: dict, num_queries: int, where: str) -> AbstractorConfig:
    """AbstractorConfig from a release `visual_abstractor_config` dict and `num_query_tokens`."""
    g = lambda k: _get(cfg, ABSTRACTOR_DEFAULTS, k, f"{where}: visual_abstractor_config")  # noqa: E731
    try:
        return AbstractorConfig(num_queries=int(num_queries), layers=int(g("num_hidden_layers")),
                                width=int(g("hidden_size")), heads=int(g("num_attention_heads")),
                                mlp_dim=int(g("intermediate_size")), layer_norm_eps=float(g("layer_norm_eps")),
                                attention_dropout=float(g("attention_probs_dropout_prob")))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _refs(by_key: dict, where: str):
    def ref(key, shape):
        if key not in by_key:
            raise ValueError(f"{where}: missing key {key!r}")
        return [Ref(by_key[key], key, tuple(shape))]
    return ref


def _reshape(shape):
    return lambda arrays: arrays[0].reshape(shape)


def _conv(arrays):
    return arrays[0].transpose(2, 3, 1, 0)


def _ln(plan: list, ref, ours: tuple, key: str, dim: int, layers: Optional[int] = None, fmt: str = "{}"):
    """scale/bias leaves of a LayerNorm (stacked over `layers` when given; `fmt` formats the layer into `key`)."""
    for leaf, suffix in (("scale", ".weight"), ("bias", ".bias")):
        if layers is None:
            plan.append(single(ours + (leaf,), (dim,), ref(key + suffix, (dim,)), ops.first))
        else:
            plan.append(stacked(ours + (leaf,), (dim,),
                                ((ref(key.format(i) + suffix, (dim,)), ops.first) for i in range(layers))))


def _dense(plan: list, ref, ours: tuple, key: str, out_in: tuple, layers: int, weight_fn=ops.linear(0),
           bias_fn=ops.first):
    """kernel [in, out] / bias [out] of a torch Linear `key.format(i)` [out, in], stacked over `layers`."""
    plan.append(stacked(ours + ("kernel",), out_in[::-1],
                        ((ref(key.format(i) + ".weight", out_in), weight_fn) for i in range(layers))))
    plan.append(stacked(ours + ("bias",), out_in[:1],
                        ((ref(key.format(i) + ".bias", out_in[:1]), bias_fn) for i in range(layers))))


def owl_vision_plan(v: VisionConfig, by_key: dict, where: str, prefix: str = "vision_model.") -> list:
    """LeafPlans of `owl_vision/...` from the release's `vision_model.*` keys."""
    D, M, P, T, L = v.width, int(round(v.width * v.mlp_ratio)), v.patch_size, v.num_tokens, v.layers
    ref, o = _refs(by_key, where), ("owl_vision",)
    e = prefix + "embeddings."
    plan = [single(o + ("patch_embed", "kernel"), (P, P, 3, D), ref(e + "patch_embed.weight", (D, 3, P, P)), _conv),
            single(o + ("cls_token",), (D,), ref(e + "cls_token", (1, 1, D)), _reshape((D,))),
            single(o + ("position_embedding",), (T, D), ref(e + "position_embedding", (1, T, D)), _reshape((T, D)))]
    _ln(plan, ref, o + ("pre_layernorm",), e + "pre_layernorm", D)
    _ln(plan, ref, o + ("post_layernorm",), prefix + "post_layernorm", D)
    lay, ol = prefix + "encoder.layers.{}.", o + ("layers",)
    for name in ("input_layernorm", "post_attention_layernorm"):
        _ln(plan, ref, ol + (name,), lay + name, D, L)
    for ours, theirs, shape in ((("self_attn", "query_key_value"), "self_attn.query_key_value", (3 * D, D)),
                                (("self_attn", "dense"), "self_attn.dense", (D, D)),
                                (("mlp", "fc1"), "mlp.fc1", (M, D)), (("mlp", "fc2"), "mlp.fc2", (D, M))):
        _dense(plan, ref, ol + ours, lay + theirs, shape, L)
    return plan


def abstractor_plan(a: AbstractorConfig, out_dim: int, by_key: dict, where: str) -> list:
    """LeafPlans of `abstractor/...` from the release's `abstractor.*` keys and `query_tokens`."""
    W, I, Q, L, O = a.width, a.mlp_dim, a.num_queries, a.layers, out_dim
    ref, o = _refs(by_key, where), ("abstractor",)
    plan = [single(o + ("query_tokens",), (Q, W), ref("query_tokens", (1, Q, W)), _reshape((Q, W))),
            single(o + ("vit_eos",), (O,), ref("abstractor.vit_eos", (1, 1, O)), _reshape((O,))),
            single(o + ("visual_fc", "kernel"), (W, O), ref("abstractor.visual_fc.weight", (O, W)), ops.linear(0)),
            single(o + ("visual_fc", "bias"), (O,), ref("abstractor.visual_fc.bias", (O,)), ops.first)]
    lay, ol = "abstractor.encoder.layers.{}.crossattention.", o + ("layers",)
    for ours, theirs, dim in (("norm1", "norm1", W), ("normk", "normk", W), ("norm2", "output.norm2", W)):
        _ln(plan, ref, ol + (ours,), lay + theirs, dim, L)
    _ln(plan, ref, ol + ("mlp", "ffn_ln"), lay + "output.mlp.ffn_ln", I, L)
    for ours, theirs, shape in ((("query",), "attention.query", (W, W)), (("key",), "attention.key", (W, W)),
                                (("value",), "attention.value", (W, W)), (("out_proj",), "output.out_proj", (W, W)),
                                (("mlp", "w1"), "output.mlp.w1", (I, W)), (("mlp", "w3"), "output.mlp.w3", (I, W)),
                                (("mlp", "w2"), "output.mlp.w2", (W, I))):
        _dense(plan, ref, ol + ours, lay + theirs, shape, L)
    return plan


def clip_owl_plan(v: VisionConfig, by_key: dict, fmt: str, where: str) -> list:
    """LeafPlans of `owl_vision/...` from an OpenAI (`fmt='openai'`) or HF (`'hf'`) CLIP vision state dict."""
    D, M, P, T, L, N = v.width, int(round(v.width * v.mlp_ratio)), v.patch_size, v.num_tokens, v.layers, v.heads
    top, names, ref, o = TOP[fmt], _names(fmt), _refs(by_key, where), ("owl_vision",)
    plan = [single(o + ("patch_embed", "kernel"), (P, P, 3, D), ref(top["conv"], (D, 3, P, P)), _conv),
            single(o + ("cls_token",), (D,), ref(top["cls"], (D,)), ops.first),
            single(o + ("position_embedding",), (T, D), ref(top["pos"], (T, D)), ops.first)]
    _ln(plan, ref, o + ("pre_layernorm",), top["ln_pre"], D)
    _ln(plan, ref, o + ("post_layernorm",), top["ln_post"], D)
    fmt_i = lambda name: names[name].replace("{i}", "{}")  # noqa: E731
    ol = o + ("layers",)
    _ln(plan, ref, ol + ("input_layernorm",), fmt_i("ln_1"), D, L)
    _ln(plan, ref, ol + ("post_attention_layernorm",), fmt_i("ln_2"), D, L)
    for ours, theirs, shape in ((("self_attn", "dense"), "attn/out", (D, D)), (("mlp", "fc1"), "mlp/c_fc", (M, D)),
                                (("mlp", "fc2"), "mlp/c_proj", (D, M))):
        _dense(plan, ref, ol + ours, fmt_i(theirs), shape, L)
    qkv = ol + ("self_attn", "query_key_value")
    if fmt == "openai":  # in_proj_weight [3D, D] = [q; k; v]
        w = lambda i: ref(fmt_i("in_proj").format(i) + "weight", (3 * D, D))  # noqa: E731
        b = lambda i: ref(fmt_i("in_proj").format(i) + "bias", (3 * D,))  # noqa: E731
        join = lambda arrays: arrays[0]  # noqa: E731
    else:  # separate q_proj / k_proj / v_proj
        w = lambda i: sum((ref(fmt_i(f"attn/{x}").format(i) + ".weight", (D, D)) for x in "qkv"), [])  # noqa: E731
        b = lambda i: sum((ref(fmt_i(f"attn/{x}").format(i) + ".bias", (D,)) for x in "qkv"), [])  # noqa: E731
        join = lambda arrays: np.concatenate(arrays, axis=0)  # noqa: E731
    plan.append(stacked(qkv + ("kernel",), (D, 3 * D),
                        ((w(i), lambda arrs: blocked_to_per_head(join(arrs), N).T) for i in range(L))))
    plan.append(stacked(qkv + ("bias",), (3 * D,),
                        ((b(i), lambda arrs: blocked_to_per_head(join(arrs), N)) for i in range(L))))
    return plan


def clip_owl_ignore(fmt: str) -> tuple:
    """Source keys of a CLIP file that the Owl vision model does not use (text tower, `proj`, position ids)."""
    return (OPENAI_IGNORE + (r"^visual\.proj$",)) if fmt == "openai" else (HF_IGNORE + (r"^visual_projection\.",))


def read_owl_config(hf_dir: str) -> tuple[dict, str]:
    path = os.path.join(hf_dir, "config.json")
    cfg = read_json(path)
    for key in ("text_config", "vision_config", "visual_abstractor_config"):
        if not isinstance(cfg.get(key, {}), dict):
            raise ValueError(f"{path}: {key!r} is not an object")
    if not isinstance(cfg.get("text_config"), dict):
        raise ValueError(f"{path}: no 'text_config' (not an mPLUG-Owl config.json?)")
    return cfg, path


def owl_configs(cfg: dict, path: str, weight_dtype: str, max_seq_len: Optional[int] = None):
    """(ModelConfig, AdapterConfig, VisionConfig) of a release `config.json` (parsed `cfg`, read from `path`).

    The adapter is the inference form: no LLaMA adapters, the Owl splice (65 placeholder ids per image).
    """
    model, tied = hf_config(cfg["text_config"], f"{path}: text_config", weight_dtype, max_seq_len)
    if tied:
        raise ValueError(f"{path}: text_config.tie_word_embeddings is true; the release has its own lm_head")
    vision = owl_vision_config(cfg.get("vision_config") or {}, path, weight_dtype)
    num_queries = cfg.get("num_query_tokens", 64)
    if not isinstance(num_queries, int) or num_queries < 1:
        raise ValueError(f"{path}: num_query_tokens is {num_queries!r}, expected a positive integer")
    abstractor = abstractor_config(cfg.get("visual_abstractor_config") or {}, num_queries, path)
    enc = (cfg.get("visual_abstractor_config") or {}).get("encoder_hidden_size", vision.width)
    if abstractor.width != vision.width or enc != vision.width:
        raise ValueError(f"{path}: visual_abstractor_config hidden_size {abstractor.width} / encoder_hidden_size "
                         f"{enc} must equal vision_config.hidden_size {vision.width}")
    adapter = AdapterConfig(linear_kind="none", norm_tuning=False, prompt_len=0, prompt_layers=0,
                            visual_fusion="none", splice=owl_splice(abstractor))
    return model, adapter, vision


def convert_mplug_owl(hf_dir: str, out_dir: str, *, weight_dtype: str = "bfloat16",
                      max_seq_len: Optional[int] = None, overwrite: bool = False) -> str:
    """`lav2 convert mplug-owl`: a released mPLUG-Owl directory → a complete checkpoint (vision, abstractor, LLM).

    Every tensor of the weight files must be consumed (only `rotary_emb.inv_freq` buffers are ignored): a
    missing or an extra key is an error naming the file and the key, raised before anything is written.
    """
    cfg, path = read_owl_config(hf_dir)
    model_cfg, adapter, vision = owl_configs(cfg, path, weight_dtype, max_seq_len)
    by_key, files = weight_files(hf_dir)
    model = build_model(model_cfg, adapter, vision)
    plan = (hf_llama_plan(model_cfg, by_key, False, hf_dir, prefix="language_model.")
            + owl_vision_plan(vision, by_key, hf_dir) + abstractor_plan(adapter.splice.abstractor, model_cfg.dim,
                                                                        by_key, hf_dir))
    tok = hf_dir if any(os.path.isfile(os.path.join(hf_dir, n)) for n in ("tokenizer.json", "tokenizer.model")) \
        else None
    ckpt = CheckpointConfig(model=model_cfg, adapter=adapter, vision=vision, meta={"source": "mplug-owl"})
    return convert_plan(out_dir, ckpt, model_targets(model), plan, [(f, OWL_IGNORE) for f in files],
                        config_source=path, tokenizer=_tokenizer_subset(tok), overwrite=overwrite)


def convert_clip_owl(clip: str, out_dir: str, *, heads: Optional[int] = None, weight_dtype: str = "bfloat16",
                     overwrite: bool = False) -> str:
    """`lav2 convert clip --layout owl`: a vision-only checkpoint of `owl_vision/...` leaves (eps 1e-6, no proj)
    from OpenAI / HF CLIP weights, to initialise mPLUG-Owl's vision model (stage 1)."""
    fmt, by_key, files = open_clip(clip)
    clip_v = infer_vision(by_key, fmt, clip, heads or hf_heads(clip), weight_dtype)
    vision = clip_v.replace(output_dim=clip_v.width, layer_norm_eps=OWL_LN_EPS)
    plan = clip_owl_plan(vision, by_key, fmt, clip)
    img = jax.ShapeDtypeStruct((1, vision.image_size, vision.image_size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: OwlVisionModel(vision).init(jax.random.PRNGKey(0), x)["params"], img)
    shapes = {("owl_vision",) + k: v for k, v in traverse_util.flatten_dict(nn_unbox(shapes)).items()}
    ckpt = CheckpointConfig(model=None, adapter=None, vision=vision, meta={"source": f"clip-{fmt}", "layout": "owl"})
    return convert_plan(out_dir, ckpt, (shapes, {k: BASE_ITEM for k in shapes}), plan,
                        [(f, clip_owl_ignore(fmt)) for f in files], config_source=f"the tensor shapes of {clip}",
                        overwrite=overwrite)
