"""`lav2 export FORMAT --ckpt C --out OUT` and `lav2 export trained --workdir W --out OUT`.

  hf        a plain Hugging Face Llama directory with biases, scales, norms and LoRA merged into the weights
            (`--dtype`, default the checkpoint's weight dtype); refused for adapter prompts / visual fusion; a
            spliced system exports its own transformers model (`System.hf_export`; LLaVA:
            `LlavaForConditionalGeneration`).
  trained   a `lav2 train` run's latest (or `--step`) checkpoint as a lav2_jax checkpoint: adapter-only over the
            run's base checkpoint, or complete for a random preset base (`lav2_jax.train.export`).
The systems add their formats (`System.exporters`, `lav2_jax.core.registry`), e.g.
  official  trainable parameters in the released LLaMA-Adapter V2 file format (`--out FILE.pth`), loadable by the
            PyTorch demo; a checkpoint converted from a released file round-trips bit-exactly.
"""

from __future__ import annotations

# Heavy modules (jax, the model, TFDS, torch) are imported inside the functions that use them: `lav2` start-up time.

import argparse

from lav2_jax.cli.errors import UserError
from lav2_jax.core import registry
from lav2_jax.core.system import Exporter

GENERIC = ("hf", "trained")


def exporters() -> dict[str, Exporter]:
    """Every registered system's export formats (`System.exporters`)."""
    out: dict[str, Exporter] = {}
    for system in registry.all_systems():
        for name, exporter in system.exporters.items():
            if name in out or name in GENERIC:
                raise ValueError(f"system {system.name!r}: export format {name!r} is already defined")
            out[name] = exporter
    return out


def _checkpoint_parser(sub, name: str, help_text: str):
    s = sub.add_parser(name, help=help_text, description=help_text)
    s.add_argument("--ckpt", required=True, help="lav2_jax checkpoint directory")
    s.add_argument("--out", required=True, help="output file or directory (written atomically)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return s


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="target", metavar="TARGET")
    sub.required = True
    for name, exporter in exporters().items():
        _checkpoint_parser(sub, name, exporter.help)
    s = _checkpoint_parser(sub, "hf", "plain Hugging Face Llama directory, adapters merged")
    s.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="dtype of the written tensors (default: the checkpoint's)")
    s = sub.add_parser("trained", help="a lav2 train run → lav2_jax checkpoint",
                       description="a lav2 train run's checkpoint → a checkpoint lav2 generate / "
                                   "load_pretrained read")
    s.add_argument("--workdir", required=True, help="the run's --workdir")
    s.add_argument("--out", required=True, help="output checkpoint directory (written atomically)")
    s.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args) -> int:
    try:
        if args.target == "trained":
            from lav2_jax.train.export import export_run  # here: the CLI's start-up time
            out = export_run(args.workdir, args.out, step=args.step, overwrite=args.overwrite)
        elif args.target == "hf":
            from lav2_jax.checkpoint.export.hf import export_hf  # here: the CLI's start-up time
            out = export_hf(args.ckpt, args.out, dtype=args.dtype, overwrite=args.overwrite)
        else:
            out = exporters()[args.target].run(args.ckpt, args.out, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {out}")
    return 0
