"""Tiny benchmark folders in the exact released layouts (MME, ScienceQA, COCO captions) for the eval tests."""

from __future__ import annotations

import json
import os

from lav2_jax.data.testing import write_image

# Short questions: with the tests' 64-piece tokenizer every MME prompt stays within one 128-token shape bucket.
WORDS = ("Is it a cat?", "Is the ball red?", "Is this a dog?", "Two people?", "Is the sky blue?", "Any text?")


def write_mme(root: str, per_subtask: dict[str, int], seed: int = 0) -> str:
    """`per_subtask` {name: number of images}; two questions per image (one Yes, one No); split layout for the
    five subtasks that use it, flat for the others. Image k of a subtask is a PNG for even k, a JPEG for odd k."""
    from lav2_jax.eval.mme import SPLIT_LAYOUT

    for s, (name, n) in enumerate(per_subtask.items()):
        folder = os.path.join(root, name)
        img_dir = os.path.join(folder, "images") if name in SPLIT_LAYOUT else folder
        txt_dir = os.path.join(folder, "questions_answers_YN") if name in SPLIT_LAYOUT else folder
        os.makedirs(txt_dir, exist_ok=True)
        for k in range(n):
            stem = f"{1000 + k}"
            ext, fmt = (".png", "PNG") if k % 2 == 0 else (".jpg", "JPEG")
            write_image(os.path.join(img_dir, stem + ext), 40 + k, 30 + 2 * k, seed=seed + 31 * s + k, fmt=fmt)
            q1, q2 = WORDS[(k + s) % len(WORDS)], WORDS[(k + s + 1) % len(WORDS)]
            with open(os.path.join(txt_dir, stem + ".txt"), "w", encoding="utf-8") as f:
                f.write(f"{q1}\tYes\n{q2}\tNo\n")
    return root


SUBJECTS = ("natural science", "social science", "language science")


def write_scienceqa(root: str, n: int, split: str = "test", seed: int = 0) -> dict:
    """`n` problems; every second one has an image, every third a hint; subjects and grades cycle. Returns
    the problems dict."""
    problems = {}
    for i in range(n):
        pid = str(100 + i)
        image = "image.png" if i % 2 == 0 else None
        problems[pid] = {
            "question": f"Which of these is item {i}?", "choices": [f"choice {j}" for j in range(2 + i % 3)],
            "answer": i % 2, "hint": f"Some context {i}." if i % 3 == 0 else "", "image": image,
            "subject": SUBJECTS[i % 3], "grade": f"grade{1 + (i * 5) % 12}", "split": split,
            "task": "closed choice", "topic": "t", "category": "c", "skill": "s", "lecture": "", "solution": ""}
        if image:
            write_image(os.path.join(root, "images", split, pid, image), 36, 28, seed=seed + i)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "problems.json"), "w") as f:
        json.dump(problems, f)
    with open(os.path.join(root, "pid_splits.json"), "w") as f:
        json.dump({split: list(problems), "train": []}, f)
    return problems


def write_coco(root: str, n: int, seed: int = 0) -> tuple[str, str, str]:
    """(annotation file, image folder, Karpathy-style split file listing every image but the last)."""
    images, anns = [], []
    img_dir = os.path.join(root, "val2014")
    for i in range(n):
        iid = 391895 + 7 * i
        name = f"COCO_val2014_{iid:012d}.jpg"
        write_image(os.path.join(img_dir, name), 48, 36, seed=seed + i, fmt="JPEG")
        images.append({"id": iid, "file_name": name, "height": 36, "width": 48})
        for j, cap in enumerate(("A man riding a wave on top of a surfboard.", "A dog runs in the park.",
                                 "Two cats sit on a red sofa.")):
            anns.append({"id": 10 * i + j, "image_id": iid, "caption": cap if j else f"Picture number {i}."})
    ann = os.path.join(root, "captions_val2014.json")
    with open(ann, "w") as f:
        json.dump({"info": {}, "images": images, "annotations": anns}, f)
    split = os.path.join(root, "karpathy_test.json")
    with open(split, "w") as f:
        json.dump([{"image": f"val2014/{im['file_name']}", "caption": []} for im in images[:-1]], f)
    return ann, img_dir, split
