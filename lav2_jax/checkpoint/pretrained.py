"""Saving and loading whole models and adapters (layout in `lav2_jax.checkpoint.layout`).

  save_pretrained(out_dir, model, params, tokenizer=..., channel_order="rgb", meta=None)
      base item (frozen leaves) + adapter item (leaves recipe `all-adapters` trains) + config.json + tokenizer/.
  save_adapter(out_dir, model, params_or_adapter_params, base=BASE_DIR)
      adapter item only; config.json records `base`, so `load_pretrained(out_dir)` finds the frozen weights.
  load_pretrained(path, mesh=None, dtype=None, adapter=None, layout="scanned") -> Bundle(model, params, tokenizer,
                  config)
      every leaf restored straight onto its NamedSharding (`lav2_jax.core.sharding.logical_shardings`) when a mesh is
      given, else onto the first device. `dtype="float32"` stores and computes everything in float32.
      `adapter=DIR` overlays an adapter item saved separately (its adapter/vision config wins). A tokenizer with
      more pieces than the model's vocab_size is a `lav2_jax.data.tokenizer.VocabularyError`, before any weight is read.
      `layout="unstacked"` (no mesh) returns the decoder with its layers as a Python loop (`scan_layers=False`,
      params `layers_0 … layers_{L-1}`), the layout CPU decoding is fastest in (`inference.generation.decode_view`),
      without ever holding the weights twice: for inference on one host (`lav2 generate`/`chat`), not training.
  load_adapter(path, mesh=None) -> the adapter leaves alone (nested dict).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from lav2_jax.checkpoint.atomic import atomic_directory
from lav2_jax.checkpoint.items import item_shapes, restore_item, save_item
from lav2_jax.checkpoint.layout import (ADAPTER_ITEM, ADAPTER_RECIPE, BASE_ITEM, TOKENIZER_DIR, CheckpointConfig,
                                        check_same_base, read_config, write_config)
from lav2_jax.core import param_groups as pg
from lav2_jax.core.sharding import logical_shardings
from lav2_jax.data.image_prompt import load_image_tokenizer
from lav2_jax.data.tokenizer import check_vocab, load_tokenizer
from lav2_jax.model.clip import CLIPVisionTower
from lav2_jax.model.factory import abstract_params, build_model, unscanned, unstack_layers


@dataclasses.dataclass
class Bundle:
    """What `load_pretrained` returns. `model.apply({"params": params}, tokens, ...)` runs it."""

    model: Any
    params: dict
    tokenizer: Any
    config: CheckpointConfig

    @property
    def channel_order(self) -> str:
        return self.config.channel_order


def adapter_mask(model, params) -> dict[tuple, bool]:
    """{leaf path: True when the leaf belongs in the adapter item} for a params (or shapes) tree of `model`."""
    labels = traverse_util.flatten_dict(pg.param_groups(params, ADAPTER_RECIPE, model.adapter))
    return {k: v != pg.F for k, v in labels.items()}


def split_params(model, params) -> tuple[dict, dict]:
    """(base leaves, adapter leaves) as flat {path tuple: array} dicts."""
    flat = traverse_util.flatten_dict(nn.unbox(params))
    mask = adapter_mask(model, params)
    return ({k: v for k, v in flat.items() if not mask[k]}, {k: v for k, v in flat.items() if mask[k]})


TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def copy_tokenizer(tokenizer, out_dir: str) -> None:
    """Copies a tokenizer (a `tokenizer.model` file, a HF tokenizer dir, or a loaded tokenizer with `.path`)."""
    src = os.fspath(getattr(tokenizer, "path", tokenizer))
    dst = os.path.join(out_dir, TOKENIZER_DIR)
    if os.path.isdir(src):
        names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src, n))]
        if not names:
            raise ValueError(f"{src}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
        os.makedirs(dst)
        for n in names:
            shutil.copyfile(os.path.join(src, n), os.path.join(dst, n))
    elif os.path.isfile(src):
        os.makedirs(dst)
        shutil.copyfile(src, os.path.join(dst, "tokenizer.model"))
    else:
        raise ValueError(f"{src}: no such tokenizer file or directory")


def _config(model, channel_order: str, meta: Optional[dict], items: tuple, base: Optional[str] = None):
    return CheckpointConfig(model=model.config, adapter=model.adapter, vision=model.vision,
                            channel_order=channel_order, items=items, base=base, meta=dict(meta or {}))


def save_pretrained(out_dir, model, params, *, tokenizer=None, channel_order: str = "rgb",
                    meta: Optional[dict] = None, overwrite: bool = False) -> str:
    """Writes a complete checkpoint atomically; returns its absolute path."""
    base, adapter = split_params(model, params)
    items = (BASE_ITEM,) + ((ADAPTER_ITEM,) if adapter else ())
    config = _config(model, channel_order, meta, items)  # validates channel_order before anything is written
    with atomic_directory(out_dir, overwrite) as tmp:
        save_item(os.path.join(tmp, BASE_ITEM), traverse_util.unflatten_dict(base))
        if adapter:
            save_item(os.path.join(tmp, ADAPTER_ITEM), traverse_util.unflatten_dict(adapter))
        if tokenizer is not None:
            copy_tokenizer(tokenizer, tmp)
        write_config(tmp, config)
    return os.path.abspath(os.fspath(out_dir))


def save_adapter(out_dir, model, adapter_params, *, base, tokenizer=None, channel_order: Optional[str] = None,
                 meta: Optional[dict] = None, overwrite: bool = False) -> str:
    """Writes the adapter leaves of `adapter_params` (a full tree or the adapter leaves alone) for base `base`.

    Every adapter leaf of `model` must be present; frozen leaves in the tree are ignored.
    """
    base_dir = os.path.abspath(os.fspath(base))
    base_cfg = read_config(base_dir)
    check_same_base(base_cfg.model, model.config, os.fspath(out_dir))
    flat = traverse_util.flatten_dict(nn.unbox(adapter_params))
    wanted = [k for k, is_adapter in adapter_mask(model, abstract_params(model)).items() if is_adapter]
    missing = [pg.path_str(k) for k in wanted if k not in flat]
    if missing:
        raise ValueError(f"save_adapter: adapter parameters missing: {', '.join(missing[:5])}"
                         + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
    config = _config(model, channel_order or base_cfg.channel_order, meta, (ADAPTER_ITEM,), base_dir)
    with atomic_directory(out_dir, overwrite) as tmp:
        save_item(os.path.join(tmp, ADAPTER_ITEM), traverse_util.unflatten_dict({k: flat[k] for k in wanted}))
        if tokenizer is not None:
            copy_tokenizer(tokenizer, tmp)
        write_config(tmp, config)
    return os.path.abspath(os.fspath(out_dir))


def item_dirs(path) -> list[str]:
    """The orbax item directories of checkpoint `path`, in override order (for `restore_params`)."""
    path = os.path.abspath(os.fspath(path))
    return _item_dirs(path, read_config(path))


def _item_dirs(path: str, config: CheckpointConfig, depth: int = 0) -> list[str]:
    """Item directories in override order: the base checkpoint's (for adapter-only dirs) first, then `path`'s."""
    if depth > 8:
        raise ValueError(f"{path}: checkpoint `base` references nest too deeply (a cycle?)")
    dirs = []
    if config.base is not None:
        base_cfg = read_config(config.base)
        check_same_base(base_cfg.model, config.model, path)
        dirs += _item_dirs(config.base, base_cfg, depth + 1)
    return dirs + [os.path.join(path, item) for item in config.items]


def _tokenizer_dir(paths: list[str]) -> Optional[str]:
    for p in paths:
        d = os.path.join(p, TOKENIZER_DIR)
        if os.path.isdir(d):
            return d
    return None


def with_dtype(config: CheckpointConfig, dtype: Optional[str]) -> CheckpointConfig:
    """`config` with every frozen weight stored and every computation run in `dtype` (None: unchanged)."""
    if dtype is None:
        return config
    vision = config.vision.replace(weight_dtype=dtype, dtype=dtype) if config.vision is not None else None
    model = config.model.replace(weight_dtype=dtype, dtype=dtype) if config.model is not None else None
    return config.replace(model=model, vision=vision)


def target_structs(model, mesh=None, boxed=None) -> dict[tuple, jax.ShapeDtypeStruct]:
    """{leaf path: ShapeDtypeStruct with its sharding}: logical shardings on `mesh`, else the first device.

    `boxed`: the (boxed) abstract parameter tree, when not `abstract_params(model, boxed=True)`.
    """
    boxed = abstract_params(model, boxed=True) if boxed is None else boxed
    shapes = traverse_util.flatten_dict(nn.unbox(boxed))
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = {k: device for k in shapes}
    else:
        shardings = traverse_util.flatten_dict(logical_shardings(boxed, mesh))
    return {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shardings[k]) for k, s in shapes.items()}


def restore_params(model, dirs: list[str], mesh=None, allow_missing: bool = False) -> tuple[dict, list[str]]:
    """Restores `model`'s parameters from orbax item dirs (`item_dirs(ckpt)`; later items override earlier ones).

    Returns (params, missing leaf paths). Missing leaves are an error unless `allow_missing` (then they are absent
    from params, e.g. adapter leaves a trainer initialises itself).
    """
    return restore_params_from(target_structs(model, mesh), dirs, allow_missing)


def restore_params_from(targets: dict, dirs: list[str], allow_missing: bool = False) -> tuple[dict, list[str]]:
    """`restore_params` for explicit {leaf path: ShapeDtypeStruct with sharding} targets."""
    source: dict[tuple, str] = {}
    for d in dirs:
        for k in item_shapes(d):
            if k in targets:
                source[k] = d
    missing = [pg.path_str(k) for k in targets if k not in source]
    if missing and not allow_missing:
        raise ValueError(f"{dirs[-1]}: checkpoint lacks parameters the model needs: {', '.join(missing[:5])}"
                         + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
    flat: dict = {}
    for d in dirs:
        flat.update(restore_item(d, {k: t for k, t in targets.items() if source.get(k) == d}))
    return traverse_util.unflatten_dict(flat), missing


def _open(path, dtype: Optional[str] = None, adapter=None):
    """(config, model, item dirs in override order, tokenizer search paths) of checkpoint `path` (+ overlay)."""
    path = os.path.abspath(os.fspath(path))
    config = read_config(path)
    if config.model is None:
        raise ValueError(f"{path}: a vision-only checkpoint (lav2 convert clip): use load_vision, or combine it "
                         "with a language model via restore_params(model, item_dirs(llama) + item_dirs(clip))")
    dirs = _item_dirs(path, config)
    tok_paths = [path] + ([config.base] if config.base else [])
    if adapter is not None:
        adapter = os.path.abspath(os.fspath(adapter))
        acfg = read_config(adapter)
        check_same_base(config.model, acfg.model, adapter)
        config = config.replace(adapter=acfg.adapter, vision=acfg.vision or config.vision,
                                channel_order=acfg.channel_order, meta={**config.meta, **acfg.meta})
        dirs += [os.path.join(adapter, item) for item in acfg.items]
        tok_paths.insert(0, adapter)
    config = with_dtype(config, dtype)
    return config, build_model(config.model, config.adapter, config.vision), dirs, tok_paths


def checkpoint_reader(path, dtype: Optional[str] = None):
    """(model, config, leaf paths, read) for a checkpoint read a few leaves at a time: `read(keys)` → {leaf path:
    array} for leaf paths of `model` (base and adapter items, following an adapter-only dir to its base). Streaming
    consumers (`lav2 export hf`) hold one group of leaves at a time instead of the whole model."""
    config, model, dirs, _ = _open(path, dtype)
    targets = target_structs(model)

    def read(keys) -> dict[tuple, jax.Array]:
        params, _ = restore_params_from({k: targets[k] for k in keys}, dirs)
        return traverse_util.flatten_dict(params)

    return model, config, tuple(targets), read


LAYOUTS = ("scanned", "unstacked")


def load_pretrained(path, mesh=None, dtype: Optional[str] = None, adapter=None, layout: str = "scanned") -> Bundle:
    """Loads a checkpoint written by `save_pretrained` / `save_adapter` / `lav2 convert` (see module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
    if layout == "unstacked" and mesh is not None:
        raise ValueError("layout='unstacked' is for single-device inference; load with a mesh in the scanned layout")
    config, model, dirs, tok_paths = _open(path, dtype, adapter)
    tok_dir = _tokenizer_dir(tok_paths)
    tokenizer = load_tokenizer(tok_dir) if tok_dir else None
    if tokenizer is not None:  # before the weights: ids past the vocabulary would embed as NaN
        splice = model.adapter.splice
        check_vocab(tokenizer, model.config.vocab_size, f"at {tok_dir}",
                    f"model.vocab_size in {os.path.join(os.path.abspath(os.fspath(path)), 'config.json')}",
                    splice.image_token_id if splice is not None else None)
    params, _ = restore_params(model, dirs, mesh)
    if layout == "unstacked" and model.config.scan_layers:
        params = unstack_layers(params, model.config.n_layers, consume=True)
        model = unscanned(model)
        config = config.replace(model=model.config)
    if tokenizer is not None and model.adapter.splice is not None:  # `<image>` → the splice's placeholder ids
        tokenizer = load_image_tokenizer(tok_dir, model.adapter.splice)
    return Bundle(model=model, params=params, tokenizer=tokenizer, config=config)


def load_adapter(path, mesh=None) -> dict:
    """The adapter leaves of checkpoint `path` (adapter-only or complete), restored onto `mesh` if given."""
    path = os.path.abspath(os.fspath(path))
    config = read_config(path)
    if ADAPTER_ITEM not in config.items:
        raise ValueError(f"{path}: checkpoint has no adapter item")
    model = build_model(config.model, config.adapter, config.vision)
    item = os.path.join(path, ADAPTER_ITEM)
    targets = target_structs(model, mesh)
    saved = item_shapes(item)
    return traverse_util.unflatten_dict(restore_item(item, {k: t for k, t in targets.items() if k in saved}))


def load_vision(path, mesh=None, dtype: Optional[str] = None):
    """(CLIPVisionTower, params) from a vision-only checkpoint written by `lav2 convert clip`."""
    path = os.path.abspath(os.fspath(path))
    config = with_dtype(read_config(path), dtype)
    if config.vision is None:
        raise ValueError(f"{path}: checkpoint has no vision tower")
    tower = CLIPVisionTower(config.vision)
    size = config.vision.image_size
    boxed = jax.eval_shape(lambda x: {"clip": tower.init(jax.random.PRNGKey(0), x)["params"]},
                           jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    targets = target_structs(None, mesh, boxed)
    params, _ = restore_params_from(targets, _item_dirs(path, config))
    return tower, params["clip"]
