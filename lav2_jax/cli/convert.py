"""`lav2 convert SOURCE ...`: PyTorch weights → an orbax checkpoint.

Generic sources (this module):
  meta      --ckpt-dir D [--tokenizer T]                        Meta LLaMA (params.json, consolidated.NN.pth)
  hf        --hf-dir D                                          Hugging Face Llama directory
  clip      --clip FILE|DIR [--clip-heads N] [--layout L]       OpenAI CLIP (state dict / TorchScript) or HF CLIP
The systems add theirs (`System.converters`, `lav2_jax.core.registry`), e.g.
  official  --llama-dir D --llama-type 7B --adapter F --clip F  released LLaMA-Adapter V2 multimodal file
            [--clip-heads N]
  chat65b   --ckpt F [F ...] --params P --tokenizer T           released 65B chat checkpoint
  llava     --hf-dir D [--clip C]                               LLaVA: llava-hf directory, or the original
                                                                repo's (LLaMA + mm_projector) with its CLIP
  llava-base --llm L --clip C                                   LLaVA stage 1's base: a converted LLaMA / Vicuna
                                                                + a converted CLIP tower (no projector yet)
  mplug-owl --hf-dir D                                          released mPLUG-Owl (vision, abstractor, LLaMA)
  clip-owl  --clip FILE|DIR [--clip-heads N]                    mPLUG-Owl's vision layout (per-head q|k|v, eps
                                                                1e-6, no proj) to initialise its stage 1
A system source `clip-NAME` is also `clip --layout NAME` (`clip --layout owl` = `clip-owl`).
CLIP heads: --clip-heads, else an HF directory's config, else width / 64 (an error when 64 does not divide it).
All take --out OUT, --weight-dtype bfloat16|float32 (frozen weights; trainable ones stay float32), --overwrite;
llava-base's default is no --weight-dtype: it links the inputs' arrays as they are (their dtypes); with one, it
stores the frozen weights in that dtype (rewriting the arrays of another dtype).
Every input problem is reported (file and key) before anything is written.
"""

from __future__ import annotations

# Heavy modules (jax, the model, TFDS, torch) are imported inside the functions that use them: `lav2` start-up time.

import argparse

from lav2_jax.cli.errors import UserError
from lav2_jax.core import registry
from lav2_jax.core.system import Converter


def _meta_arguments(s) -> None:
    s.add_argument("--ckpt-dir", required=True, help="Meta checkpoint directory (params.json, consolidated.NN.pth)")
    s.add_argument("--tokenizer", default=None, help="tokenizer.model (default: in --ckpt-dir or its parent)")
    s.add_argument("--max-seq-len", type=int, default=2048, help="context length of the model config (default 2048)")


def _meta(args, **common) -> str:
    from lav2_jax.checkpoint.convert.meta import convert_meta  # here: the CLI's start-up time

    return convert_meta(args.ckpt_dir, args.out, tokenizer=args.tokenizer, max_seq_len=args.max_seq_len, **common)


def _hf_arguments(s) -> None:
    s.add_argument("--hf-dir", required=True, help="Hugging Face Llama directory (config.json and weights)")
    s.add_argument("--max-seq-len", type=int, default=None, help="default: max_position_embeddings")


def _hf(args, **common) -> str:
    from lav2_jax.checkpoint.convert.hf import convert_hf  # here: the CLI's start-up time

    return convert_hf(args.hf_dir, args.out, max_seq_len=args.max_seq_len, **common)


def _clip_arguments(s) -> None:
    s.add_argument("--clip", required=True, help="OpenAI CLIP file (state dict or TorchScript) or HF CLIP directory")
    s.add_argument("--clip-heads", "--heads", dest="heads", type=int, default=None,
                   help="CLIP attention heads (default: the HF config's, else width / 64)")
    layouts = clip_layouts()
    s.add_argument("--layout", default="clip", choices=("clip", *layouts),
                   help="clip: our CLIP tower; " + "; ".join(f"{name}: as `lav2 convert {source}` ({c.help})"
                                                            for name, (source, c) in layouts.items())
                   + " (default clip)")


def _clip(args, **common) -> str:
    if args.layout != "clip":
        return clip_layouts()[args.layout][1].run(args, **common)
    from lav2_jax.checkpoint.convert.clip import convert_clip  # here: the CLI's start-up time

    return convert_clip(args.clip, args.out, heads=args.heads, **common)


GENERIC = {
    "meta": Converter("Meta LLaMA directory (params.json, consolidated.NN.pth, tokenizer.model)", _meta_arguments,
                      _meta),
    "hf": Converter("Hugging Face Llama directory (config.json + safetensors / pytorch_model*.bin)", _hf_arguments,
                    _hf),
    "clip": Converter("OpenAI CLIP weights (state dict or TorchScript archive) or a Hugging Face CLIP directory",
                      _clip_arguments, _clip),
}


def converters() -> dict[str, Converter]:
    """Every source: the generic ones, then each registered system's (`System.converters`)."""
    out = dict(GENERIC)
    for system in registry.all_systems():
        for name, converter in system.converters.items():
            if name in out:
                raise ValueError(f"system {system.name!r}: convert source {name!r} is already defined")
            out[name] = converter
    return out


def clip_layouts() -> dict[str, tuple[str, Converter]]:
    """`clip --layout NAME` → (source, Converter): the systems' sources `clip-NAME`, which read the clip source's
    arguments (`--clip`, `--clip-heads`)."""
    return {name[len("clip-"):]: (name, c) for name, c in converters().items() if name.startswith("clip-")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="source", metavar="SOURCE")
    sub.required = True
    for name, c in converters().items():
        s = sub.add_parser(name, help=c.help, description=c.help)
        s.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")
        s.add_argument("--weight-dtype", default=c.default_weight_dtype, choices=("bfloat16", "float32"),
                       help=f"storage dtype of frozen weights ({c.dtype_help})")
        s.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        c.add_arguments(s)


def run(args) -> int:
    try:
        out = converters()[args.source].run(args, weight_dtype=args.weight_dtype, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {out}")
    return 0
