"""CLIP vision towers → our `clip/...` subtree (docs/design.md §7.5; key maps in `lav2_jax.model.clip`).

OpenAI weights (a plain state dict, or the TorchScript archive `ViT-L-14.pt`): `visual.*` keys, the text tower is
ignored. Hugging Face: a directory (`config.json` + weights) of `CLIPModel` / `CLIPVisionModelWithProjection`
(`vision_model.*` + `visual_projection.weight`). The VisionConfig comes from tensor shapes: width and patch from
the patch embedding, depth from the block count, resolution from the positional table, output size from the
projection; heads are width/64 (OpenAI's rule) unless given (`--clip-heads`); a width that is not a multiple of 64
without given heads, or given heads that do not divide the width, is an error (never a silently wrong head count).
"""

from __future__ import annotations

import math
import os
import re
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from lav2_jax.checkpoint.convert import ops
from lav2_jax.checkpoint.convert.hf import read_json, weight_files
from lav2_jax.checkpoint.convert.plan import Ref, convert_plan, single, stacked
from lav2_jax.checkpoint.convert.sources import TensorFile
from lav2_jax.checkpoint.layout import BASE_ITEM, CheckpointConfig
from lav2_jax.core.config import VisionConfig
from lav2_jax.model.clip import CLIPVisionTower

HF_ROOT = "vision_model."
OPENAI_IGNORE = (r"^(?!visual\.)",)
HF_IGNORE = (r"^(?!vision_model\.|visual_projection\.)", r"position_ids$")


def _conv(arrays):
    return arrays[0].transpose(2, 3, 1, 0)


def _names(fmt: str) -> dict[str, str]:
    """Our per-block leaf → source key template, for `fmt` openai or hf (block index `{i}`)."""
    if fmt == "openai":
        b = "visual.transformer.resblocks.{i}."
        return {"ln_1": b + "ln_1", "ln_2": b + "ln_2", "attn/out": b + "attn.out_proj", "mlp/c_fc": b + "mlp.c_fc",
                "mlp/c_proj": b + "mlp.c_proj", "in_proj": b + "attn.in_proj_"}
    b = "vision_model.encoder.layers.{i}."
    return {"ln_1": b + "layer_norm1", "ln_2": b + "layer_norm2", "attn/out": b + "self_attn.out_proj",
            "mlp/c_fc": b + "mlp.fc1", "mlp/c_proj": b + "mlp.fc2", "attn/q": b + "self_attn.q_proj",
            "attn/k": b + "self_attn.k_proj", "attn/v": b + "self_attn.v_proj"}


TOP = {"openai": {"conv": "visual.conv1.weight", "cls": "visual.class_embedding",
                  "pos": "visual.positional_embedding", "ln_pre": "visual.ln_pre", "ln_post": "visual.ln_post",
                  "proj": "visual.proj", "block": r"^visual\.transformer\.resblocks\.(\d+)\.ln_1\.weight$"},
       "hf": {"conv": "vision_model.embeddings.patch_embedding.weight",
              "cls": "vision_model.embeddings.class_embedding",
              "pos": "vision_model.embeddings.position_embedding.weight", "ln_pre": "vision_model.pre_layrnorm",
              "ln_post": "vision_model.post_layernorm", "proj": "visual_projection.weight",
              "block": r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm1\.weight$"}}


def infer_vision(by_key: dict, fmt: str, where: str, heads: Optional[int] = None,
                 weight_dtype: str = "bfloat16") -> VisionConfig:
    """VisionConfig from tensor shapes (see module docstring)."""
    top = TOP[fmt]
    for k in ("conv", "pos", "proj"):
        if top[k] not in by_key:
            raise ValueError(f"{where}: missing key {top[k]!r} (not a {fmt} CLIP vision checkpoint?)")
    width, _, patch, _ = by_key[top["conv"]].shape(top["conv"])
    tokens = by_key[top["pos"]].shape(top["pos"])[0]
    grid = int(round(math.sqrt(tokens - 1)))
    if grid * grid != tokens - 1:
        raise ValueError(f"{where}: {top['pos']} has {tokens} rows, not 1 + a square number of patches")
    proj = by_key[top["proj"]].shape(top["proj"])
    out_dim = proj[1] if fmt == "openai" else proj[0]
    depth = len({m.group(1) for k in by_key if (m := re.match(top["block"], k))})
    fc = _names(fmt)["mlp/c_fc"].format(i=0) + ".weight"
    if fc not in by_key:
        raise ValueError(f"{where}: missing key {fc!r}")
    mlp_ratio = by_key[fc].shape(fc)[0] / width
    return VisionConfig(image_size=grid * patch, patch_size=patch, width=width, layers=depth,
                        heads=vision_heads(width, heads, where), mlp_ratio=mlp_ratio, output_dim=out_dim,
                        weight_dtype=weight_dtype, dtype=weight_dtype)


def vision_heads(width: int, heads: Optional[int], where: str) -> int:
    """`heads` checked against `width`, or width / 64 (OpenAI's rule) when not given and 64 divides the width."""
    if heads is None:
        if width % 64:
            raise ValueError(f"{where}: the vision width {width} is not a multiple of 64, so its attention heads "
                             "cannot be derived (width / 64); give them with --clip-heads N")
        return width // 64
    if heads <= 0 or width % heads:
        raise ValueError(f"{where}: --clip-heads {heads} does not divide the vision width {width}")
    return int(heads)


def clip_plan(v: VisionConfig, by_key: dict, fmt: str, where: str, root: str = HF_ROOT) -> list:
    """LeafPlans of the `clip/...` subtree from an OpenAI (`fmt='openai'`) or HF (`'hf'`) state dict.

    `root` replaces the HF keys' `vision_model.` (e.g. `vision_tower.vision_model.` or `vision_tower.` in LLaVA
    files, `` in a transformers-5 `CLIPVisionModel` save). `v.output_dim == 0`: no `proj` leaf (and none read).
    """
    D, M, P, T, O = v.width, int(v.width * v.mlp_ratio), v.patch_size, v.num_tokens, v.output_dim
    top, names = TOP[fmt], _names(fmt)

    def ref(key, shape):
        if fmt == "hf" and key.startswith(HF_ROOT):
            key = root + key[len(HF_ROOT):]
        if key not in by_key:
            raise ValueError(f"{where}: missing key {key!r}")
        return [Ref(by_key[key], key, tuple(shape))]

    def ln(pre):
        return [single(("clip", pre[0], "scale"), (D,), ref(pre[1] + ".weight", (D,)), ops.first),
                single(("clip", pre[0], "bias"), (D,), ref(pre[1] + ".bias", (D,)), ops.first)]

    proj_shape = (D, O) if fmt == "openai" else (O, D)
    plan = [single(("clip", "conv1", "kernel"), (P, P, 3, D), ref(top["conv"], (D, 3, P, P)), _conv),
            single(("clip", "class_embedding"), (D,), ref(top["cls"], (D,)), ops.first),
            single(("clip", "positional_embedding"), (T, D), ref(top["pos"], (T, D)), ops.first)]
    if O:
        plan.append(single(("clip", "proj"), (D, O), ref(top["proj"], proj_shape),
                           ops.first if fmt == "openai" else ops.linear(0)))
    plan += ln(("ln_pre", top["ln_pre"])) + ln(("ln_post", top["ln_post"]))

    def per_block(leaf, shape, key_fn, fn):
        plan.append(stacked(("clip", "resblocks") + leaf, shape, ((key_fn(i), fn) for i in range(v.layers))))

    for ours in ("ln_1", "ln_2"):
        for leaf, suffix in (("scale", ".weight"), ("bias", ".bias")):
            per_block((ours, leaf), (D,), lambda i, s=suffix, o=ours: ref(names[o].format(i=i) + s, (D,)), ops.first)
    dense = {"attn/out": (D, D), "mlp/c_fc": (M, D), "mlp/c_proj": (D, M)}
    if fmt == "hf":
        dense.update({"attn/q": (D, D), "attn/k": (D, D), "attn/v": (D, D)})
    for ours, full in dense.items():
        leaf = tuple(ours.split("/"))
        per_block(leaf + ("kernel",), full[::-1], lambda i, o=ours, f=full: ref(names[o].format(i=i) + ".weight", f),
                  ops.linear(0))
        per_block(leaf + ("bias",), full[:1], lambda i, o=ours, f=full: ref(names[o].format(i=i) + ".bias", f[:1]),
                  ops.first)
    if fmt == "openai":  # q;k;v stacked along the rows of in_proj_weight [3D, D] / in_proj_bias [3D]
        for j, name in enumerate("qkv"):
            rows = slice(j * D, (j + 1) * D)
            per_block(("attn", name, "kernel"), (D, D),
                      lambda i: ref(names["in_proj"].format(i=i) + "weight", (3 * D, D)),
                      lambda a, r=rows: a[0][r].T)
            per_block(("attn", name, "bias"), (D,), lambda i: ref(names["in_proj"].format(i=i) + "bias", (3 * D,)),
                      lambda a, r=rows: a[0][r])
    return plan


def open_clip(path: str) -> tuple[str, dict, list]:
    """(fmt, {key: TensorFile}, files) for an OpenAI file / TorchScript archive or an HF directory."""
    if os.path.isdir(path):
        by_key, files = weight_files(path)
        return "hf", by_key, files
    f = TensorFile(path)
    if not any(k.startswith("visual.") for k in f.keys()):
        raise ValueError(f"{path}: no `visual.*` keys: not an OpenAI CLIP checkpoint")
    return "openai", {k: f for k in f.keys()}, [f]


def hf_heads(path: str) -> Optional[int]:
    """`num_attention_heads` of an HF CLIP directory's vision config (None for files / no config)."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        return None
    cfg = read_json(cfg_path)
    return (cfg.get("vision_config") or cfg).get("num_attention_heads")


def clip_sources(fmt: str, files: list) -> list:
    return [(f, OPENAI_IGNORE if fmt == "openai" else HF_IGNORE) for f in files]


def convert_clip(clip: str, out_dir: str, *, heads: Optional[int] = None, weight_dtype: str = "bfloat16",
                 overwrite: bool = False) -> str:
    """`lav2 convert clip`: a vision-only checkpoint (config `model` null, `clip/...` leaves in the base item)."""
    fmt, by_key, files = open_clip(clip)
    vision = infer_vision(by_key, fmt, clip, heads or hf_heads(clip), weight_dtype)
    plan = clip_plan(vision, by_key, fmt, clip)
    tower = CLIPVisionTower(vision)
    img = jax.ShapeDtypeStruct((1, vision.image_size, vision.image_size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: tower.init(jax.random.PRNGKey(0), x)["params"], img)
    shapes = {("clip",) + k: v for k, v in traverse_util.flatten_dict(nn_unbox(shapes)).items()}
    ckpt = CheckpointConfig(model=None, adapter=None, vision=vision, meta={"source": f"clip-{fmt}"})
    return convert_plan(out_dir, ckpt, (shapes, {k: BASE_ITEM for k in shapes}), plan, clip_sources(fmt, files),
                        config_source=f"the tensor shapes of {clip}", overwrite=overwrite)


def nn_unbox(tree):
    return nn.unbox(tree)
