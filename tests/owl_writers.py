"""Tiny mPLUG-Owl (v1) checkpoints in the released key format, and a numpy reference of its visual path.

The released layout (docs/design.md §7.7): every 7B key name (`query_tokens`, `vision_model.*`, `abstractor.*`,
`language_model.model.*` incl. `rotary_emb.inv_freq` buffers, `language_model.lm_head.weight`) at tiny shapes;
the language model is a random `transformers` `LlamaForCausalLM`. The numpy reference follows docs/design.md's
equations (§5.1, §5.2) on the released keys directly: per-head `[q_h, k_h, v_h]` rows of `query_key_value`, fp32
LayerNorms (vision eps 1e-6, abstractor norm1/normk/norm2 1e-5, ffn_ln 1e-6), the normed-query residual.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from lav2_jax.core import presets
from lav2_jax.core.config import AbstractorConfig, VisionConfig

VISION = VisionConfig(image_size=32, patch_size=8, width=32, layers=2, heads=4, mlp_ratio=2.0, output_dim=32,
                      layer_norm_eps=1e-6, weight_dtype="float32", dtype="float32")
ABSTRACTOR = AbstractorConfig(num_queries=4, layers=2, width=32, heads=4, mlp_dim=40)
LLM = presets.get_model("tiny").replace(n_kv_heads=None, max_seq_len=512)  # LLaMA-1: no GQA; room for the prompt


def released_owl_state(hf_llama, seed: int = 0, v: VisionConfig = VISION, a: AbstractorConfig = ABSTRACTOR) -> dict:
    """{released key: torch tensor}: random vision/abstractor tensors (norms ≈ 1) + the HF Llama's weights."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s, scale=0.2: scale * torch.randn(*s, generator=gen)  # noqa: E731
    D, M, P, T, O = v.width, int(v.width * v.mlp_ratio), v.patch_size, v.num_tokens, hf_llama.config.hidden_size
    W, I = a.width, a.mlp_dim
    sd = {"query_tokens": rnd(1, a.num_queries, W, scale=1.0)}
    e = "vision_model.embeddings."
    sd[e + "cls_token"], sd[e + "position_embedding"] = rnd(1, 1, D), rnd(1, T, D)
    sd[e + "patch_embed.weight"] = rnd(D, 3, P, P)

    def ln(key, dim):
        sd[key + ".weight"], sd[key + ".bias"] = 1 + rnd(dim), rnd(dim)

    def lin(key, out, inp):
        sd[key + ".weight"], sd[key + ".bias"] = rnd(out, inp, scale=inp ** -0.5), rnd(out)

    ln(e + "pre_layernorm", D)
    for i in range(v.layers):
        b = f"vision_model.encoder.layers.{i}."
        ln(b + "input_layernorm", D)
        ln(b + "post_attention_layernorm", D)
        lin(b + "self_attn.query_key_value", 3 * D, D)
        lin(b + "self_attn.dense", D, D)
        lin(b + "mlp.fc1", M, D)
        lin(b + "mlp.fc2", D, M)
    ln("vision_model.post_layernorm", D)
    for i in range(a.layers):
        b = f"abstractor.encoder.layers.{i}.crossattention."
        for name in ("query", "key", "value"):
            lin(b + "attention." + name, W, W)
        ln(b + "norm1", W)
        ln(b + "normk", W)
        lin(b + "output.out_proj", W, W)
        ln(b + "output.norm2", W)
        lin(b + "output.mlp.w1", I, W)
        lin(b + "output.mlp.w3", I, W)
        lin(b + "output.mlp.w2", W, I)
        ln(b + "output.mlp.ffn_ln", I)
    lin("abstractor.visual_fc", O, W)
    sd["abstractor.vit_eos"] = rnd(1, 1, O, scale=1.0)
    hd = hf_llama.config.hidden_size // hf_llama.config.num_attention_heads
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    for k, t in hf_llama.state_dict().items():
        sd["language_model." + k] = t.detach().clone()
    for i in range(hf_llama.config.num_hidden_layers):  # 4.28-era saves carry the RoPE buffer
        sd[f"language_model.model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    return {k: t.contiguous() for k, t in sd.items()}


def owl_config_json(hf_llama, v: VisionConfig = VISION, a: AbstractorConfig = ABSTRACTOR) -> dict:
    text = hf_llama.config.to_dict()
    return {"model_type": "mplug-owl", "architectures": ["MplugOwlForConditionalGeneration"],
            "num_query_tokens": a.num_queries, "text_config": text,
            "vision_config": {"hidden_size": v.width, "intermediate_size": int(v.width * v.mlp_ratio),
                              "num_hidden_layers": v.layers, "num_attention_heads": v.heads,
                              "image_size": v.image_size, "patch_size": v.patch_size, "layer_norm_eps": 1e-6,
                              "hidden_act": "quick_gelu", "projection_dim": 768},
            "visual_abstractor_config": {"hidden_size": a.width, "num_hidden_layers": a.layers,
                                         "num_attention_heads": a.heads, "intermediate_size": a.mlp_dim,
                                         "layer_norm_eps": 1e-6, "attention_probs_dropout_prob": 0.1,
                                         "encoder_hidden_size": v.width}}


def write_released_owl(directory, hf_llama, sd: dict, tokenizer: bool = True) -> str:
    """config.json + pytorch_model.bin (+ tokenizer.model) in `directory`; returns it."""
    from ckpt_utils import write_sentencepiece

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(owl_config_json(hf_llama), f)
    torch.save(sd, os.path.join(directory, "pytorch_model.bin"))
    if tokenizer:
        write_sentencepiece(os.path.join(directory, "tokenizer.model"), vocab_size=128)  # <= the LLM vocab
    return str(directory)


# ---------------------------------------------------------------------------------------------------------------
# numpy reference of the visual path, on released keys

def _np(sd, key):
    return sd[key].detach().double().numpy()


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _lin(sd, key, x):
    return x @ _np(sd, key + ".weight").T + _np(sd, key + ".bias")


def _norm(sd, key, x, eps):
    return _ln(x, _np(sd, key + ".weight"), _np(sd, key + ".bias"), eps)


def _softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def ref_vision(sd: dict, images_nhwc: np.ndarray, v: VisionConfig = VISION) -> np.ndarray:
    """[B, H, W, 3] → [B, T, D] float64: §5.1 with per-head q|k|v, QuickGELU, post_layernorm on every token."""
    x_img = np.asarray(images_nhwc, np.float64)
    B, P, D, N = x_img.shape[0], v.patch_size, v.width, v.heads
    g = v.image_size // P
    w = _np(sd, "vision_model.embeddings.patch_embed.weight")  # [D, 3, P, P]
    patches = x_img.reshape(B, g, P, g, P, 3).transpose(0, 1, 3, 5, 2, 4).reshape(B, g * g, 3 * P * P)
    x = patches @ w.reshape(D, -1).T
    cls = np.broadcast_to(_np(sd, "vision_model.embeddings.cls_token")[0], (B, 1, D))
    x = np.concatenate([cls, x], 1) + _np(sd, "vision_model.embeddings.position_embedding")
    x = _norm(sd, "vision_model.embeddings.pre_layernorm", x, v.layer_norm_eps)
    hd = D // N
    for i in range(v.layers):
        b = f"vision_model.encoder.layers.{i}."
        h = _norm(sd, b + "input_layernorm", x, v.layer_norm_eps)
        qkv = _lin(sd, b + "self_attn.query_key_value", h).reshape(B, -1, N, 3, hd)
        q, k, val = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
        p = _softmax(np.einsum("btnh,bsnh->bnts", q, k) * hd ** -0.5)
        x = x + _lin(sd, b + "self_attn.dense", np.einsum("bnts,bsnh->btnh", p, val).reshape(B, -1, D))
        h = _lin(sd, b + "mlp.fc1", _norm(sd, b + "post_attention_layernorm", x, v.layer_norm_eps))
        x = x + _lin(sd, b + "mlp.fc2", h / (1 + np.exp(-1.702 * h)))
    return _norm(sd, "vision_model.post_layernorm", x, v.layer_norm_eps)


def ref_abstractor(sd: dict, visual: np.ndarray, a: AbstractorConfig = ABSTRACTOR) -> np.ndarray:
    """[B, T, W] → [B, Q + 1, O] float64: §5.2 (K/V over [norm1(x); normk(v)], x = norm1(x) + out_proj(...))."""
    B, W, N = visual.shape[0], a.width, a.heads
    hd = W // N
    x = np.broadcast_to(_np(sd, "query_tokens"), (B, a.num_queries, W))
    for i in range(a.layers):
        b = f"abstractor.encoder.layers.{i}.crossattention."
        xn, vn = _norm(sd, b + "norm1", x, 1e-5), _norm(sd, b + "normk", visual, 1e-5)
        kv = np.concatenate([xn, vn], 1)
        q = _lin(sd, b + "attention.query", xn).reshape(B, -1, N, hd)
        k = _lin(sd, b + "attention.key", kv).reshape(B, -1, N, hd)
        val = _lin(sd, b + "attention.value", kv).reshape(B, -1, N, hd)
        p = _softmax(np.einsum("bqnh,bsnh->bnqs", q, k) / np.sqrt(hd))
        x = xn + _lin(sd, b + "output.out_proj", np.einsum("bnqs,bsnh->bqnh", p, val).reshape(B, -1, W))
        h = _norm(sd, b + "output.norm2", x, 1e-5)
        g1, g3 = _lin(sd, b + "output.mlp.w1", h), _lin(sd, b + "output.mlp.w3", h)
        inner = _norm(sd, b + "output.mlp.ffn_ln", g1 / (1 + np.exp(-g1)) * g3, a.layer_norm_eps)
        x = x + _lin(sd, b + "output.mlp.w2", inner)
    y = _lin(sd, "abstractor.visual_fc", x)
    eos = np.broadcast_to(_np(sd, "abstractor.vit_eos"), (B, 1, y.shape[-1]))
    return np.concatenate([y, eos], 1)


def materialize(plan: list) -> dict:
    """{leaf path: numpy array} of a conversion plan (`lav2_jax.checkpoint.convert.plan`), read in memory."""
    out = {}
    for leaf in plan:
        vals = [p.fn([r.file.get(r.key) for r in p.refs]) for p in leaf.pieces]
        out[leaf.key] = np.stack(vals) if leaf.stacked else vals[0]
    return out
