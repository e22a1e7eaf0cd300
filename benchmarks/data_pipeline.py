"""Samples/s of the data pipelines, on synthetic data generated here (nothing downloaded).

* caption: 224 px images (JPEG, 320–480 px sources) → decode + RandomResizedCrop + normalise, max_len 96
* instruction: Alpaca-style records tokenised to ~512 tokens (max_len 512), no images

Each is measured with 1 and 2 grain worker processes: batches of `--batch` after `--warmup` batches, samples/s =
rows / seconds. Tokeniser: a tiny sentencepiece model trained here (token ids differ from LLaMA's, the work per
sample is similar: sentencepiece encode of the same text).

    .venv/bin/python benchmarks/data_pipeline.py [--records 256] [--batch 16] [--batches 24]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _make_data(d: str, n: int):
    from lav2_jax.data import builder
    from lav2_jax.data.testing import train_sentencepiece, write_image, write_jsonl

    tok = train_sentencepiece(os.path.join(d, "tok.model"), vocab_size=1000,
                              extra=["word%d lorem ipsum dolor sit amet" % i for i in range(200)])
    rows = []
    for i in range(n):
        write_image(os.path.join(d, "img", f"{i}.jpg"), 320 + (i % 5) * 40, 240 + (i % 3) * 40, seed=i, fmt="JPEG")
        rows.append(f"img/{i}.jpg\tA photo number {i} of a red bus in a busy street.\n")
    with open(os.path.join(d, "c.tsv"), "w") as f:
        f.write("path\tcaption\n" + "".join(rows))
    words = " ".join(f"word{j} lorem ipsum dolor sit amet" for j in range(30))
    write_jsonl(os.path.join(d, "i.jsonl"), [{"instruction": f"Summarise text {i}.", "input": words,
                                               "output": words} for i in range(n)])
    builder.build("caption", [builder.Source("tsv", os.path.join(d, "c.tsv"))], os.path.join(d, "cap"),
                  progress=False)
    builder.build("instruction", [builder.Source("instruction", os.path.join(d, "i.jsonl"))],
                  os.path.join(d, "inst"), progress=False)
    return tok


def _measure(path: str, tok, max_len: int, workers: int, batch: int, batches: int, warmup: int):
    from lav2_jax.data.pipeline import Pipeline, PipelineConfig

    cfg = PipelineConfig(batch_size=batch, max_len=max_len, worker_count=workers, shard_index=0, shard_count=1,
                         image_size=224, train=True, worker_buffer_size=4)
    it = iter(Pipeline(path, tok, cfg))
    lengths = []
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        lengths.append(int((b["tokens"] != 0).sum(1).mean()))
    dt = time.perf_counter() - t0
    it.close()
    return batches * batch / dt, sum(lengths) / len(lengths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=24)
    ap.add_argument("--warmup", type=int, default=4)
    args = ap.parse_args()
    from lav2_jax.data.tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory() as d:
        tok = load_tokenizer(_make_data(d, args.records))
        print(f"| pipeline | workers | samples/s | mean tokens/sample |")
        print("| --- | --- | --- | --- |")
        for name, sub, max_len in (("caption 224px (decode+augment+normalise)", "cap", 96),
                                   ("instruction 512 tokens", "inst", 512)):
            for workers in (1, 2):
                sps, mean_len = _measure(os.path.join(d, sub), tok, max_len, workers, args.batch, args.batches,
                                         args.warmup)
                print(f"| {name} | {workers} | {sps:.1f} | {mean_len:.0f} |", flush=True)


if __name__ == "__main__":
    main()
