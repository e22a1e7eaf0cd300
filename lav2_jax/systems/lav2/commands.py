"""LLaMA-Adapter V2's `lav2 convert` sources and `lav2 export` format (`System.converters`, `System.exporters`).

  convert official  --llama-dir D --llama-type 7B --adapter F --clip F   released multimodal file (`convert_official`)
  convert chat65b   --ckpt F [F ...] --params P --tokenizer T            released 65B chat checkpoint
  export official   --ckpt C --out FILE.pth                              back to the released adapter file
"""

from __future__ import annotations

from lav2_jax.core.system import Converter, Exporter
from lav2_jax.systems.lav2.convert_chat65b import convert_chat65b
from lav2_jax.systems.lav2.convert_official import convert_official
from lav2_jax.systems.lav2.export_official import export_official


def _official_arguments(s) -> None:
    s.add_argument("--llama-dir", required=True, help="holds tokenizer.model and <llama-type>/")
    s.add_argument("--llama-type", required=True, help="e.g. 7B, llama-2-7b")
    s.add_argument("--adapter", required=True, help="released adapter file (.pth)")
    s.add_argument("--clip", required=True, help="OpenAI CLIP ViT-L-14.pt (or a state dict / HF dir)")
    s.add_argument("--v-num-heads", type=int, default=16, help="heads of the connector blocks (release: 16)")
    s.add_argument("--clip-heads", type=int, default=None,
                   help="CLIP attention heads (default: the HF config's, else width / 64)")
    s.add_argument("--max-seq-len", type=int, default=512, help="context length (release: 512)")


def _official(args, **common) -> str:
    return convert_official(args.llama_dir, args.llama_type, args.adapter, args.clip, args.out,
                            v_num_heads=args.v_num_heads, clip_heads=args.clip_heads, max_seq_len=args.max_seq_len,
                            **common)


def _chat65b_arguments(s) -> None:
    s.add_argument("--ckpt", required=True, nargs="+", help="file, or model-parallel shards in order")
    s.add_argument("--params", required=True, help="params.json")
    s.add_argument("--tokenizer", required=True, help="tokenizer.model")
    s.add_argument("--max-seq-len", type=int, default=2048, help="context length of the model config (default 2048)")


def _chat65b(args, **common) -> str:
    return convert_chat65b(args.ckpt, args.params, args.tokenizer, args.out, max_seq_len=args.max_seq_len, **common)


CONVERTERS = {
    "official": Converter("released LLaMA-Adapter V2 file + base LLaMA + CLIP → multimodal checkpoint",
                          _official_arguments, _official),
    "chat65b": Converter("released 65B chat checkpoint (full state dict under 'model')", _chat65b_arguments,
                         _chat65b),
}
EXPORTERS = {"official": Exporter("released adapter file format (.pth)", export_official)}
