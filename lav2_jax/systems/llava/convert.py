"""LLaVA checkpoints → our tree (docs/design.md §7.6; model in `lav2_jax.systems.llava.projector`).

Two layouts, told apart by `config.json`:

* Hugging Face (`llava-hf/...`, `LlavaForConditionalGeneration`; `text_config` + `vision_config`): the LLaMA under
  `language_model.model.*` / `language_model.lm_head.weight`, the projector `multi_modal_projector.linear_{1,2}.*`,
  the CLIP tower under `vision_tower.vision_model.*` (the hub's files) or `vision_tower.*` (transformers 5
  `save_pretrained`). `vision_feature_layer` → feature layer, `vision_feature_select_strategy` `default` → `patch`,
  `full` → `cls_patch`; `projector_hidden_act` `gelu` → `mlp2x_gelu`; `image_token_index` → the placeholder id;
  `preprocessor_config.json` `do_pad` → `image_aspect_ratio` `pad`.
  Fields the hub's configs leave out take `LlamaConfig` / `CLIPVisionConfig` defaults.
* The original repo (`liuhaotian/llava-v1.5-7b`, `LlavaLlamaForCausalLM`; `mm_projector_type` in config.json):
  plain HF Llama keys + `model.mm_projector.{0,2}.*` (`mlp2x_gelu`) or `model.mm_projector.{weight,bias}`
  (`linear`); the tower comes from `--clip` (an HF CLIP directory, `vision_model.*` or transformers-5 bare keys, or
  an OpenAI file). Tower keys a self-trained save carries (`model.vision_tower.*`) are ignored, as the original
  loader does. The placeholder id is the vocabulary size (outside the table: never embedded);
  `image_aspect_ratio` (`pad` for LLaVA-1.5) is kept for preprocessing.

Every key is consumed or named in an ignore rule; a missing, extra or misshapen key is a ValueError naming file and
key, raised before anything is written (`lav2_jax.checkpoint.convert.plan`).
"""

from __future__ import annotations

import os
from typing import Optional

from lav2_jax.checkpoint.convert import ops
from lav2_jax.checkpoint.convert.clip import HF_ROOT, clip_plan, clip_sources, hf_heads, infer_vision, open_clip
from lav2_jax.checkpoint.convert.hf import HF_IGNORE, hf_config, hf_llama_plan, read_json, weight_files
from lav2_jax.checkpoint.convert.plan import Ref, convert_plan, model_targets, single
from lav2_jax.checkpoint.layout import CheckpointConfig
from lav2_jax.core import presets
from lav2_jax.core.config import SpliceConfig, VisionConfig
from lav2_jax.model.factory import build_model
from lav2_jax.systems.llava.projector import check_splice

LLAMA_DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6}
CLIP_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "image_size": 224, "patch_size": 32, "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu"}
SELECT = {"default": "patch", "full": "cls_patch", "patch": "patch", "cls_patch": "cls_patch"}
PROJECTOR_KEYS = {"mlp2x_gelu": (("linear_1", "0"), ("linear_2", "2")), "linear": (("linear_1", None),)}


def hf_vision(cfg: dict, where: str, weight_dtype: str) -> VisionConfig:
    """The tower of an HF `CLIPVisionConfig` dict (missing fields: transformers' defaults); no projection."""
    cfg = {**CLIP_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    if cfg["hidden_act"] != "quick_gelu":
        raise ValueError(f"{where}: vision hidden_act {cfg['hidden_act']!r} is not CLIP's quick_gelu")
    width = cfg["hidden_size"]
    return VisionConfig(image_size=cfg["image_size"], patch_size=cfg["patch_size"], width=width,
                        layers=cfg["num_hidden_layers"], heads=cfg["num_attention_heads"],
                        mlp_ratio=cfg["intermediate_size"] / width, output_dim=0,
                        layer_norm_eps=cfg["layer_norm_eps"], weight_dtype=weight_dtype, dtype=weight_dtype)


def make_splice(vision: VisionConfig, feature_layer, select: str, projector: str, image_token_id: int,
                where: str, aspect: str = "square") -> SpliceConfig:
    if not isinstance(feature_layer, int):
        raise ValueError(f"{where}: vision feature layer {feature_layer!r}: only one layer (an int) is supported")
    if select not in SELECT:
        raise ValueError(f"{where}: vision feature select {select!r} is not one of {', '.join(SELECT)}")
    select = SELECT[select]
    n = vision.num_patches + (0 if select == "patch" else 1)
    try:
        splice = SpliceConfig(system="llava", image_token_id=int(image_token_id), feature_layer=feature_layer,
                              select=select, projector=projector, n_tokens=n, image_aspect_ratio=aspect)
        check_splice(splice, vision)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return splice


def projector_plan(splice: SpliceConfig, c_in: int, dim: int, by_key: dict, prefix: str, names: str,
                   where: str) -> list:
    """LeafPlans of `mm_projector/...` from keys `prefix` + HF `linear_1/2` (`names='hf'`) or the original's
    `0`/`2` (`'orig'`; a `linear` projector has no index)."""
    plan = []
    for j, (ours, orig) in enumerate(PROJECTOR_KEYS[splice.projector]):
        stem = ours if names == "hf" else orig
        base = prefix + (stem + "." if stem is not None else "")
        fan_in = c_in if j == 0 else dim
        for leaf, suffix, shape, fn in (("kernel", "weight", (dim, fan_in), ops.linear(0)),
                                        ("bias", "bias", (dim,), ops.first)):
            key = base + suffix
            if key not in by_key:
                raise ValueError(f"{where}: missing key {key!r} (a {splice.projector} projector)")
            out_shape = shape[::-1] if leaf == "kernel" else shape
            plan.append(single(("mm_projector", ours, leaf), out_shape, [Ref(by_key[key], key, shape)], fn))
    return plan


def _hf_aspect(hf_dir: str) -> str:
    """`pad` when the directory's image processor pads to a square first (`do_pad`), else `square`."""
    path = os.path.join(hf_dir, "preprocessor_config.json")
    return "pad" if os.path.isfile(path) and read_json(path).get("do_pad") else "square"


def _original_aspect(cfg: dict, where: str) -> str:
    aspect = cfg.get("image_aspect_ratio") or "square"
    if aspect not in ("square", "pad"):
        raise ValueError(f"{where}: image_aspect_ratio {aspect!r} is not supported (square, pad)")
    return aspect


def _tokenizer(directory: str) -> Optional[str]:
    names = ("tokenizer.json", "tokenizer.model")
    return directory if any(os.path.isfile(os.path.join(directory, n)) for n in names) else None


def _write(out_dir, config, vision, splice, plan, sources, cfg_path, tokenizer, overwrite, meta) -> str:
    model = build_model(config, presets.get_adapter("none").replace(splice=splice), vision)
    ckpt = CheckpointConfig(model=config, adapter=model.adapter, vision=vision, meta=meta)
    return convert_plan(out_dir, ckpt, model_targets(model), plan, sources, config_source=cfg_path,
                        tokenizer=tokenizer, overwrite=overwrite)


def convert_llava(hf_dir: str, out_dir: str, *, clip: Optional[str] = None, clip_heads: Optional[int] = None,
                  weight_dtype: str = "bfloat16", max_seq_len: Optional[int] = None, overwrite: bool = False) -> str:
    """`lav2 convert llava --hf-dir D [--clip C]`: either layout (module docstring) → a LLaVA checkpoint."""
    cfg_path = os.path.join(hf_dir, "config.json")
    cfg = read_json(cfg_path)
    by_key, files = weight_files(hf_dir)
    if "text_config" in cfg or "vision_config" in cfg:
        if clip is not None:
            raise ValueError(f"{cfg_path}: a Hugging Face LLaVA directory holds its own vision tower; drop --clip")
        return _convert_hf(cfg, cfg_path, hf_dir, by_key, files, out_dir, weight_dtype, max_seq_len, overwrite)
    if "mm_projector_type" not in cfg and "mm_vision_tower" not in cfg:
        raise ValueError(f"{cfg_path}: neither a Hugging Face LLaVA config (text_config, vision_config) nor an "
                         "original LLaVA config (mm_projector_type, mm_vision_tower)")
    if clip is None:
        raise ValueError(f"{cfg_path}: the original LLaVA layout stores no vision tower; give the CLIP it names "
                         f"({cfg.get('mm_vision_tower', 'openai/clip-vit-large-patch14-336')}) with --clip")
    return _convert_original(cfg, cfg_path, hf_dir, by_key, files, clip, clip_heads, out_dir, weight_dtype,
                             max_seq_len, overwrite)


def _convert_hf(cfg, cfg_path, hf_dir, by_key, files, out_dir, weight_dtype, max_seq_len, overwrite) -> str:
    text = {**LLAMA_DEFAULTS, **{k: v for k, v in (cfg.get("text_config") or {}).items() if v is not None}}
    if text.get("model_type", "llama") != "llama":
        raise ValueError(f"{cfg_path}: text_config model_type {text['model_type']!r} is not llama")
    config, _ = hf_config(text, cfg_path, weight_dtype, max_seq_len)
    if cfg.get("tie_word_embeddings") or text.get("tie_word_embeddings"):
        raise ValueError(f"{cfg_path}: tie_word_embeddings=true is not a LLaVA checkpoint")
    vcfg = cfg.get("vision_config") or {}
    if vcfg.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise ValueError(f"{cfg_path}: vision_config model_type {vcfg['model_type']!r} is not clip_vision_model")
    vision = hf_vision(vcfg, cfg_path, weight_dtype)
    act = cfg.get("projector_hidden_act", "gelu")
    if act != "gelu" or not cfg.get("multimodal_projector_bias", True):
        raise ValueError(f"{cfg_path}: projector_hidden_act={act!r}, multimodal_projector_bias="
                         f"{cfg.get('multimodal_projector_bias', True)}: only the gelu projector with biases "
                         "(LLaVA's mlp2x_gelu) is supported")
    splice = make_splice(vision, cfg.get("vision_feature_layer", -2),
                         cfg.get("vision_feature_select_strategy", "default"), "mlp2x_gelu",
                         cfg.get("image_token_index", cfg.get("image_token_id", 32000)), cfg_path,
                         _hf_aspect(hf_dir))
    root = "vision_tower." + (HF_ROOT if "vision_tower." + HF_ROOT + "pre_layrnorm.weight" in by_key else "")
    plan = (hf_llama_plan(config, by_key, False, hf_dir, prefix="language_model.")
            + clip_plan(vision, by_key, "hf", hf_dir, root=root)
            + projector_plan(splice, vision.width, config.dim, by_key, "multi_modal_projector.", "hf", hf_dir))
    sources = [(f, HF_IGNORE + (r"position_ids$",)) for f in files]
    return _write(out_dir, config, vision, splice, plan, sources, cfg_path, _tokenizer(hf_dir), overwrite,
                  {"source": "llava-hf"})


def _convert_original(cfg, cfg_path, hf_dir, by_key, files, clip, clip_heads, out_dir, weight_dtype, max_seq_len,
                      overwrite) -> str:
    config, tied = hf_config({**LLAMA_DEFAULTS, **cfg}, cfg_path, weight_dtype, max_seq_len)
    fmt, clip_keys, clip_files = open_clip(clip)
    clip_cfg = os.path.join(clip, "config.json") if fmt == "hf" else ""
    if clip_cfg and os.path.isfile(clip_cfg):
        raw = read_json(clip_cfg)
        vision = hf_vision(raw.get("vision_config") or raw, clip_cfg, weight_dtype)
        root = HF_ROOT if HF_ROOT + "pre_layrnorm.weight" in clip_keys else ""
    else:
        vision = infer_vision(clip_keys, fmt, clip, clip_heads or hf_heads(clip), weight_dtype).replace(output_dim=0)
        root = HF_ROOT
    mm_hidden = cfg.get("mm_hidden_size", vision.width)
    if mm_hidden != vision.width:
        raise ValueError(f"{cfg_path}: mm_hidden_size {mm_hidden} != the width {vision.width} of --clip {clip}")
    projector = cfg.get("mm_projector_type", "linear")
    if projector not in PROJECTOR_KEYS:
        raise ValueError(f"{cfg_path}: mm_projector_type {projector!r} is not one of {', '.join(PROJECTOR_KEYS)}")
    splice = make_splice(vision, cfg.get("mm_vision_select_layer", -2), cfg.get("mm_vision_select_feature", "patch"),
                         projector, config.vocab_size, cfg_path, _original_aspect(cfg, cfg_path))
    plan = (hf_llama_plan(config, by_key, tied, hf_dir)
            + clip_plan(vision, clip_keys, fmt, clip, root=root)
            + projector_plan(splice, vision.width, config.dim, by_key, "model.mm_projector.", "orig", hf_dir))
    ignore = HF_IGNORE + (r"^model\.vision_tower\.",) + ((r"^lm_head\.weight$",) if tied else ())
    clip_ignore = [(f, ign + (r"(^|\.)visual_projection\.", r"^visual\.proj$"))
                   for f, ign in clip_sources(fmt, clip_files)]
    if fmt == "hf" and not root:  # a transformers-5 CLIPVisionModel save: bare keys
        clip_ignore = [(f, (r"position_ids$",)) for f, _ in clip_ignore]
    return _write(out_dir, config, vision, splice, plan, [(f, ignore) for f in files] + clip_ignore, cfg_path,
                  _tokenizer(hf_dir), overwrite, {"source": "llava-original", "tied": tied})
