"""Tiny random checkpoints in each PyTorch source format, written by the tests themselves.

References come from `transformers` (`LlamaForCausalLM`, `CLIPVisionModel`); the Meta / OpenAI / released layouts
are derived from their state dicts by the key maps below (docs/design.md §7). Meta q/k rows are put in the interleaved RoPE order by
`meta_row_order`, an index permutation written here from the two conventions (nothing from `lav2_jax`).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

LINEAR_AXIS = {"wq": 0, "wk": 0, "wv": 0, "wo": 1, "w1": 0, "w2": 1, "w3": 0}
HF_NAMES = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj", "wo": "self_attn.o_proj",
            "w1": "mlp.gate_proj", "w2": "mlp.down_proj", "w3": "mlp.up_proj"}


def hf_llama(config, seed: int = 0, tie: bool = False):
    """A random `LlamaForCausalLM` sized like `config` (ModelConfig), norms perturbed away from 1."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.dim, intermediate_size=config.hidden_dim,
                      num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
                      num_key_value_heads=config.kv_heads, rms_norm_eps=config.norm_eps,
                      max_position_embeddings=config.max_seq_len, tie_word_embeddings=tie,
                      rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
                      attn_implementation="eager")
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def perturbed(model, scale: float, seed: int = 0):
    """`model` in eval mode with every parameter moved by `scale` · N(0, 1) noise (nothing at its init value)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


def hf_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(np.array(tokens), dtype=torch.long)).logits.float().numpy()


def meta_row_order(n_heads: int, head_dim: int) -> np.ndarray:
    """Row indices `order` with `w_meta = w_hf[order]` for a q or k projection of `n_heads` heads (kv heads for k).

    RoPE rotates pairs of a head's dims by the angle pos · theta^(-2i/head_dim), i < head_dim/2. Meta's checkpoints
    hold pair i in adjacent rows (2i: real part, 2i+1: imaginary part, a complex number per pair); Hugging Face's
    (`rotate_half`) hold it half a head apart (i and i + head_dim/2). So Meta row h·hd + 2i + c is HF row
    h·hd + c·hd/2 + i, head by head.
    """
    order = []
    for h in range(n_heads):
        for i in range(head_dim // 2):
            order.append(h * head_dim + i)  # first member of pair i (real part)
            order.append(h * head_dim + head_dim // 2 + i)  # its rotation partner (imaginary part)
    return np.asarray(order)


def meta_state_dict(hf_model, config, dtype=torch.float32) -> dict:
    """The Meta-layout state dict (q/k rows interleaved by `meta_row_order`) of an HF Llama."""
    sd = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    out = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
           "output.weight": sd.get("lm_head.weight", sd["model.embed_tokens.weight"])}
    for i in range(config.n_layers):
        pre = f"model.layers.{i}."
        for name, hf in HF_NAMES.items():
            w = sd[pre + hf + ".weight"]
            if name in ("wq", "wk"):
                n = config.n_heads if name == "wq" else config.kv_heads
                w = w[torch.as_tensor(meta_row_order(n, config.dim // config.n_heads))]
            group = "attention" if name.startswith("w") and name in ("wq", "wk", "wv", "wo") else "feed_forward"
            out[f"layers.{i}.{group}.{name}.weight"] = w
        out[f"layers.{i}.attention_norm.weight"] = sd[pre + "input_layernorm.weight"]
        out[f"layers.{i}.ffn_norm.weight"] = sd[pre + "post_attention_layernorm.weight"]
    return {k: v.to(dtype).contiguous() for k, v in out.items()}


def split_meta(sd: dict, n: int) -> list[dict]:
    """Model-parallel shards of a Meta state dict (docs/design.md §7.2 axes; norms replicated)."""
    shards = [{} for _ in range(n)]
    for k, v in sd.items():
        name = k.split(".")[-2]
        axis = (LINEAR_AXIS.get(name) if name in LINEAR_AXIS else
                1 if k == "tok_embeddings.weight" else 0 if k == "output.weight" else None)
        parts = [v] * n if axis is None else torch.chunk(v, n, dim=axis)
        for s, part in zip(shards, parts):
            s[k] = part.clone().contiguous()
    return shards


def write_meta(directory, config, sd: dict, n_shards: int = 1, params_extra: dict | None = None) -> str:
    os.makedirs(directory, exist_ok=True)
    params = {"dim": config.dim, "n_layers": config.n_layers, "n_heads": config.n_heads,
              "multiple_of": config.multiple_of, "norm_eps": config.norm_eps, "vocab_size": config.vocab_size}
    if config.n_kv_heads:
        params["n_kv_heads"] = config.n_kv_heads
    if config.ffn_dim_multiplier:
        params["ffn_dim_multiplier"] = config.ffn_dim_multiplier
    params.update(params_extra or {})
    with open(os.path.join(directory, "params.json"), "w") as f:
        json.dump(params, f)
    for i, shard in enumerate(split_meta(sd, n_shards)):
        torch.save(shard, os.path.join(directory, f"consolidated.{i:02d}.pth"))
    return str(directory)


def write_hf(directory, hf_model, fmt: str = "safetensors", max_shard_size: str = "20KB") -> str:
    """`save_pretrained` in safetensors (sharded with an index when large) or `.bin` format."""
    hf_model.save_pretrained(directory, safe_serialization=(fmt == "safetensors"), max_shard_size=max_shard_size)
    return str(directory)


def write_hf_bin(directory, hf_model) -> str:
    """A single-file `pytorch_model.bin` directory (transformers 5 only writes safetensors itself)."""
    os.makedirs(directory, exist_ok=True)
    hf_model.config.save_pretrained(directory)
    torch.save({k: v.contiguous() for k, v in hf_model.state_dict().items()},
               os.path.join(directory, "pytorch_model.bin"))
    return str(directory)


def meta_forward(sd: dict, c, tokens, prefix: str = "") -> np.ndarray:
    """An independent Meta-layout reference in float64 torch: interleaved complex RoPE (view_as_complex), GQA,
    optional `w*_bias` (output side) and `w*_scale` (input side) as in the 65B chat model."""
    g = lambda k: sd[prefix + k].double()  # noqa: E731
    has = lambda k: (prefix + k) in sd  # noqa: E731
    tok = torch.as_tensor(np.array(tokens), dtype=torch.long)
    B, T = tok.shape
    N, K, hd = c.n_heads, c.kv_heads, c.dim // c.n_heads
    x = g("tok_embeddings.weight")[tok]
    freqs = 1.0 / (c.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    cis = torch.polar(torch.ones(T, hd // 2, dtype=torch.float64), torch.outer(torch.arange(T).double(), freqs))

    def rms(h, w):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + c.norm_eps) * w

    def rope(h):
        hc = torch.view_as_complex(h.reshape(B, T, -1, hd // 2, 2).contiguous())
        return torch.view_as_real(hc * cis[None, :, None]).reshape(B, T, -1, hd)

    def lin(key, h):
        if has(key + "_scale"):
            h = h * g(key + "_scale")
        y = h @ g(key + ".weight").T
        return y + g(key + "_bias") if has(key + "_bias") else y

    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(c.n_layers):
        at, ff = f"layers.{i}.attention.", f"layers.{i}.feed_forward."
        h = rms(x, g(f"layers.{i}.attention_norm.weight"))
        q = rope(lin(at + "wq", h).reshape(B, T, N, hd))
        k = rope(lin(at + "wk", h).reshape(B, T, K, hd)).repeat_interleave(N // K, dim=2)
        v = lin(at + "wv", h).reshape(B, T, K, hd).repeat_interleave(N // K, dim=2)
        s = torch.einsum("btnh,bsnh->bnts", q, k) / hd ** 0.5 + mask
        o = torch.einsum("bnts,bsnh->btnh", torch.softmax(s, -1), v).reshape(B, T, N * hd)
        x = x + lin(at + "wo", o)
        h = rms(x, g(f"layers.{i}.ffn_norm.weight"))
        x = x + lin(ff + "w2", torch.nn.functional.silu(lin(ff + "w1", h)) * lin(ff + "w3", h))
    return (rms(x, g("norm.weight")) @ g("output.weight").T).float().numpy()


def add_chat_adapters(sd: dict, c, seed: int = 0) -> dict:
    """Adds non-trivial `w*_bias` [out] / `w*_scale` [in] tensors (65B chat keys) to a Meta state dict."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(sd)
    for i in range(c.n_layers):
        for name in LINEAR_AXIS:
            group = "attention" if name in ("wq", "wk", "wv", "wo") else "feed_forward"
            w = sd[f"layers.{i}.{group}.{name}.weight"]
            out[f"layers.{i}.{group}.{name}_bias"] = 0.1 * torch.randn(w.shape[0], generator=gen)
            out[f"layers.{i}.{group}.{name}_scale"] = 1 + 0.2 * torch.randn(w.shape[1], generator=gen)
    return out


def split_chat(sd: dict, n: int) -> list[dict]:
    """Model-parallel shards of a chat state dict: biases follow the output split, scales the input split."""
    base = {k: v for k, v in sd.items() if not k.endswith(("_bias", "_scale"))}
    shards = split_meta(base, n)
    for k, v in sd.items():
        if k.endswith(("_bias", "_scale")):
            name, kind = k.split(".")[-1].split("_")
            col = LINEAR_AXIS[name] == 0
            split = (kind == "bias") == col
            parts = torch.chunk(v, n) if split else [v] * n
            for s, part in zip(shards, parts):
                s[k] = part.clone().contiguous()
    return shards


def hf_clip(vision, seed: int = 0):
    """A random `CLIPVisionModelWithProjection` sized like `vision`, every weight perturbed."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=vision.width, intermediate_size=int(vision.width * vision.mlp_ratio),
                           num_hidden_layers=vision.layers, num_attention_heads=vision.heads,
                           image_size=vision.image_size, patch_size=vision.patch_size, hidden_act="quick_gelu",
                           layer_norm_eps=vision.layer_norm_eps, projection_dim=vision.output_dim,
                           attn_implementation="eager")
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def hf_clip_tokens(model, images_nhwc) -> np.ndarray:
    """Reference: projection of the post-LN hidden states of **all** tokens (docs/design.md §3.2.1)."""
    with torch.no_grad():
        pixels = torch.as_tensor(np.asarray(images_nhwc)).permute(0, 3, 1, 2)
        h = model.vision_model(pixel_values=pixels).last_hidden_state
        return model.visual_projection(model.vision_model.post_layernorm(h)).numpy()


def openai_clip_state_dict(model) -> dict:
    """The OpenAI `visual.*` layout of an HF CLIP tower, plus a few text-tower keys that must be ignored."""
    sd = {k.removeprefix("vision_model."): v.detach().clone() for k, v in model.state_dict().items()}
    out = {"visual.conv1.weight": sd["embeddings.patch_embedding.weight"],
           "visual.class_embedding": sd["embeddings.class_embedding"],
           "visual.positional_embedding": sd["embeddings.position_embedding.weight"],
           "visual.ln_pre.weight": sd["pre_layrnorm.weight"], "visual.ln_pre.bias": sd["pre_layrnorm.bias"],
           "visual.ln_post.weight": sd["post_layernorm.weight"], "visual.ln_post.bias": sd["post_layernorm.bias"],
           "visual.proj": sd["visual_projection.weight"].T.contiguous(),
           "token_embedding.weight": torch.zeros(5, 4), "logit_scale": torch.ones(())}
    n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    for i in range(n):
        s, o = f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        a = s + "self_attn."
        out[o + "attn.in_proj_weight"] = torch.cat([sd[a + f"{x}_proj.weight"] for x in "qkv"])
        out[o + "attn.in_proj_bias"] = torch.cat([sd[a + f"{x}_proj.bias"] for x in "qkv"])
        for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            out[o + ours + ".weight"] = sd[s + theirs + ".weight"]
            out[o + ours + ".bias"] = sd[s + theirs + ".bias"]
    return {k: v.contiguous() for k, v in out.items()}


def write_torchscript(path, state_dict: dict) -> str:
    """A TorchScript archive (torch.jit.trace) of a tiny module whose state_dict has exactly these keys."""

    class Holder(torch.nn.Module):
        def forward(self, x):
            return x * 2

    root = Holder()
    for key, value in state_dict.items():
        mod, parts = root, key.split(".")
        for part in parts[:-1]:
            if not hasattr(mod, part):
                mod.add_module(part, torch.nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(parts[-1], torch.nn.Parameter(value.clone(), requires_grad=False))
    torch.jit.save(torch.jit.trace(root, torch.zeros(1)), str(path))
    return str(path)


def released_adapter(c, clip_out: int, *, lora_rank: int = 0, bias: bool = True, q_len: int = 3,
                     v_width: int = 16, v_depth: int = 2, seed: int = 0) -> dict:
    """A released-format adapter file `{'model', 'config'}` with non-trivial values for every tensor (Meta RoPE
    layout); prompts in the last n_layers-1 layers; a few tensors stored in float16 (dtype round trip)."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: 0.3 * torch.randn(*shape, generator=gen)  # noqa: E731
    L, D, N, hd = c.n_layers, c.dim, c.n_heads, c.dim // c.n_heads
    kv, H = c.kv_heads * hd, c.hidden_dim
    shapes = {"wq": (N * hd, D), "wk": (kv, D), "wv": (kv, D), "wo": (D, N * hd), "w1": (H, D), "w2": (D, H),
              "w3": (H, D)}
    m = {"adapter_query.weight": rnd((L - 1) * q_len, D), "visual_query.weight": rnd(q_len, v_width),
         "clip_proj.weight": rnd(v_width, clip_out), "clip_proj.bias": rnd(v_width),
         "clip_proj_norm.weight": 1 + rnd(v_width), "clip_proj_norm.bias": rnd(v_width),
         "visual_proj.weight": rnd(D, v_width), "visual_proj.bias": rnd(D),
         "visual_proj_norm.weight": 1 + rnd(D), "visual_proj_norm.bias": rnd(D), "llama.norm.weight": 1 + rnd(D)}
    for j in range(v_depth):
        b = f"visual_blocks.{j}."
        for name, (o, i) in {"attn.qkv": (3 * v_width, v_width), "attn.proj": (v_width, v_width),
                             "mlp.fc1": (4 * v_width, v_width), "mlp.fc2": (v_width, 4 * v_width)}.items():
            m[b + name + ".weight"], m[b + name + ".bias"] = rnd(o, i), rnd(o)
        for name in ("norm1", "norm2"):
            m[b + name + ".weight"], m[b + name + ".bias"] = 1 + rnd(v_width), rnd(v_width)
    for i in range(L):
        lay = f"llama.layers.{i}."
        m[lay + "attention.gate"] = rnd(1, N, 1, 1)
        m[lay + "attention_norm.weight"], m[lay + "ffn_norm.weight"] = 1 + rnd(D), 1 + rnd(D)
        for name, (o, inp) in shapes.items():
            g = "attention" if name in ("wq", "wk", "wv", "wo") else "feed_forward"
            if bias and name not in ("wk", "wv"):
                m[lay + f"{g}.{name}.bias"] = rnd(o)
            if lora_rank:
                m[lay + f"{g}.lora_{name}_l1.weight"] = rnd(lora_rank, inp)
                m[lay + f"{g}.lora_{name}_l2.weight"] = rnd(o, lora_rank)
        if lora_rank:
            m[lay + "attention.new_gate"] = 1 + rnd(1, 1, 1, 1)
    m["visual_query.weight"] = m["visual_query.weight"].half()
    m["llama.layers.0.attention.gate"] = m["llama.layers.0.attention.gate"].half()
    return {"model": m, "config": {"w_bias": bias, "w_lora": lora_rank > 0, "lora_rank": lora_rank or 16}}


def write_official_inputs(tmp, c, hf_model, clip_model, **adapter_kw) -> dict:
    """The release's layout: LLAMA/tokenizer.model, LLAMA/7B/{params.json, consolidated.00.pth}, adapter, clip."""
    from ckpt_utils import write_sentencepiece

    llama = os.path.join(tmp, "LLaMA")
    write_meta(os.path.join(llama, "7B"), c, meta_state_dict(hf_model, c), 2, {"vocab_size": -1})
    write_sentencepiece(os.path.join(llama, "tokenizer.model"), vocab_size=c.vocab_size)
    sd = released_adapter(c, clip_model.config.projection_dim, **adapter_kw)
    torch.save(sd, os.path.join(tmp, "adapter.pth"))
    clip = write_torchscript(os.path.join(tmp, "ViT-L-14.pt"), openai_clip_state_dict(clip_model))
    return {"llama_dir": llama, "llama_type": "7B", "adapter": os.path.join(tmp, "adapter.pth"), "clip": clip,
            "released": sd}
