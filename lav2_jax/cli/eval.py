"""`lav2 eval caption|mme|scienceqa|loss`: benchmark a checkpoint, resumably (`lav2_jax.eval`).

  lav2 eval caption   --ckpt C --ann captions_val2014.json --images DIR [--split karpathy_test.json] --out DIR
  lav2 eval mme       --ckpt C --root MME_DIR --out DIR
  lav2 eval scienceqa --ckpt C --root SQA_DIR --split test --out DIR
  lav2 eval loss      --ckpt C --data [NAME=]DS [--data ...] --out DIR

Every runner appends to `DIR/predictions.jsonl` as it goes (a rerun of a killed evaluation resumes there and ends
with the same summary), skips and counts missing or corrupt images (`--strict` stops at the first, naming the
file), honours `--limit N` (the first N items in the benchmark's order), writes `DIR/summary.json` atomically and
prints a table. Generation is greedy by default, batched `--batch-size` at a time through
`lav2_jax.inference.generate`. Data-layout mistakes (a file that is not JSON, a malformed line, a missing folder)
end with one line naming the file (and line), exit status 2.
"""

from __future__ import annotations

# Heavy modules (jax, the model, TFDS, torch) are imported inside the functions that use them: `lav2` start-up time.

import argparse
import os

from lav2_jax.cli.errors import UserError
from lav2_jax.cli.generate import load_bundle

BENCHMARKS = ("caption", "mme", "scienceqa", "loss")
MAX_NEW = {"caption": 64, "mme": 16, "scienceqa": 32}


def _common(p: argparse.ArgumentParser, generates: bool) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint directory (save_pretrained / lav2 convert / train)")
    p.add_argument("--out", required=True, help="output folder: predictions.jsonl, summary.json")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch (default 8)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N items")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input (naming the file)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"), help="override the checkpoint dtype")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if generates:
        p.add_argument("--max-new-tokens", type=int, default=None, help="default: caption 64, mme 16, scienceqa 32")
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
        p.add_argument("--top-p", type=float, default=0.75, help="top-p when --temperature > 0 (default 0.75)")
        p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    sub.required = True
    c = sub.add_parser("caption", help="COCO captions: BLEU-1..4, METEOR, ROUGE-L, CIDEr (, SPICE)")
    _common(c, True)
    c.add_argument("--ann", required=True, help="COCO captions JSON (captions_val2014.json)")
    c.add_argument("--images", required=True, help="folder holding the annotation's file_name images")
    c.add_argument("--split", default=None, help="image list, e.g. karpathy_test.json (default: every image)")
    c.add_argument("--tokenizer", default="auto", choices=("auto", "ptb", "python"),
                   help="caption tokenizer: ptb (Java), python (no Java), auto = ptb when java is found")
    c.add_argument("--no-meteor", action="store_true", help="skip METEOR (it needs Java)")
    c.add_argument("--no-spice", action="store_true", help="skip SPICE (it needs Java and the CoreNLP jars)")
    m = sub.add_parser("mme", help="MME yes/no benchmark: acc, acc+, score; perception and cognition totals")
    _common(m, True)
    m.add_argument("--root", required=True, help="MME_Benchmark_release_version folder (one folder per subtask)")
    m.add_argument("--subtasks", default=None, help="comma-separated subset (default: all 14)")
    s = sub.add_parser("scienceqa", help="ScienceQA: accuracy by subject, context modality and grade")
    _common(s, True)
    s.add_argument("--root", required=True, help="folder with problems.json, pid_splits.json, images/")
    s.add_argument("--split", default="test", help="split of pid_splits.json to evaluate (default test)")
    lo = sub.add_parser("loss", help="held-out loss and perplexity per stream (datasets from lav2 data build)")
    _common(lo, False)
    lo.add_argument("--data", action="append", required=True, metavar="[NAME=]DS",
                    help="dataset folder (repeat for several streams; NAME defaults to the dataset kind)")
    lo.add_argument("--max-len", type=int, default=512, help="truncate samples as training does")
    lo.add_argument("--data-split", default="train", help="split of the dataset folders (default: train)")


def _load(args):
    return load_bundle(args)


def _generation(args, bundle, items, log):
    from lav2_jax.eval import runner

    predict, load_image = runner.model_predictor(
        bundle, max_new_tokens=args.max_new_tokens or MAX_NEW[args.benchmark], temperature=args.temperature,
        top_p=args.top_p, seed=args.seed)
    return runner.run_items(items, predict, log, load_image=load_image, batch_size=args.batch_size,
                            strict=args.strict, desc=args.benchmark, progress=not args.no_progress)


def _log_problems(log, problems) -> None:
    log.append_many(r for r in problems if r["id"] not in log)


def _caption(args, log) -> tuple[dict, list]:
    from lav2_jax.eval import caption, caption_metrics, runner

    try:
        caption_metrics.resolve_tokenizer(args.tokenizer)
    except ValueError as e:
        raise runner.EvalError(str(e)) from None
    items, refs = caption.read_benchmark(args.ann, args.images, args.split)
    items = runner.limit_items(items, args.limit)
    records = list(_generation(args, _load(args), items, log).values())
    runner.write_json(os.path.join(args.out, caption.RESULTS), caption.results(records))
    summary = caption.score(records, refs, args.tokenizer, meteor=not args.no_meteor, spice=not args.no_spice)
    return summary, caption.table_rows(summary)


def _mme(args, log) -> tuple[dict, list]:
    from lav2_jax.eval import mme, runner

    subtasks = [s.strip() for s in args.subtasks.split(",") if s.strip()] if args.subtasks else None
    items, bad, missing = mme.read_benchmark(args.root, subtasks, args.strict)
    items = runner.limit_items(items, args.limit)
    if missing:
        print(f"MME: subtask folders not found under {args.root}: {', '.join(missing)}")
    _log_problems(log, bad)
    records = list(_generation(args, _load(args), items, log).values()) + [log.records[b["id"]] for b in bad]
    summary = mme.score(records, missing)
    return summary, mme.table_rows(summary)


def _scienceqa(args, log) -> tuple[dict, list]:
    from lav2_jax.eval import runner, scienceqa

    items, bad = scienceqa.read_benchmark(args.root, args.split, args.strict)
    items = runner.limit_items(items, args.limit)
    _log_problems(log, bad)
    records = list(_generation(args, _load(args), items, log).values()) + [log.records[b["id"]] for b in bad]
    summary = scienceqa.score(records)
    return summary, scienceqa.table_rows(summary)


def _loss(args, log) -> tuple[dict, list]:
    from lav2_jax.eval import loss, runner

    if args.limit is not None and args.limit <= 0:
        raise runner.EvalError(f"--limit must be >= 1, got {args.limit}")
    specs = [loss.parse_stream(d) for d in args.data]
    bundle = _load(args)
    streams: dict[str, dict] = {}
    for name, path in specs:
        name, entry = loss.stream_loss(bundle, name, path, log, batch_size=args.batch_size, max_len=args.max_len,
                                       limit=args.limit, split=args.data_split, progress=not args.no_progress)
        if name in streams:
            raise runner.EvalError(f"two --data streams are named {name!r}: name them, --data NAME=PATH")
        streams[name] = entry
    summary = {"streams": streams}
    return summary, loss.table_rows(summary)


def run(args) -> int:
    from lav2_jax.eval import runner

    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if getattr(args, "max_new_tokens", None) is not None and args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be >= 1")
    if getattr(args, "temperature", 0.0) < 0:
        raise UserError("--temperature must be >= 0")
    if not os.path.isdir(args.ckpt):
        raise UserError(f"checkpoint not found: {args.ckpt}")
    os.makedirs(args.out, exist_ok=True)
    handler = {"caption": _caption, "mme": _mme, "scienceqa": _scienceqa, "loss": _loss}[args.benchmark]
    try:
        with runner.PredictionLog(os.path.join(args.out, runner.PREDICTIONS)) as log:
            summary, rows = handler(args, log)
    except runner.EvalError as e:
        raise UserError(str(e)) from None
    path = runner.write_json(os.path.join(args.out, runner.SUMMARY), summary)
    print(runner.format_table(rows))
    print(f"summary: {path}")
    return 0
