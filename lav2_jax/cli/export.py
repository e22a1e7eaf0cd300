"""`lav2 export official|hf --ckpt C --out OUT`: a checkpoint back to PyTorch formats (issue 4).

  official  trainable parameters in the released LLaMA-Adapter V2 file format (`--out FILE.pth`), loadable by the
            PyTorch demo; a checkpoint converted from a released file round-trips bit-exactly.
  hf        a plain Hugging Face Llama directory with biases, scales, norms and LoRA merged into the weights
            (`--dtype`, default the checkpoint's weight dtype); refused for adapter prompts / visual fusion.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="target", metavar="TARGET")
    sub.required = True
    for name, help_text in (("official", "released adapter file format (.pth)"),
                            ("hf", "plain Hugging Face Llama directory, adapters merged")):
        s = sub.add_parser(name, help=help_text, description=help_text)
        s.add_argument("--ckpt", required=True, help="lav2_jax checkpoint directory")
        s.add_argument("--out", required=True)
        s.add_argument("--overwrite", action="store_true")
        if name == "hf":
            s.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))


def run(args) -> int:
    from lav2_jax.cli.main import UserError

    try:
        if args.target == "official":
            from lav2_jax.checkpoint.export.official import export_official
            out = export_official(args.ckpt, args.out, overwrite=args.overwrite)
        else:
            from lav2_jax.checkpoint.export.hf import export_hf
            out = export_hf(args.ckpt, args.out, dtype=args.dtype, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {out}")
    return 0
