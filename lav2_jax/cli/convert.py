"""`lav2 convert meta|hf|clip|official|chat65b|mplug-owl|llava ...`: PyTorch weights → an orbax checkpoint.

  meta      --ckpt-dir D [--tokenizer T]                        Meta LLaMA (params.json, consolidated.NN.pth)
  hf        --hf-dir D                                          Hugging Face Llama directory
  clip      --clip FILE|DIR [--clip-heads N]                    OpenAI CLIP (state dict / TorchScript) or HF CLIP
  official  --llama-dir D --llama-type 7B --adapter F --clip F  released LLaMA-Adapter V2 multimodal file
            [--clip-heads N]
  chat65b   --ckpt F [F ...] --params P --tokenizer T           released 65B chat checkpoint
  mplug-owl --hf-dir D                                          released mPLUG-Owl (vision, abstractor, LLaMA)
  llava     --hf-dir D [--clip C]                               LLaVA: llava-hf directory, or the original
                                                                repo's (LLaMA + mm_projector) with its CLIP
  llava-base --llm L --clip C                                   LLaVA stage 1's base: a converted LLaMA / Vicuna
                                                                + a converted CLIP tower (no projector yet)
clip --layout owl writes mPLUG-Owl's vision layout (per-head q|k|v, eps 1e-6, no proj) to initialise its stage 1.
CLIP heads: --clip-heads, else an HF directory's config, else width / 64 (an error when 64 does not divide it).
All take --out OUT, --weight-dtype bfloat16|float32 (frozen weights; trainable ones stay float32), --overwrite;
llava-base's default is no --weight-dtype: it links the inputs' arrays as they are (their dtypes); with one, it
stores the frozen weights in that dtype (rewriting the arrays of another dtype).
Every input problem is reported (file and key) before anything is written.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="source", metavar="SOURCE")
    sub.required = True

    def source(name, help_text, weight_dtype="bfloat16", dtype_help="default bfloat16"):
        s = sub.add_parser(name, help=help_text, description=help_text)
        s.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")
        s.add_argument("--weight-dtype", default=weight_dtype, choices=("bfloat16", "float32"),
                       help=f"storage dtype of frozen weights ({dtype_help})")
        s.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        return s

    s = source("meta", "Meta LLaMA directory (params.json, consolidated.NN.pth, tokenizer.model)")
    s.add_argument("--ckpt-dir", required=True)
    s.add_argument("--tokenizer", default=None, help="tokenizer.model (default: in --ckpt-dir or its parent)")
    s.add_argument("--max-seq-len", type=int, default=2048)
    s = source("hf", "Hugging Face Llama directory (config.json + safetensors / pytorch_model*.bin)")
    s.add_argument("--hf-dir", required=True)
    s.add_argument("--max-seq-len", type=int, default=None, help="default: max_position_embeddings")
    s = source("clip", "OpenAI CLIP weights (state dict or TorchScript archive) or a Hugging Face CLIP directory")
    s.add_argument("--clip", required=True)
    s.add_argument("--clip-heads", "--heads", dest="heads", type=int, default=None,
                   help="CLIP attention heads (default: the HF config's, else width / 64)")
    s.add_argument("--layout", default="clip", choices=("clip", "owl"),
                   help="clip: our CLIP tower; owl: mPLUG-Owl's vision model (default clip)")
    s = source("official", "released LLaMA-Adapter V2 file + base LLaMA + CLIP → multimodal checkpoint")
    s.add_argument("--llama-dir", required=True, help="holds tokenizer.model and <llama-type>/")
    s.add_argument("--llama-type", required=True, help="e.g. 7B, llama-2-7b")
    s.add_argument("--adapter", required=True, help="released adapter file (.pth)")
    s.add_argument("--clip", required=True, help="OpenAI CLIP ViT-L-14.pt (or a state dict / HF dir)")
    s.add_argument("--v-num-heads", type=int, default=16, help="heads of the connector blocks (release: 16)")
    s.add_argument("--clip-heads", type=int, default=None,
                   help="CLIP attention heads (default: the HF config's, else width / 64)")
    s.add_argument("--max-seq-len", type=int, default=512, help="context length (release: 512)")
    s = source("mplug-owl", "released mPLUG-Owl directory (config.json, weights, tokenizer.model)")
    s.add_argument("--hf-dir", required=True)
    s.add_argument("--max-seq-len", type=int, default=None, help="default: text_config max_position_embeddings")
    s = source("llava", "LLaVA: a Hugging Face llava-hf directory, or the original repo's (with --clip)")
    s.add_argument("--hf-dir", required=True, help="config.json + weights (+ tokenizer files)")
    s.add_argument("--clip", default=None, help="original layout only: the CLIP tower it names (HF dir or file)")
    s.add_argument("--clip-heads", type=int, default=None,
                   help="CLIP attention heads (default: the HF config's, else width / 64)")
    s.add_argument("--max-seq-len", type=int, default=None, help="default: max_position_embeddings")
    s = source("llava-base", "a converted language model + a converted CLIP tower → LLaVA stage 1's base",
               weight_dtype=None, dtype_help="default: the inputs' own, linked without rewriting")
    s.add_argument("--llm", required=True, help="language-only checkpoint (lav2 convert hf|meta)")
    s.add_argument("--clip", required=True, help="vision-only checkpoint (lav2 convert clip)")
    s = source("chat65b", "released 65B chat checkpoint (full state dict under 'model')")
    s.add_argument("--ckpt", required=True, nargs="+", help="file, or model-parallel shards in order")
    s.add_argument("--params", required=True, help="params.json")
    s.add_argument("--tokenizer", required=True, help="tokenizer.model")
    s.add_argument("--max-seq-len", type=int, default=2048)


def run(args) -> int:
    from lav2_jax.cli.main import UserError

    try:
        out = _convert(args)
    except (ValueError, FileExistsError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {out}")
    return 0


def _convert(args) -> str:
    common = dict(weight_dtype=args.weight_dtype, overwrite=args.overwrite)
    if args.source == "meta":
        from lav2_jax.checkpoint.convert.meta import convert_meta
        return convert_meta(args.ckpt_dir, args.out, tokenizer=args.tokenizer, max_seq_len=args.max_seq_len, **common)
    if args.source == "hf":
        from lav2_jax.checkpoint.convert.hf import convert_hf
        return convert_hf(args.hf_dir, args.out, max_seq_len=args.max_seq_len, **common)
    if args.source == "clip" and getattr(args, "layout", "clip") == "owl":
        from lav2_jax.systems.owl.convert import convert_clip_owl
        return convert_clip_owl(args.clip, args.out, heads=args.heads, **common)
    if args.source == "mplug-owl":
        from lav2_jax.systems.owl.convert import convert_mplug_owl
        return convert_mplug_owl(args.hf_dir, args.out, max_seq_len=args.max_seq_len, **common)
    if args.source == "llava":
        from lav2_jax.systems.llava.convert import convert_llava
        return convert_llava(args.hf_dir, args.out, clip=args.clip, clip_heads=args.clip_heads,
                             max_seq_len=args.max_seq_len, **common)
    if args.source == "llava-base":
        from lav2_jax.systems.llava.convert_base import combine_llava_base
        return combine_llava_base(args.llm, args.clip, args.out, **common)
    if args.source == "clip":
        from lav2_jax.checkpoint.convert.clip import convert_clip
        return convert_clip(args.clip, args.out, heads=args.heads, **common)
    if args.source == "official":
        from lav2_jax.systems.lav2.convert_official import convert_official
        return convert_official(args.llama_dir, args.llama_type, args.adapter, args.clip, args.out,
                                v_num_heads=args.v_num_heads, clip_heads=args.clip_heads,
                                max_seq_len=args.max_seq_len, **common)
    from lav2_jax.systems.lav2.convert_chat65b import convert_chat65b
    return convert_chat65b(args.ckpt, args.params, args.tokenizer, args.out, max_seq_len=args.max_seq_len, **common)
