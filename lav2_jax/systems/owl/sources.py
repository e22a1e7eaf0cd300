"""mPLUG-Owl's instruction data (JSON / JSONL objects ``{"text": str, "image": [path, ...]}``, docs/design.md
§5.3) → the canonical conversation records of `lav2_jax.data.sources` (``lav2 data build --kind owl``).

``text`` is the whole conversation in Owl's format: an optional system text, then ``"\\nHuman: ..."`` and
``"\\nAI: ..."`` turns; a human turn that is just ``<image>`` places the next image of the list (in order) before
the next human turn; a multi-image sample is several such lines (consecutive, or before different turns). The
record: roles/values alternating human/assistant, the system text (``""`` when it is `owl_templates.SYSTEM`, the
default), ``_image`` the first image's path (relative to the image root) and ``image_turn`` the turn it precedes;
the second image on: ``_more_images`` (paths) and ``more_image_turns`` (their turns), empty for one image or none.
``image`` may be a list (the release) or a string; text-only samples have none (``[]``). Images after the last
complete human/assistant pair precede no kept turn and are left out. Limits, counted as skips: a count of
``<image>`` lines that differs from the listed images, an ``<image>`` line just before an ``AI:`` turn, turns that
do not alternate, an empty answer, no answer.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator

from lav2_jax.systems.owl import templates as ot
from lav2_jax.data.sources import (R_EMPTY_ANSWER, R_NO_ASSISTANT, R_ORDER, Item, Skip, _records, _SkipSignal,
                                   _string_field)

R_IMAGE_COUNT = "<image> lines do not match the image list"
R_IMAGE_PLACE = "an <image> line before an AI turn"
_TURN = re.compile(r"(?:^|\n)(Human|AI): ?")


def parse_owl_text(text: str) -> tuple[str, list[tuple[str, str]], list[int]]:
    """(system, [(role, value)], image_turns) of one Owl conversation text: the turn index each `<image>` line
    precedes, in order (len(turns) for a line after the last turn)."""
    parts = _TURN.split(text)
    system, turns, image_turns = parts[0].strip(), [], []
    for tag, value in zip(parts[1::2], parts[2::2]):
        value = value.strip()
        if tag == "Human" and value == "<image>":
            image_turns.append(len(turns))
            continue
        role = "human" if tag == "Human" else "assistant"
        if role != ("human" if len(turns) % 2 == 0 else "assistant"):
            raise _SkipSignal(Skip(R_ORDER, f"turn {len(turns)} is {role}"))
        if role == "assistant" and not value:
            raise _SkipSignal(Skip(R_EMPTY_ANSWER, f"turn {len(turns)}"))
        turns.append((role, value))
    if len(turns) % 2:
        turns = turns[:-1]
    return system, turns, image_turns


def _owl(obj: dict, image_root: str) -> dict:
    text = _string_field(obj, "text")
    image = obj.get("image") or []
    paths = [image] if isinstance(image, str) else list(image)
    if not all(isinstance(p, str) for p in paths):
        raise _SkipSignal(Skip("image is not a list of paths"))
    system, turns, image_turns = parse_owl_text(text)
    if not turns:
        raise _SkipSignal(Skip(R_NO_ASSISTANT))
    if len(paths) != len(image_turns):
        raise _SkipSignal(Skip(R_IMAGE_COUNT, f"{len(image_turns)} <image> line(s), {len(paths)} image(s)"))
    kept = [(os.path.join(image_root, p), t) for p, t in zip(paths, image_turns) if t < len(turns)]
    if any(t % 2 for _, t in kept):
        raise _SkipSignal(Skip(R_IMAGE_PLACE, f"turn {next(t for _, t in kept if t % 2)}"))
    rec: dict[str, Any] = {"roles": [r for r, _ in turns], "values": [v for _, v in turns],
                           "system": "" if system == ot.SYSTEM else system,
                           "image_turn": kept[0][1] if kept else -1,
                           "_more_images": [p for p, _ in kept[1:]], "more_image_turns": [t for _, t in kept[1:]]}
    if kept:
        rec["_image"] = kept[0][0]
    return rec


def owl_records(path: str, image_root: str | None = None) -> Iterator[Item]:
    """Owl instruction objects of a JSON array / JSONL file; image paths relative to `image_root` (default: the
    file's folder)."""
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    return _records(path, lambda obj: _owl(obj, root))
