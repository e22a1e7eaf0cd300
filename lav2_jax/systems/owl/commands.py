"""mPLUG-Owl's `lav2 convert` sources (`System.converters`).

  convert mplug-owl  --hf-dir D     a released mPLUG-Owl directory (vision, abstractor, LLaMA)
  convert clip-owl   --clip F|DIR   OpenAI / HF CLIP weights in Owl's vision layout (per-head q|k|v, eps 1e-6, no
                                    proj), to initialise its stage 1 (`convert.convert_clip_owl`); the same as
                                    `lav2 convert clip --layout owl`
"""

from __future__ import annotations

from lav2_jax.core.system import Converter
from lav2_jax.systems.owl.convert import convert_clip_owl, convert_mplug_owl


def _mplug_owl_arguments(s) -> None:
    s.add_argument("--hf-dir", required=True, help="released mPLUG-Owl directory (config.json, weights, tokenizer)")
    s.add_argument("--max-seq-len", type=int, default=None, help="default: text_config max_position_embeddings")


def _mplug_owl(args, **common) -> str:
    return convert_mplug_owl(args.hf_dir, args.out, max_seq_len=args.max_seq_len, **common)


def _clip_owl_arguments(s) -> None:
    s.add_argument("--clip", required=True, help="OpenAI CLIP weights (state dict / TorchScript) or an HF CLIP dir")
    s.add_argument("--clip-heads", "--heads", dest="heads", type=int, default=None,
                   help="CLIP attention heads (default: the HF config's, else width / 64)")


def _clip_owl(args, **common) -> str:
    return convert_clip_owl(args.clip, args.out, heads=args.heads, **common)


CONVERTERS = {
    "mplug-owl": Converter("released mPLUG-Owl directory (config.json, weights, tokenizer.model)",
                           _mplug_owl_arguments, _mplug_owl),
    "clip-owl": Converter("CLIP weights → mPLUG-Owl's vision model (per-head q|k|v, no proj), for its stage 1",
                          _clip_owl_arguments, _clip_owl),
}
