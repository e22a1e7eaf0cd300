"""ScienceQA (Lu et al. 2022, arXiv 2209.09513): multiple-choice science questions, some with an image.

Layout (`SQA_DIR`, the release of the ScienceQA authors):

  problems.json    {pid: {"question", "choices": [str, ...], "answer": int, "hint": str, "image": "image.png" | null,
                   "subject": "natural science" | "social science" | "language science", "grade": "grade1".."grade12",
                   ...}}
  pid_splits.json  {"train": [pid, ...], "val": [...], "test": [...], ...}
  images/<split>/<pid>/image.png

Prompt (`prompt`): the Alpaca template (docs/design.md §3.3.2) with the instruction
``"Question: {question}\\nOptions: (A) {choice0} (B) {choice1} ...\\nAnswer with the option's letter from the given
choices directly."`` and, when the problem has a hint (its text context), the Input ``"Context: {hint}"``; the image
(if any) goes to the model.

Answer parsing (`parse_letter`): "The answer is (B)" / "answer: B" / "(B)" / "B" alone or a leading "B." / "B)" /
"B:" / the exact text of one choice; a letter outside the choices, or nothing found, counts as wrong.

Breakdowns (`score`; fractions in [0, 1], ScienceQA's published tables use percent): `accuracy`; `by_subject`
natural / social / language; `by_context` text (non-empty hint) / image (has an image) / none (neither) — text
and image overlap, as in ScienceQA's own TXT / IMG columns; `by_grade` "1-6" / "7-12". Problems whose image is
missing or corrupt are skipped and counted, not scored.
"""

from __future__ import annotations

import os
import re
import string
from typing import Iterable, Optional

from lav2_jax.core import templates
from lav2_jax.eval.runner import EvalError, Item, read_json, skip_counts, skip_record

LETTERS = string.ascii_uppercase
SUBJECTS = {"natural science": "natural", "social science": "social", "language science": "language"}
INSTRUCTION = ("Question: {question}\nOptions: {options}\n"
               "Answer with the option's letter from the given choices directly.")
MALFORMED = "malformed problem"


def prompt(question: str, choices: list[str], hint: str = "") -> str:
    options = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    context = f"Context: {hint.strip()}" if hint and hint.strip() else None
    return templates.alpaca(INSTRUCTION.format(question=question.strip(), options=options), context)


_PATTERNS = (
    re.compile(r"answer is:?\s*\(?([A-Z])\b\)?"),
    re.compile(r"answer:\s*\(?([A-Z])\b\)?"),
    re.compile(r"\(([A-Z])\)"),
    re.compile(r"^\s*([A-Z])(?:[.):]|\s*$)"),
)


def parse_letter(text: str, choices: list[str]) -> Optional[int]:
    """Index of the chosen option, or None."""
    for pat in _PATTERNS:
        m = pat.search(text)
        if m:
            i = LETTERS.index(m.group(1))
            return i if i < len(choices) else None
    t = text.strip().rstrip(".").lower()
    matches = [i for i, c in enumerate(choices) if c.strip().lower() == t]
    return matches[0] if len(matches) == 1 else None


def _grade_group(grade: str) -> Optional[str]:
    m = re.fullmatch(r"grade(\d+)", str(grade))
    if not m:
        return None
    return "1-6" if int(m.group(1)) <= 6 else "7-12"


def read_benchmark(root: str, split: str = "test", strict: bool = False) -> tuple[list[Item], list[dict]]:
    """(items, skip records of malformed problems) of split `split` under ScienceQA root `root`."""
    if not os.path.isdir(root):
        raise EvalError(f"ScienceQA root not found: {root}")
    ppath, spath = os.path.join(root, "problems.json"), os.path.join(root, "pid_splits.json")
    problems, splits = read_json(ppath, "problems.json"), read_json(spath, "pid_splits.json")
    if not isinstance(problems, dict):
        raise EvalError(f"{ppath}: expected an object {{pid: problem}}")
    if not isinstance(splits, dict) or split not in splits or not isinstance(splits[split], list):
        have = ", ".join(sorted(splits)) if isinstance(splits, dict) else "none"
        raise EvalError(f"{spath}: no split {split!r} (splits: {have})")
    items, bad = [], []
    for pid in splits[split]:
        pid = str(pid)
        p = problems.get(pid)
        problem = _check(p)
        if problem is not None:
            if strict:
                raise EvalError(f"{ppath}: problem {pid}: {problem}")
            bad.append(skip_record(pid, MALFORMED, f"{ppath}: problem {pid}: {problem}"))
            continue
        image = os.path.join(root, "images", split, pid, p["image"]) if p.get("image") else None
        hint = p.get("hint") or ""
        items.append(Item(id=pid, prompt=prompt(p["question"], p["choices"], hint), image=image, meta={
            "answer": int(p["answer"]), "choices": list(p["choices"]), "subject": SUBJECTS[p["subject"]],
            "has_text": bool(hint.strip()), "has_image": image is not None, "grade": _grade_group(p["grade"])}))
    return items, bad


def _check(p) -> Optional[str]:
    """What is wrong with a problem record, or None."""
    if not isinstance(p, dict):
        return "not in problems.json" if p is None else "not an object"
    if not isinstance(p.get("question"), str):
        return "no \"question\" text"
    ch = p.get("choices")
    if not isinstance(ch, list) or len(ch) < 2 or len(ch) > len(LETTERS) or not all(isinstance(c, str) for c in ch):
        return "\"choices\" must be a list of 2 or more strings"
    if not isinstance(p.get("answer"), int) or not 0 <= p["answer"] < len(ch):
        return "\"answer\" must be an index into \"choices\""
    if p.get("subject") not in SUBJECTS:
        return f"\"subject\" must be one of {', '.join(SUBJECTS)}"
    if _grade_group(p.get("grade")) is None:
        return "\"grade\" must be grade1..grade12"
    if p.get("image") is not None and not isinstance(p["image"], str):
        return "\"image\" must be a file name or null"
    return None


def _acc(rows: list[bool]) -> Optional[float]:
    return sum(rows) / len(rows) if rows else None


def score(records: Iterable[dict]) -> dict:
    """summary.json of ScienceQA from prediction records (or skips)."""
    records = list(records)
    scored = [r for r in records if "skipped" not in r]
    ok = {r["id"]: parse_letter(r["prediction"], r["choices"]) == r["answer"] for r in scored}

    def acc_where(pred) -> Optional[float]:
        return _acc([ok[r["id"]] for r in scored if pred(r)])

    return {
        "accuracy": _acc(list(ok.values())),
        "by_subject": {k: acc_where(lambda r, k=k: r["subject"] == k) for k in SUBJECTS.values()},
        "by_context": {"text": acc_where(lambda r: r["has_text"]), "image": acc_where(lambda r: r["has_image"]),
                       "none": acc_where(lambda r: not r["has_text"] and not r["has_image"])},
        "by_grade": {g: acc_where(lambda r, g=g: r["grade"] == g) for g in ("1-6", "7-12")},
        "questions": len(scored),
        "unparsed": sum(parse_letter(r["prediction"], r["choices"]) is None for r in scored),
        "skipped": skip_counts(records),
    }


def table_rows(summary: dict) -> list[tuple[str, object]]:
    def v(x):
        return "n/a" if x is None else float(x)

    rows = [("accuracy", v(summary["accuracy"]))]
    for group in ("by_subject", "by_context", "by_grade"):
        rows += [(f"{group[3:]} {k}", v(x)) for k, x in summary[group].items()]
    return rows + [("questions", summary["questions"]), ("unparsed answers", summary["unparsed"]),
                   ("skipped", summary["skipped"]["total"])]
