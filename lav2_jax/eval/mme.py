"""MME (Fu et al. 2023, arXiv 2306.13394): yes/no questions, two per image, 14 subtasks.

Layout of the released benchmark (`MME_DIR`, e.g. ``MME_Benchmark_release_version``), one folder per subtask:

  split  ``<subtask>/images/<stem>.jpg|png`` + ``<subtask>/questions_answers_YN/<stem>.txt``
         (artwork, celebrity, landmark, posters, scene)
  flat   ``<subtask>/<stem>.jpg|png`` beside ``<subtask>/<stem>.txt`` (the other nine)

Each txt holds lines ``question<TAB>Yes|No`` (two per image). A subtask folder is read in whichever layout it has;
a subtask missing from the root is reported (`missing_subtasks`), not fatal; a txt without its image becomes a
"missing image" skip. A line that is not ``question<TAB>Yes|No`` is a skip record naming ``file:line``
("malformed question line"), or `EvalError` under `strict`.

Prompt: the Alpaca no-input template around the question (docs/design.md §3.3.2 — the release formats every
question with it), greedy decoding. Answers parse to yes / no / other (`parse_answer`: the whole answer when it is
yes or no, else whether "yes" or "no" occurs in its first four characters — MME's own rule).

Scores (`score`): per subtask `acc` (fraction of questions right), `acc_plus` (fraction of images with every
question right) and `score` = 100·acc + 100·acc_plus; `perception` / `cognition` = sum of the scores of the
perception / cognition subtasks present. Skipped questions are left out of both fractions (and counted).
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

from lav2_jax.core import templates
from lav2_jax.eval.runner import EvalError, Item, skip_counts, skip_record

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
SPLIT_LAYOUT = ("artwork", "celebrity", "landmark", "posters", "scene")
IMAGE_EXTS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")
MALFORMED = "malformed question line"


def prompt(question: str) -> str:
    return templates.alpaca(question)


def parse_answer(text: str) -> str:
    """'yes' / 'no' / 'other' (MME's rule: exact word, else a "yes"/"no" within the first four characters)."""
    t = text.strip().lower()
    if t in ("yes", "no"):
        return t
    head = t[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def _find_image(folder: str, stem: str) -> str:
    for ext in IMAGE_EXTS:
        p = os.path.join(folder, stem + ext)
        if os.path.isfile(p):
            return p
    return os.path.join(folder, stem + ".jpg")  # missing: a "missing image" skip names this path


def read_subtask(root: str, name: str, strict: bool = False) -> tuple[list[Item], list[dict]]:
    """(items, skip records for malformed lines) of subtask folder `root/name`."""
    folder = os.path.join(root, name)
    qa_dir, img_dir = os.path.join(folder, "questions_answers_YN"), os.path.join(folder, "images")
    if not os.path.isdir(qa_dir):
        qa_dir = img_dir = folder
    items, bad = [], []
    for fname in sorted(f for f in os.listdir(qa_dir) if f.endswith(".txt")):
        stem, path = fname[:-4], os.path.join(qa_dir, fname)
        image = _find_image(img_dir, stem)
        try:
            with open(path, encoding="utf-8-sig") as f:
                lines = f.read().splitlines()
        except UnicodeDecodeError:
            lines = [None]
        q = 0
        for n, line in enumerate(lines, 1):
            if line is not None and not line.strip():
                continue
            parts = line.rsplit("\t", 1) if line is not None else []
            if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no") or not parts[0].strip():
                where = f"{path}:{n}"
                if strict:
                    raise EvalError(f"{where}: {MALFORMED}: expected 'question<TAB>Yes|No'")
                bad.append(skip_record(f"{name}/{stem}/line{n}", MALFORMED, where, subtask=name, image=stem))
                continue
            items.append(Item(id=f"{name}/{stem}/{q}", prompt=prompt(parts[0].strip()), image=image,
                              meta={"subtask": name, "image": stem, "question": parts[0].strip(),
                                    "answer": parts[1].strip().lower()}))
            q += 1
    return items, bad


def read_benchmark(root: str, subtasks: Optional[Iterable[str]] = None, strict: bool = False):
    """(items, malformed-line skip records, missing subtask names) under MME root `root`."""
    if not os.path.isdir(root):
        raise EvalError(f"MME root not found: {root}")
    wanted = tuple(subtasks) if subtasks else SUBTASKS
    unknown = [s for s in wanted if s not in SUBTASKS]
    if unknown:
        raise EvalError(f"unknown MME subtask(s) {', '.join(unknown)}; known: {', '.join(SUBTASKS)}")
    items, bad, missing = [], [], []
    for name in wanted:
        if not os.path.isdir(os.path.join(root, name)):
            missing.append(name)
            continue
        i, b = read_subtask(root, name, strict)
        items += i
        bad += b
    if not items and not bad:
        raise EvalError(f"{root}: no MME subtask folder with question files (expected e.g. {root}/existence/*.txt)")
    return items, bad, missing


def score(records: Iterable[dict], missing: Iterable[str] = ()) -> dict:
    """summary.json of MME from prediction records (`{"subtask", "image", "answer", "prediction"}` or skips)."""
    records = list(records)
    per: dict[str, dict[str, list[bool]]] = {}
    other: dict[str, int] = {}
    for r in records:
        if "skipped" in r:
            continue
        pred = parse_answer(r["prediction"])
        per.setdefault(r["subtask"], {}).setdefault(r["image"], []).append(pred == r["answer"])
        other[r["subtask"]] = other.get(r["subtask"], 0) + (pred == "other")
    subtasks, counts = {}, {}
    for name in SUBTASKS:
        if name not in per:
            continue
        images = per[name]
        answers = [ok for oks in images.values() for ok in oks]
        acc = sum(answers) / len(answers)
        acc_plus = sum(all(oks) for oks in images.values()) / len(images)
        subtasks[name] = {"acc": acc, "acc_plus": acc_plus, "score": 100.0 * acc + 100.0 * acc_plus}
        counts[name] = {"questions": len(answers), "images": len(images), "other_answers": other[name]}
    return {
        "subtasks": subtasks,
        "perception": sum(s["score"] for n, s in subtasks.items() if n in PERCEPTION),
        "cognition": sum(s["score"] for n, s in subtasks.items() if n in COGNITION),
        "counts": counts,
        "missing_subtasks": sorted(missing),
        "skipped": skip_counts(records),
    }


def table_rows(summary: dict) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for name, s in summary["subtasks"].items():
        rows.append((f"{name} acc / acc+ / score", f"{s['acc']:.4f} / {s['acc_plus']:.4f} / {s['score']:.2f}"))
    rows += [("perception", float(summary["perception"])), ("cognition", float(summary["cognition"])),
             ("skipped", summary["skipped"]["total"])]
    if summary["missing_subtasks"]:
        rows.append(("missing subtasks", ", ".join(summary["missing_subtasks"])))
    return rows
