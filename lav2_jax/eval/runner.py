"""What every benchmark runner shares: resumable predictions, bad-input accounting, summary and table.

Output folder `DIR` of one evaluation:

  DIR/predictions.jsonl  one JSON object per line, appended as predictions are made, keyed by a unique ``"id"``;
                         an input that could not be used is a line ``{"id", "skipped": REASON, "file": PATH}``.
                         A rerun reads the file, keeps every complete line (a line cut short by a kill is dropped
                         and the file truncated back to the last complete line) and only predicts the ids that are
                         not there, so a killed evaluation resumes and ends with the same summary: nothing is
                         predicted twice, nothing is lost.
  DIR/summary.json       written atomically (`write_json`: a temporary sibling, then `os.replace`).

The pieces (benchmark modules and the held-out scoring of the demo use them):

  Item(id, prompt, image=None, meta={})       one question; `meta` is copied into its prediction record.
  PredictionLog(path)                          the resumable JSON-lines file (`records`, `append`, `append_many`).
  run_items(items, predict, log, ...)          batches the items that are not yet in `log` (`--limit` = first N
                                               items in the benchmark's order), loads their images through
                                               `load_image` (missing / corrupt → a skip line with the reason, or
                                               `EvalError` naming the file when `strict`), calls
                                               `predict(prompts, images) -> texts`, appends
                                               ``{"id", "prediction", **meta}`` per item; tqdm progress bar.
  model_predictor(bundle, ...)                 (predict, load_image) through `lav2_jax.inference.generate`
                                               (batched, shape buckets; greedy by default) and the model's image
                                               preprocessing (size, channel order).
  skip_counts(records)                         {"total", "by_reason"} of the skip lines.
  write_json(path, obj) / format_table(rows)   atomic JSON write; a two-column text table.

`EvalError` is a user's mistake in the benchmark data (a file that is not JSON, a malformed line, a missing
file, a bad image under `strict`): its message is one line naming the file (and line); the CLI turns it into a
`UserError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Optional, Sequence

from tqdm.auto import tqdm

from lav2_jax.data.images import ImageError
from lav2_jax.inference import generate
from lav2_jax.inference.experts import ExpertUnavailable, load_for_model
from lav2_jax.inference.prompts import from_alpaca

PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"


class EvalError(ValueError):
    """Bad benchmark input (message: one line naming the file and, where there is one, the line)."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One prompt of a benchmark. `image`: a file path or None; `meta`: JSON-able fields for the record."""

    id: str
    prompt: str
    image: Optional[str] = None
    meta: dict = dataclasses.field(default_factory=dict)


def read_json(path: str, what: str = "file") -> Any:
    """json.load(path) with a missing file or invalid JSON turned into EvalError naming the file and line."""
    if not os.path.isfile(path):
        raise EvalError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise EvalError(f"{path}:{e.lineno}: not JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise EvalError(f"{path}: not JSON (not UTF-8 text: {e.reason})") from None


def write_json(path: str, obj: Any) -> str:
    """Writes `obj` as indented JSON to a temporary sibling of `path`, then renames it into place."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


class PredictionLog:
    """DIR/predictions.jsonl, resumable (see the module docstring). `records`: {id: record} in file order."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.records: dict[str, dict] = {}
        self.dropped_partial = False
        if os.path.exists(self.path):
            self._load()
        self._f = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline; else a line cut short by a kill
        self.dropped_partial = bool(tail)
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise EvalError(f"{self.path}:{n}: not a JSON line (delete the file to start over)") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                raise EvalError(f"{self.path}:{n}: each line must be an object with a string \"id\"")
            self.records[rec["id"]] = rec
        if tail:
            with open(self.path, "r+b") as f:
                f.truncate(len(data) - len(tail))

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.records

    def __len__(self) -> int:
        return len(self.records)

    def append_many(self, records: Iterable[dict]) -> None:
        """Appends records in one write, then flushes and fsyncs (a kill loses at most the batch being written)."""
        records = list(records)
        if not records:
            return
        for r in records:
            if r["id"] in self.records:
                raise ValueError(f"prediction {r['id']!r} is already in {self.path}")
        self._f.write("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records))
        self._f.flush()
        os.fsync(self._f.fileno())
        for r in records:
            self.records[r["id"]] = r

    def append(self, record: dict) -> None:
        self.append_many([record])

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "PredictionLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def skip_record(item_id: str, reason: str, file: Optional[str] = None, **meta) -> dict:
    return {"id": item_id, "skipped": reason, **({"file": file} if file else {}), **meta}


def skip_counts(records: Iterable[dict]) -> dict:
    """{"total": n, "by_reason": {reason: n}} over the skip lines of `records` (reasons without the file name)."""
    by: dict[str, int] = {}
    for r in records:
        if "skipped" in r:
            by[r["skipped"]] = by.get(r["skipped"], 0) + 1
    return {"total": sum(by.values()), "by_reason": dict(sorted(by.items()))}


def limit_items(items: Sequence[Item], limit: Optional[int]) -> list[Item]:
    """The first `limit` items (all when None); duplicate ids are a programming error."""
    items = list(items)
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"duplicate item id {dup!r}")
    if limit is not None and limit < 0:
        raise EvalError(f"--limit must be >= 0, got {limit}")
    return items if limit is None else items[:limit]


def _bad_image(path: str, load_image: Callable[[str], Any]):
    """(pixels, None) or (None, reason)."""
    if not os.path.isfile(path):
        return None, "missing image"
    try:
        return load_image(path), None
    except ImageError as e:
        return None, f"unreadable image: {str(e).replace(path, '').strip(': ') or 'cannot decode'}"


def run_items(items: Sequence[Item], predict: Callable[[list[str], list], list[str]], log: PredictionLog, *,
              load_image: Optional[Callable[[str], Any]] = None, batch_size: int = 8, strict: bool = False,
              desc: str = "eval", progress: bool = True) -> dict[str, dict]:
    """Predicts every item of `items` not yet in `log`; returns {id: record} for `items` (in their order).

    Batches are fixed slices of `items` (item k is in batch k // batch_size), so an interrupted run and its rerun
    group the same items together. Images are loaded before a batch is predicted; a bad one becomes a skip
    record (or `EvalError` when `strict`).
    """
    items = list(items)
    batch_size = max(int(batch_size), 1)
    done = sum(it.id in log for it in items)
    bar = tqdm(total=len(items), initial=done, desc=desc, unit="item", dynamic_ncols=True, disable=not progress)
    try:
        for start in range(0, len(items), batch_size):
            pending = [it for it in items[start:start + batch_size] if it.id not in log]
            if not pending:
                continue
            ready, pixels, skips = [], [], []
            for it in pending:
                if it.image is None:
                    ready.append(it)
                    pixels.append(None)
                    continue
                if load_image is None:
                    raise ValueError("run_items: items have images but no load_image was given")
                px, reason = _bad_image(it.image, load_image)
                if reason is not None:
                    if strict:
                        raise EvalError(f"{it.image}: {reason} (item {it.id}; without --strict it is skipped "
                                        "and counted)")
                    skips.append(skip_record(it.id, reason, it.image, **it.meta))
                    continue
                ready.append(it)
                pixels.append(px)
            texts = predict([it.prompt for it in ready], pixels) if ready else []
            by_id = {it.id: {"id": it.id, "prediction": t, **it.meta} for it, t in zip(ready, texts)}
            by_id.update({s["id"]: s for s in skips})
            log.append_many(by_id[it.id] for it in pending)
            bar.update(len(pending))
    finally:
        bar.close()
    return {it.id: log.records[it.id] for it in items if it.id in log}


def model_predictor(bundle, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 0.75,
                    seed: int = 0, mesh=None):
    """(predict, load_image) for `run_items` through `lav2_jax.inference.generate`.

    predict(prompts, images): images[i] is a preprocessed [S, S, 3] array or None (prompt without an image);
    load_image(path): the model's preprocessing (its vision tower's size, the checkpoint's channel order);
    EvalError when the model has no vision tower.
    """
    def predict(prompts: list[str], images: list) -> list[str]:
        # the benchmarks' Alpaca prompts in the model's format
        prompts = [from_alpaca(bundle.model.adapter, p, im is not None) for p, im in zip(prompts, images)]
        imgs = images if any(im is not None for im in images) else None
        return generate(bundle, prompts, imgs, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_p=top_p, seed=seed, mesh=mesh).texts

    def load_image(path: str):
        try:
            return load_for_model(bundle, path)
        except ExpertUnavailable as e:
            raise EvalError(f"{path}: {e}") from None

    return predict, load_image


def format_table(rows: Sequence[tuple[str, Any]], header: tuple[str, str] = ("metric", "value")) -> str:
    """Two-column text table; floats with 4 decimals (2 from 10 up), numbers right-aligned, text as is."""

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.2f}" if abs(v) >= 10 else f"{v:.4f}"
        return str(v)

    cells = [(str(k), fmt(v), isinstance(v, (int, float))) for k, v in rows]
    w = max([len(header[0])] + [len(a) for a, _, _ in cells])
    v = max([len(header[1])] + [len(b) for _, b, num in cells if num])
    lines = [f"{header[0]:<{w}}  {header[1]:>{v}}", "-" * (w + 2 + v)]
    lines += [f"{a:<{w}}  {b:>{v}}" if num else f"{a:<{w}}  {b}" for a, b, num in cells]
    return "\n".join(lines)
