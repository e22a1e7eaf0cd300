"""COCO Captions (Chen et al. 2015): caption every image of a split, score against its reference captions.

Inputs:
  --ann     COCO captions JSON (``captions_val2014.json``): ``{"images": [{"id", "file_name"}, ...],
            "annotations": [{"image_id", "caption"}, ...]}``; images are ``--images DIR/<file_name>``.
  --split   optional, the images to caption (else every image of --ann). Accepted forms:
              * a list of image ids ``[391895, ...]``;
              * a list of objects with ``"image_id"`` / ``"cocoid"`` / ``"id"``, or with ``"image"`` (a path whose
                file name is an --ann ``file_name``: the LAVIS/BLIP ``coco_karpathy_test.json``);
              * Karpathy's ``dataset_coco.json`` ``{"images": [{"cocoid", "split", ...}]}``: its "test" images.
Prompt: the release's caption prompt, `templates.caption_prompt()` (the caption instruction in the no-input
Alpaca template, docs/design.md §3.3.2); greedy decoding.

Outputs: ``DIR/captions_results.json`` in the COCO results format ``[{"image_id": int, "caption": str}]`` (sorted
by image id) and the metrics of `lav2_jax.eval.caption_metrics` over the captioned images.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

from lav2_jax.core import templates
from lav2_jax.eval.caption_metrics import caption_scores
from lav2_jax.eval.runner import EvalError, Item, read_json, skip_counts

RESULTS = "captions_results.json"


def read_annotations(path: str) -> tuple[dict[int, str], dict[int, list[str]]]:
    """({image_id: file_name}, {image_id: [reference captions]}) of a COCO captions file."""
    ann = read_json(path, "annotation file")
    if not isinstance(ann, dict) or not isinstance(ann.get("images"), list) or not isinstance(
            ann.get("annotations"), list):
        raise EvalError(f"{path}: expected COCO captions JSON with lists \"images\" and \"annotations\"")
    files: dict[int, str] = {}
    for i, im in enumerate(ann["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            raise EvalError(f"{path}: images[{i}]: expected {{\"id\": int, \"file_name\": str}}")
        files[im["id"]] = im["file_name"]
    refs: dict[int, list[str]] = {}
    for i, a in enumerate(ann["annotations"]):
        if not isinstance(a, dict) or not isinstance(a.get("image_id"), int) or not isinstance(a.get("caption"), str):
            raise EvalError(f"{path}: annotations[{i}]: expected {{\"image_id\": int, \"caption\": str}}")
        if a["image_id"] not in files:
            raise EvalError(f"{path}: annotations[{i}]: image_id {a['image_id']} is not in \"images\"")
        refs.setdefault(a["image_id"], []).append(a["caption"])
    return files, refs


def read_split(path: str, files: dict[int, str]) -> list[int]:
    """Image ids of a --split file (forms in the module docstring), in the order of the file."""
    data = read_json(path, "split file")
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        data = [im for im in data["images"] if not isinstance(im, dict) or im.get("split", "test") == "test"]
    if not isinstance(data, list):
        raise EvalError(f"{path}: expected a list of image ids or objects, or Karpathy's {{\"images\": [...]}}")
    by_name = {os.path.basename(f): i for i, f in files.items()}
    ids: list[int] = []
    for n, entry in enumerate(data):
        if isinstance(entry, int):
            ids.append(entry)
            continue
        if isinstance(entry, dict):
            key = next((k for k in ("image_id", "cocoid", "id") if isinstance(entry.get(k), int)), None)
            if key is not None:
                ids.append(entry[key])
                continue
            if isinstance(entry.get("image"), str) and os.path.basename(entry["image"]) in by_name:
                ids.append(by_name[os.path.basename(entry["image"])])
                continue
        raise EvalError(f"{path}: entry {n}: expected an image id, or an object with \"image_id\" / \"cocoid\" / "
                        "\"id\" or an \"image\" whose file name is in the annotation file")
    unknown = [i for i in ids if i not in files]
    if unknown:
        raise EvalError(f"{path}: image ids not in the annotation file: {unknown[:5]}")
    return list(dict.fromkeys(ids))


def read_benchmark(ann: str, images: str, split: Optional[str] = None) -> tuple[list[Item], dict[int, list[str]]]:
    """(items, references) — one item per image (id = str(image_id)), in split-file or annotation order."""
    if not os.path.isdir(images):
        raise EvalError(f"image folder not found: {images}")
    files, refs = read_annotations(ann)
    ids = read_split(split, files) if split else list(files)
    ids = [i for i in ids if i in refs]
    prompt = templates.caption_prompt()
    return [Item(id=str(i), prompt=prompt, image=os.path.join(images, files[i]), meta={"image_id": i})
            for i in ids], refs


def results(records: Iterable[dict]) -> list[dict]:
    """COCO results format of the captioned (not skipped) records."""
    return sorted(({"image_id": r["image_id"], "caption": r["prediction"].strip()} for r in records
                   if "skipped" not in r), key=lambda r: r["image_id"])


def score(records: Iterable[dict], refs: dict[int, list[str]], tokenizer: str = "auto", meteor: bool = True,
          spice: bool = True) -> dict:
    """summary.json of captions: {"metrics", "tokenizer", "skipped_metrics", "images", "skipped"}."""
    records = list(records)
    preds = {r["image_id"]: r["caption"] for r in results(records)}
    metrics, info = caption_scores(refs, preds, tokenizer, meteor=meteor, spice=spice)
    return {"metrics": metrics, **info, "images": len(preds), "skipped": skip_counts(records)}


def table_rows(summary: dict) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = [(k, 100.0 * v) for k, v in summary["metrics"].items()]
    rows += [("tokenizer", summary["tokenizer"].split(" ")[0]), ("images", summary["images"]),
             ("skipped images", summary["skipped"]["total"])]
    rows += [(f"{k} skipped", v) for k, v in summary["skipped_metrics"].items()]
    return rows
