"""Held-out loss and perplexity per stream, over datasets written by `lav2 data build`.

Each stream is one dataset folder (``--data [NAME=]PATH``, NAME defaulting to the dataset's kind: caption,
instruction or conversation). Its records go through the training input pipeline (`lav2_jax.data.pipeline`) in
evaluation mode — file order, one epoch, no augmentation (center crop, the first caption of each record), the
checkpoint's channel order — so the tokens, targets and loss mask are exactly the training ones
(docs/design.md §3.3.1: loss on answer tokens and the final EOS). The samples are the model's system's
(`lav2_jax.core.registry.of`): its fields of the pipeline (`lav2_jax.train.data.system_options`), the template it
reads that kind of dataset with (`System.data_template`; LLaVA: `plain` for captions, `vicuna_v1` otherwise) and
the splice's image preprocessing (`SpliceConfig.image_aspect_ratio`). Batches are padded to `batch_size` rows with
empty loss masks (one compiled shape per length bucket).

Per batch b the record ``{"id": "NAME/b", "stream", "loss_sum", "tokens", "rows"}`` is appended to
predictions.jsonl (resumable like every runner); the summary gives, per stream, ``loss`` = Σ loss_sum / Σ tokens
(mean cross-entropy per counted token, nats), ``perplexity`` = exp(loss), ``tokens``, ``rows`` and ``dropped``
(samples the pipeline dropped because truncation to `max_len` left no answer token).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Optional

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from lav2_jax.core import registry
from lav2_jax.data.pipeline import Pipeline, PipelineConfig
from lav2_jax.data.records import open_source
from lav2_jax.data.samples import kind_of
from lav2_jax.eval.runner import EvalError, PredictionLog
from lav2_jax.train.data import system_options
from lav2_jax.train.loss import token_loss_sums


class _Head:
    """The first `n` records of a random-access source (`--limit`)."""

    def __init__(self, source, n: int):
        self.source, self.n = source, min(n, len(source))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.source[i % self.n]


def parse_stream(spec: str) -> tuple[Optional[str], str]:
    """``NAME=PATH`` → (NAME, PATH); ``PATH`` → (None, PATH)."""
    name, sep, path = spec.partition("=")
    if sep and name and not os.path.exists(spec):
        return name, path
    return None, spec


def system_fields(adapter, kind: str) -> dict:
    """The PipelineConfig fields of `adapter`'s system for a held-out dataset of kind `kind`: what training reads
    from `config.data` (`system_options`), given the system's template for that kind and the splice's image
    preprocessing."""
    d = {"template": registry.of(adapter).data_template(adapter, kind)}
    splice = adapter.splice if adapter is not None else None
    if splice is not None:
        d["image_aspect"] = splice.image_aspect_ratio
    return system_options(ml_collections.ConfigDict(d), adapter)


@functools.lru_cache(maxsize=8)
def _loss_fn(model):
    def f(params, tokens, targets, loss_mask, images, has_image):
        hidden = model.apply({"params": params}, tokens, images, has_image, return_hidden=True)
        return token_loss_sums(hidden, params["output"]["kernel"], targets, loss_mask)

    return jax.jit(f)


def _pad_rows(batch: dict, rows: int) -> dict:
    n = len(batch["tokens"])
    if n == rows:
        return batch
    out = {}
    for k, v in batch.items():
        pad = np.zeros((rows - n, *v.shape[1:]), v.dtype)
        out[k] = np.concatenate([v, pad])
    return out


def stream_loss(bundle, name: str, path: str, log: PredictionLog, *, batch_size: int = 8, max_len: int = 512,
                limit: Optional[int] = None, split: str = "train", progress: bool = True) -> tuple[str, dict]:
    """Runs one stream (see the module docstring); returns (its name, its summary entry)."""
    if not os.path.isdir(path):
        raise EvalError(f"dataset not found: {path}")
    try:
        source = open_source(path, split)
    except (ValueError, KeyError) as e:
        raise EvalError(f"{path}: {e}") from None
    if limit is not None:
        source = _Head(source, limit)
    if len(source) == 0:
        raise EvalError(f"{path}: no records (split {split!r})")
    model = bundle.model
    size = model.vision.image_size if model.vision is not None else 224
    try:
        cfg = PipelineConfig(batch_size=batch_size, max_len=max_len, shuffle=False, num_epochs=1, train=False,
                             image_size=size, channel_order=getattr(bundle, "channel_order", "rgb"), shard_index=0,
                             shard_count=1, drop_remainder=False, read_threads=1,
                             **system_fields(model.adapter, kind_of(source[0])))
        pipe = Pipeline(source, bundle.tokenizer, cfg)
    except ValueError as e:
        raise EvalError(f"{path}: {e}") from None
    name = name or pipe.kind
    fn = _loss_fn(model)
    it = iter(pipe)
    n_batches = -(-len(source) // batch_size)
    bar = tqdm(total=n_batches, desc=f"loss {name}", unit="batch", dynamic_ncols=True, disable=not progress)
    b = 0
    try:
        for batch in it:
            bid = f"{name}/{b}"
            if bid not in log:
                rows = len(batch["tokens"])
                batch = _pad_rows(batch, batch_size)
                with_images = model.vision is not None and "images" in batch
                s, n = fn(bundle.params, batch["tokens"], batch["targets"], batch["loss_mask"],
                          batch["images"] if with_images else None, batch["has_image"] if with_images else None)
                log.append({"id": bid, "stream": name, "loss_sum": float(s), "tokens": float(n), "rows": rows})
            b += 1
            bar.update(1)
    finally:
        bar.close()
    recs = [log.records[f"{name}/{i}"] for i in range(b)]
    tokens = sum(r["tokens"] for r in recs)
    loss = sum(r["loss_sum"] for r in recs) / tokens if tokens else float("nan")
    return name, {"loss": loss, "perplexity": math.exp(loss) if tokens else float("nan"), "tokens": int(tokens),
                  "rows": sum(r["rows"] for r in recs), "batches": b, "dropped": int(it.dropped),
                  "path": os.path.abspath(path)}


def table_rows(summary: dict) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for name, s in summary["streams"].items():
        rows += [(f"{name} loss", s["loss"]), (f"{name} perplexity", s["perplexity"]), (f"{name} tokens", s["tokens"])]
    return rows
