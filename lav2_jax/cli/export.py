"""`lav2 export official|hf --ckpt C --out OUT` and `lav2 export trained --workdir W --out OUT`.

  official  trainable parameters in the released LLaMA-Adapter V2 file format (`--out FILE.pth`), loadable by the
            PyTorch demo; a checkpoint converted from a released file round-trips bit-exactly.
  hf        a plain Hugging Face Llama directory with biases, scales, norms and LoRA merged into the weights
            (`--dtype`, default the checkpoint's weight dtype); refused for adapter prompts / visual fusion.
  trained   a `lav2 train` run's latest (or `--step`) checkpoint as a lav2_jax checkpoint: adapter-only over the
            run's base checkpoint, or complete for a random preset base (`lav2_jax.train.export`).
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
    s = sub.add_parser("trained", help="a lav2 train run → lav2_jax checkpoint",
                       description="a lav2 train run's checkpoint → a checkpoint lav2 generate / load_pretrained read")
    s.add_argument("--workdir", required=True, help="the run's --workdir")
    s.add_argument("--out", required=True)
    s.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    s.add_argument("--overwrite", action="store_true")


def run(args) -> int:
    from lav2_jax.cli.main import UserError

    try:
        if args.target == "trained":
            from lav2_jax.train.export import export_run
            out = export_run(args.workdir, args.out, step=args.step, overwrite=args.overwrite)
        elif args.target == "official":
            from lav2_jax.systems.lav2.export_official import export_official
            out = export_official(args.ckpt, args.out, overwrite=args.overwrite)
        else:
            from lav2_jax.checkpoint.export.hf import export_hf
            out = export_hf(args.ckpt, args.out, dtype=args.dtype, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {out}")
    return 0
