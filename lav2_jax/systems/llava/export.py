"""The LLaVA parts of `lav2 export hf` (docs/design.md §7.6): the CLIP tower, the projector and the
`LlavaForConditionalGeneration` config; the language model is exported by `lav2_jax.checkpoint.export.hf` under
the `language_model.` prefix (adapters merged as for a plain Llama); the LLaVA system's `hf_export` hook hands
`check_exportable`, `llava_config` and `tensor_parts` to it.

Keys are the hub's layout (`vision_tower.vision_model.*`, `multi_modal_projector.linear_{1,2}.*`,
`language_model.model.*`, `language_model.lm_head.weight`), which transformers 5 and older releases both load.
Only `mlp2x_gelu` projectors export (Hugging Face's projector is always Linear → act → Linear).
"""

from __future__ import annotations

import functools

import numpy as np

from lav2_jax.core import registry

LANGUAGE_PREFIX = "language_model."
VISION_PREFIX = "vision_tower.vision_model."
BLOCK = {("ln_1",): "layer_norm1", ("ln_2",): "layer_norm2", ("attn", "q"): "self_attn.q_proj",
         ("attn", "k"): "self_attn.k_proj", ("attn", "v"): "self_attn.v_proj", ("attn", "out"): "self_attn.out_proj",
         ("mlp", "c_fc"): "mlp.fc1", ("mlp", "c_proj"): "mlp.fc2"}


def check_exportable(a, where: str) -> None:
    s = a.splice
    if s.system != "llava":
        raise ValueError(f"{where}: this {registry.get(s.system).title or s.system} checkpoint has no Hugging Face "
                         "LLaVA equivalent")
    if s.projector != "mlp2x_gelu":
        raise ValueError(f"{where}: a {s.projector!r} projector has no Hugging Face LLaVA equivalent (its projector "
                         "is always Linear → GELU → Linear); only mlp2x_gelu exports")


def llava_config(text_cfg, model):
    """The `LlavaConfig` around the exported Llama config `text_cfg`."""
    from transformers import CLIPVisionConfig, LlavaConfig  # lazy: an optional dependency (the `test` extra)

    v, s = model.vision, model.adapter.splice
    vision = CLIPVisionConfig(hidden_size=v.width, intermediate_size=int(v.width * v.mlp_ratio),
                              num_hidden_layers=v.layers, num_attention_heads=v.heads, image_size=v.image_size,
                              patch_size=v.patch_size, hidden_act="quick_gelu", layer_norm_eps=v.layer_norm_eps)
    return LlavaConfig(vision_config=vision, text_config=text_cfg, image_token_index=s.image_token_id,
                       vision_feature_layer=s.feature_layer, projector_hidden_act="gelu",
                       vision_feature_select_strategy="default" if s.select == "patch" else "full",
                       image_seq_length=s.n_tokens, multimodal_projector_bias=True, tie_word_embeddings=False)


def vision_tensors(read, keys, vision, t) -> dict:
    """HF tensors of the `clip/...` subtree (`t` converts a numpy array to the export dtype)."""
    flat = read([k for k in keys if k[0] == "clip"])
    get = lambda *path: np.asarray(flat[("clip",) + path], np.float32)  # noqa: E731
    p = VISION_PREFIX
    out = {p + "embeddings.patch_embedding.weight": t(get("conv1", "kernel").transpose(3, 2, 0, 1)),
           p + "embeddings.class_embedding": t(get("class_embedding")),
           p + "embeddings.position_embedding.weight": t(get("positional_embedding"))}
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        out[p + theirs + ".weight"], out[p + theirs + ".bias"] = t(get(ours, "scale")), t(get(ours, "bias"))
    for i in range(vision.layers):
        for path, theirs in BLOCK.items():
            base = f"{p}encoder.layers.{i}.{theirs}"
            norm = len(path) == 1
            w = get("resblocks", *path, "scale" if norm else "kernel")[i]
            out[base + ".weight"] = t(w if norm else w.T)
            out[base + ".bias"] = t(get("resblocks", *path, "bias")[i])
    return out


def projector_tensors(read, keys, t) -> dict:
    flat = read([k for k in keys if k[0] == "mm_projector"])
    out = {}
    for (_, name, leaf), v in flat.items():
        v = np.asarray(v, np.float32)
        out[f"multi_modal_projector.{name}.{'weight' if leaf == 'kernel' else 'bias'}"] = t(v.T if leaf == "kernel"
                                                                                             else v)
    return out


def tensor_parts(read, keys, model, t) -> list:
    """The LLaVA files of the export beside the Llama's: the tower's tensors, then the projector's."""
    return [functools.partial(vision_tensors, read, keys, model.vision, t),
            functools.partial(projector_tensors, read, keys, t)]
