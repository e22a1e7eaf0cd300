"""`lav2 data build`: write instruction, conversation or caption data once into a TFDS array_record dataset.

Examples::

    lav2 data build --kind instruction --src alpaca_data.json --out data/alpaca
    lav2 data build --kind conversation --src llava_instruct_150k.json --image-root coco/train2014 --out data/llava
    lav2 data build --kind caption --src cc_pairs.tsv --out data/cc --strict
    lav2 data build --kind owl --src owl_instruct.jsonl --image-root images --out data/owl
    lav2 data build --kind caption --src annotations/captions_train2014.json --image-root coco \\
        --karpathy dataset_coco.json --karpathy-splits train,restval --out data/coco_train
    lav2 data build --kind caption --src tfds:coco_captions --tfds-data-dir ~/tensorflow_datasets --out data/coco

`--src` takes files, globs or folders (a folder: its *.json/*.jsonl, or *.tsv for captions). Caption sources are
recognised by name: ``*.tsv``/``*.csv`` → release TSV, ``*.json`` → COCO annotations, ``tfds:coco_captions``.
Besides the generic kinds, each system may read its own source format (`System.data_kinds`; mPLUG-Owl: `owl`,
its JSON / JSONL objects, stored as conversations).
"""

from __future__ import annotations

# Heavy modules (jax, the model, TFDS, torch) are imported inside the functions that use them: `lav2` start-up time.

import argparse
import glob
import os

from lav2_jax.cli.main import UserError

KINDS = ("instruction", "conversation", "caption")  # generic; the systems add theirs (`System.data_kinds`)


def system_kinds() -> dict:
    """{kind: `lav2_jax.core.system.DataKind`} of every system."""
    from lav2_jax.data.builder import system_kinds as kinds  # here: loads the systems (the CLI's start-up time)

    return kinds()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    b = sub.add_parser("build", help="write a TFDS array_record dataset from source files",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    extra = system_kinds()
    b.add_argument("--kind", required=True, choices=(*KINDS, *extra),
                   help="source format: instruction (Alpaca), conversation (ShareGPT / LLaVA), caption (TSV, COCO)"
                   + "".join(f"; {k}: {kind.help}" for k, kind in extra.items()))
    b.add_argument("--src", required=True, nargs="+", metavar="PATH", help="source files, globs or folders")
    b.add_argument("--out", required=True, help="output dataset folder (written atomically)")
    b.add_argument("--strict", action="store_true", help="stop at the first bad record (file and line)")
    b.add_argument("--split", default="train", help="split name to write (default: train)")
    b.add_argument("--image-root", help="folder that relative image paths are resolved against "
                                        "(default: the source file's folder)")
    b.add_argument("--karpathy", help="COCO: Karpathy split file (dataset_coco.json)")
    b.add_argument("--karpathy-splits", default="train,restval", help="COCO: splits to keep (default: train,restval)")
    b.add_argument("--tfds-data-dir", help="tfds:coco_captions: the TFDS data_dir where it was prepared")
    b.add_argument("--tfds-split", default="train", help="tfds:coco_captions: split to read (default: train)")
    b.add_argument("--tokenizer", help="with --max-len: drop samples that keep no answer token within max_len")
    b.add_argument("--max-len", type=int, help="with --tokenizer: tokens per row the samples are checked against")
    b.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="worker processes (0: in this process)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out folder")
    b.add_argument("--quiet", action="store_true", help="no progress bars")


def _expand(paths: list[str], patterns: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if p.startswith("tfds:"):
            out.append(p)
        elif os.path.isdir(p):
            found = sorted(f for pat in patterns for f in glob.glob(os.path.join(p, pat)))
            if not found:
                raise UserError(f"{p}: folder has no {' or '.join(patterns)} file")
            out += found
        elif os.path.exists(p):
            out.append(p)
        else:
            matched = sorted(glob.glob(p))
            if not matched:
                raise UserError(f"{p}: no such file")
            out += matched
    return out


def _sources(args: argparse.Namespace):
    from lav2_jax.data.builder import Source

    root = (("image_root", args.image_root),) if args.image_root else ()
    kind = system_kinds().get(args.kind)
    if kind is not None:  # a system's own source format
        files = _expand(args.src, kind.patterns)
        if any(f.startswith("tfds:") for f in files):
            raise UserError("TFDS catalog sources are for --kind caption")
        return [Source(args.kind, f, root if kind.image_root else ()) for f in files]
    if args.kind in ("instruction", "conversation"):
        files = _expand(args.src, ("*.json", "*.jsonl"))
        for f in files:
            if f.startswith("tfds:"):
                raise UserError(f"{f}: TFDS catalog sources are for --kind caption")
        return [Source(args.kind, f, root if args.kind == "conversation" else ()) for f in files]
    srcs = []
    for f in _expand(args.src, ("*.tsv", "*.csv")):
        if f.startswith("tfds:"):
            if f != "tfds:coco_captions":
                raise UserError(f"{f}: the only supported TFDS catalog source is tfds:coco_captions")
            if not args.tfds_data_dir:
                raise UserError("tfds:coco_captions needs --tfds-data-dir (where it was prepared)")
            srcs.append(Source("tfds_coco", args.tfds_data_dir, (("split", args.tfds_split),)))
        elif f.lower().endswith((".tsv", ".csv")):
            srcs.append(Source("tsv", f, root))
        elif f.lower().endswith(".json"):
            if not args.image_root:
                raise UserError(f"{f}: COCO annotations need --image-root (the image folder)")
            opts = [("image_root", args.image_root)]
            if args.karpathy:
                opts += [("karpathy", args.karpathy),
                         ("splits", tuple(s for s in args.karpathy_splits.split(",") if s))]
            srcs.append(Source("coco", f, tuple(opts)))
        else:
            raise UserError(f"{f}: unknown caption source (expected .tsv/.csv, COCO .json or tfds:coco_captions)")
    return srcs


def run(args: argparse.Namespace) -> int:
    from lav2_jax.data import builder, sources

    if (args.tokenizer is None) != (args.max_len is None):
        raise UserError("--tokenizer and --max-len go together")
    if args.max_len is not None and args.max_len < 2:
        raise UserError("--max-len must be at least 2")
    if args.workers < 0:
        raise UserError("--workers must be >= 0")
    srcs = _sources(args)
    if args.tokenizer is not None:
        from lav2_jax.data.tokenizer import load_tokenizer

        try:
            load_tokenizer(args.tokenizer)
        except ValueError as e:
            raise UserError(str(e)) from None
    try:
        kind = system_kinds().get(args.kind)
        report = builder.build(kind.stored_as if kind is not None else args.kind, srcs, args.out, strict=args.strict,
                               workers=args.workers, tokenizer=args.tokenizer, max_len=args.max_len, split=args.split,
                               overwrite=args.overwrite, progress=not args.quiet)
    except builder.StrictError as e:
        raise UserError(f"--strict: {e}") from None
    except (sources.SourceError, FileExistsError, ValueError) as e:
        raise UserError(str(e)) from None
    print(report.summary())
    for reason, where in report.examples.items():
        print(f"  {reason}: e.g. {'; '.join(where[:3])}")
    print(f"wrote {report.out} (split {args.split!r})")
    return 0
