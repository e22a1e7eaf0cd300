"""A language model and a separately stored CLIP tower → one base checkpoint for LLaVA stage 1 (LLaVA paper §4.2;
SEED_SYSTEMS.md §1.4: Vicuna + `openai/clip-vit-large-patch14-336`, a fresh projector, only the projector trains).

`lav2 convert llava-base --llm LLM --clip CLIP --out OUT`:

  LLM   a complete language-only checkpoint (`lav2 convert hf` of Vicuna / LLaMA-2, `lav2 convert meta`)
  CLIP  a vision-only checkpoint (`lav2 convert clip` of the CLIP ViT-L/14-336 weights)
  OUT   config.json: LLM's `model` and adapter (`none`), CLIP's `vision`; items: LLM's (`base`) + `vision` (the
        CLIP's `base` item, leaves `clip/...`); LLM's tokenizer/.

No array is read or rewritten: the orbax item directories are hard-linked (copied across filesystems), so the
combination takes seconds and no memory whatever the size. The output holds no splice and no projector: a LLaVA
run over it (`config.model.system="llava"`) takes the splice (projector kind, feature layer, `select`,
placeholder id) from its config, the token count from this tower, and initialises the projector itself
(`lav2_jax.train.state.model_from_config`). Its `lav2 export trained` is adapter-only over OUT.
"""

from __future__ import annotations

import os
import shutil

from lav2_jax.checkpoint.layout import BASE_ITEM, TOKENIZER_DIR, read_config, write_config

VISION_ITEM = "vision"


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


def combine_llava_base(llm: str, clip: str, out_dir: str, *, overwrite: bool = False) -> str:
    """Writes the combined checkpoint described above (atomically); returns its absolute path."""
    from lav2_jax.checkpoint.atomic import atomic_directory

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
    with atomic_directory(out_dir, overwrite) as tmp:
        for item in lcfg.items:
            shutil.copytree(os.path.join(llm, item), os.path.join(tmp, item), copy_function=_link_or_copy)
        shutil.copytree(os.path.join(clip, BASE_ITEM), os.path.join(tmp, VISION_ITEM), copy_function=_link_or_copy)
        if os.path.isdir(os.path.join(llm, TOKENIZER_DIR)):
            shutil.copytree(os.path.join(llm, TOKENIZER_DIR), os.path.join(tmp, TOKENIZER_DIR))
        write_config(tmp, config)
    return os.path.abspath(os.fspath(out_dir))
