"""mPLUG-Owl's instruction data (JSON / JSONL objects ``{"text": str, "image": [path, ...]}``, SEED_SYSTEMS.md
§3.3) → the canonical conversation records of `lav2_jax.data.sources` (``lav2 data build --kind owl``).

``text`` is the whole conversation in Owl's format: an optional system text, then ``"\\nHuman: ..."`` and
``"\\nAI: ..."`` turns; a human turn that is just ``<image>`` marks the next human turn as the image's
(``image_turn``). The record: roles/values alternating human/assistant, the system text (``""`` when it is
`owl_templates.SYSTEM`, the default), ``_image`` the image path (relative to the image root). ``image`` may be a
list (the release) or a string; text-only samples have none (``[]``). Limits, counted as skips: more than one image
per sample (one image slot per sequence here), a count of ``<image>`` lines that differs from the listed images,
turns that do not alternate, an empty answer, no answer.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator

from lav2_jax import owl_templates as ot
from lav2_jax.data.sources import (R_EMPTY_ANSWER, R_NO_ASSISTANT, R_ORDER, Item, Skip, _records, _SkipSignal,
                                   _string_field)

R_MULTI_IMAGE = "more than one image (one image slot per sequence)"
R_IMAGE_COUNT = "<image> lines do not match the image list"
_TURN = re.compile(r"(?:^|\n)(Human|AI): ?")


def parse_owl_text(text: str) -> tuple[str, list[tuple[str, str]], int, int]:
    """(system, [(role, value)], image_turn, number of `<image>` lines) of one Owl conversation text."""
    parts = _TURN.split(text)
    system, turns, image_turn, n_images = parts[0].strip(), [], -1, 0
    for tag, value in zip(parts[1::2], parts[2::2]):
        value = value.strip()
        if tag == "Human" and value == "<image>":
            n_images += 1
            if image_turn < 0:
                image_turn = len(turns)
            continue
        role = "human" if tag == "Human" else "assistant"
        if role != ("human" if len(turns) % 2 == 0 else "assistant"):
            raise _SkipSignal(Skip(R_ORDER, f"turn {len(turns)} is {role}"))
        if role == "assistant" and not value:
            raise _SkipSignal(Skip(R_EMPTY_ANSWER, f"turn {len(turns)}"))
        turns.append((role, value))
    if len(turns) % 2:
        turns = turns[:-1]
    return system, turns, image_turn, n_images


def _owl(obj: dict, image_root: str) -> dict:
    text = _string_field(obj, "text")
    image = obj.get("image") or []
    paths = [image] if isinstance(image, str) else list(image)
    if not all(isinstance(p, str) for p in paths):
        raise _SkipSignal(Skip("image is not a list of paths"))
    system, turns, image_turn, n_images = parse_owl_text(text)
    if not turns:
        raise _SkipSignal(Skip(R_NO_ASSISTANT))
    if len(paths) > 1 or n_images > 1:
        raise _SkipSignal(Skip(R_MULTI_IMAGE, f"{max(len(paths), n_images)} images"))
    if len(paths) != n_images:
        raise _SkipSignal(Skip(R_IMAGE_COUNT, f"{n_images} <image> line(s), {len(paths)} image(s)"))
    rec: dict[str, Any] = {"roles": [r for r, _ in turns], "values": [v for _, v in turns],
                           "system": "" if system == ot.SYSTEM else system,
                           "image_turn": image_turn if paths and image_turn < len(turns) else -1}
    if paths:
        rec["_image"] = os.path.join(image_root, paths[0])
    return rec


def owl_records(path: str, image_root: str | None = None) -> Iterator[Item]:
    """Owl instruction objects of a JSON array / JSONL file; image paths relative to `image_root` (default: the
    file's folder)."""
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    return _records(path, lambda obj: _owl(obj, root))
