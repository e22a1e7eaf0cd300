"""A language model and a separately stored CLIP tower → one base checkpoint for LLaVA stage 1 (LLaVA paper §4.2;
docs/design.md §4.4: Vicuna + `openai/clip-vit-large-patch14-336`, a fresh projector, only the projector trains).

`lav2 convert llava-base --llm LLM --clip CLIP --out OUT [--weight-dtype bfloat16|float32]`:

  LLM   a complete language-only checkpoint (`lav2 convert hf` of Vicuna / LLaMA-2, `lav2 convert meta`)
  CLIP  a vision-only checkpoint (`lav2 convert clip` of the CLIP ViT-L/14-336 weights)
  OUT   config.json: LLM's `model` and adapter (`none`), CLIP's `vision`; items: LLM's (`base`) + `vision` (the
        CLIP's `base` item, leaves `clip/...`); LLM's tokenizer/.

Without `weight_dtype` no array is read or rewritten: the orbax item directories are hard-linked (copied across
filesystems), so the combination takes seconds and no memory whatever the size, and the arrays keep the inputs'
dtypes. With `weight_dtype` (as every `lav2 convert` kind) the frozen weights are stored in that dtype and the
config's `model` / `vision` weight and compute dtypes say so (`checkpoint.pretrained.with_dtype`): the `base` items
whose arrays have another dtype are rewritten leaf by leaf (one leaf in host memory; stacked leaves chunked per
layer, as `lav2 convert` writes them; the cast is numpy's, as the converters'); items already in that dtype and
any other item (trainable leaves stay float32) are still linked. The output holds no splice and no projector: a LLaVA
run over it (`config.model.system="llava"`) takes the splice (projector kind, feature layer, `select`,
placeholder id) from its config, the token count from this tower, and initialises the projector itself
(`lav2_jax.train.state.model_from_config`). Its `lav2 export trained` is adapter-only over OUT.
"""

from __future__ import annotations

import os
import shutil
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lav2_jax.checkpoint.atomic import atomic_directory
from lav2_jax.checkpoint.items import item_shapes, restore_item
from lav2_jax.checkpoint.layout import BASE_ITEM, TOKENIZER_DIR, read_config, write_config
from lav2_jax.checkpoint.pretrained import with_dtype
from lav2_jax.checkpoint.stream import ItemWriter

VISION_ITEM = "vision"
STACKED = ("layers", "resblocks")  # leaf path parts of leaves stacked over layers (chunked one layer each)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def _read(path: str, flag: str):
    path = os.path.abspath(os.fspath(path))
    try:
        return path, read_config(path)
    except ValueError as e:
        raise ValueError(f"{flag} {e}") from None


def _place(src: str, dst: str, weight_dtype: Optional[str]) -> None:
    """Item `src` as item `dst`: linked, or rewritten with every floating leaf in `weight_dtype` when one differs."""
    leaves = item_shapes(src)
    want = {k: jnp.dtype(weight_dtype) if weight_dtype and jnp.issubdtype(d, jnp.floating) else d
            for k, (_, d) in leaves.items()}
    if all(want[k] == d for k, (_, d) in leaves.items()):
        shutil.copytree(src, dst, copy_function=_link_or_copy)
        return
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    writer = ItemWriter(dst)
    for key, (shape, dtype) in leaves.items():
        value = np.asarray(restore_item(src, {key: jax.ShapeDtypeStruct(shape, dtype, sharding=device)})[key])
        stacked = len(shape) > 1 and any(part in STACKED for part in key)
        writer.create(key, shape, want[key], stacked)
        for i in range(shape[0]) if stacked else (None,):
            writer.write(key, value if i is None else value[i], i)  # cast to want[key] by numpy
        del value
    writer.close()


def combine_llava_base(llm: str, clip: str, out_dir: str, *, weight_dtype: Optional[str] = None,
                       overwrite: bool = False) -> str:
    """Writes the combined checkpoint described above (atomically); returns its absolute path. `weight_dtype`
    (bfloat16 | float32): the frozen weights' storage dtype; None keeps the inputs' arrays as they are."""
    llm, lcfg = _read(llm, "--llm")
    clip, ccfg = _read(clip, "--clip")
    if lcfg.model is None:
        raise ValueError(f"--llm {llm}: a vision-only checkpoint; give the language model (lav2 convert hf|meta)")
    if lcfg.base is not None:
        raise ValueError(f"--llm {llm}: an adapter-only checkpoint (base {lcfg.base}); give a complete one")
    adapter = lcfg.adapter
    if adapter is not None and (adapter.splice is not None or adapter.has_visual):
        raise ValueError(f"--llm {llm}: already a multimodal checkpoint (adapter {adapter.system}); "
                         "give a language-only one")
    if lcfg.vision is not None:
        raise ValueError(f"--llm {llm}: already holds a vision tower")
    if ccfg.model is not None or ccfg.vision is None or tuple(ccfg.items) != (BASE_ITEM,):
        raise ValueError(f"--clip {clip}: not a vision-only checkpoint (lav2 convert clip)")
    if VISION_ITEM in lcfg.items:
        raise ValueError(f"--llm {llm}: already has an item named {VISION_ITEM!r}")
    for root, item in [(llm, i) for i in lcfg.items] + [(clip, BASE_ITEM)]:
        if not os.path.isdir(os.path.join(root, item)):
            raise ValueError(f"{root}: config.json lists item {item!r} but {os.path.join(root, item)} is missing")
    meta = {"source": "llava-base", "llm": llm, "clip": clip, "llm_meta": lcfg.meta, "clip_meta": ccfg.meta}
    config = lcfg.replace(vision=ccfg.vision, channel_order=ccfg.channel_order,
                          items=tuple(lcfg.items) + (VISION_ITEM,), meta=meta)
    config = with_dtype(config, weight_dtype)
    with atomic_directory(out_dir, overwrite) as tmp:
        for item in lcfg.items:
            _place(os.path.join(llm, item), os.path.join(tmp, item), weight_dtype if item == BASE_ITEM else None)
        _place(os.path.join(clip, BASE_ITEM), os.path.join(tmp, VISION_ITEM), weight_dtype)
        if os.path.isdir(os.path.join(llm, TOKENIZER_DIR)):
            shutil.copytree(os.path.join(llm, TOKENIZER_DIR), os.path.join(tmp, TOKENIZER_DIR))
        write_config(tmp, config)
    return os.path.abspath(os.fspath(out_dir))
