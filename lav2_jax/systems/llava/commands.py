"""LLaVA's `lav2 convert` sources (`System.converters`); its `lav2 export hf` parts are `export.hf_export`.

  convert llava       --hf-dir D [--clip C]   a llava-hf directory, or the original repo's (LLaMA + mm_projector)
                                              with its CLIP tower (`convert.convert_llava`)
  convert llava-base  --llm L --clip C        stage 1's base: a converted LLaMA / Vicuna + a converted CLIP tower
                                              (`convert_base.combine_llava_base`; default: arrays linked as they are)
"""

from __future__ import annotations

from lav2_jax.core.system import Converter
from lav2_jax.systems.llava.convert import convert_llava
from lav2_jax.systems.llava.convert_base import combine_llava_base


def _llava_arguments(s) -> None:
    s.add_argument("--hf-dir", required=True, help="config.json + weights (+ tokenizer files)")
    s.add_argument("--clip", default=None, help="original layout only: the CLIP tower it names (HF dir or file)")
    s.add_argument("--clip-heads", type=int, default=None,
                   help="CLIP attention heads (default: the HF config's, else width / 64)")
    s.add_argument("--max-seq-len", type=int, default=None, help="default: max_position_embeddings")


def _llava(args, **common) -> str:
    return convert_llava(args.hf_dir, args.out, clip=args.clip, clip_heads=args.clip_heads,
                         max_seq_len=args.max_seq_len, **common)


def _base_arguments(s) -> None:
    s.add_argument("--llm", required=True, help="language-only checkpoint (lav2 convert hf|meta)")
    s.add_argument("--clip", required=True, help="vision-only checkpoint (lav2 convert clip)")


def _base(args, **common) -> str:
    return combine_llava_base(args.llm, args.clip, args.out, **common)


CONVERTERS = {
    "llava": Converter("LLaVA: a Hugging Face llava-hf directory, or the original repo's (with --clip)",
                       _llava_arguments, _llava),
    "llava-base": Converter("a converted language model + a converted CLIP tower → LLaVA stage 1's base",
                            _base_arguments, _base, default_weight_dtype=None,
                            dtype_help="default: the inputs' own, linked without rewriting"),
}
