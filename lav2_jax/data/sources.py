"""Parsers of the supported source formats (instruction, conversation, caption) into canonical records (one per
training sample).

Every parser yields `(where, record)` or `(where, Skip)`; `where` is ``"file:line"`` (JSON arrays too: the line
where the element starts) so a bad record can be named. Whole-file problems (unreadable file, missing TSV header
or COCO key) raise `SourceError`: the user gave a wrong file, no record can be read.

Canonical records (the TFDS features written by `lav2_jax.data.builder`):

* instruction (Alpaca / GPT-4-LLM JSON or JSONL: `instruction`, `input` (optional), `output`):
  ``{"instruction": str, "input": str, "output": str}``
* conversation (ShareGPT / LLaVA: ``conversations: [{from, value}, ...]``, optional `image` path):
  ``{"roles": [str], "values": [str], "system": str, "image_turn": int}`` plus ``"_image": path`` when the sample
  has one; `image_turn` is the index (into roles/values) of the first turn that held ``<image>`` (-1: none; LLaVA's
  templates put the image at the front of that turn, `lav2_jax.systems.llava.conversation`). Roles
  `human`/`user` → "human", `gpt`/`assistant`/`chatgpt` → "assistant", a leading `system` turn replaces the chat
  system prompt (``""`` = default); any other role is skipped with a counted reason. The ``<image>`` placeholder
  is removed and the turn stripped. A trailing human turn (no answer) is dropped; turns must alternate starting
  with a human turn.
* caption (release TSV with a header naming an image column `url`/`path`/`image`/`filepath`/`file_name` and a
  caption column `caption`/`text`; COCO captions annotation JSON with an image folder, filtered by a Karpathy split
  file when given; the prepared TFDS catalog `coco_captions`): ``{"captions": [str]}`` plus ``"_image"`` (path or
  encoded bytes). One record per image; the pipeline samples one of its captions per visit.

Images are read and verified later, in the builder's worker pool (`load_image`).
"""

from __future__ import annotations

import collections
import csv
import json
import os
import re
from typing import Any, Iterable, Iterator, NamedTuple

R_JSON = "malformed JSON"
R_NOT_OBJECT = "record is not a JSON object"
R_EMPTY_ANSWER = "empty answer"
R_ORDER = "turns do not alternate human/assistant"
R_NO_ASSISTANT = "no assistant turn"
R_MISSING_IMAGE = "missing image file"
R_BAD_IMAGE = "unreadable image"
R_REMOTE = "remote image URL (not downloaded)"
R_TSV_ROW = "malformed TSV row"
R_NO_CAPTION = "image without caption"
R_TOO_LONG = "too long (no answer token within max_len)"
R_UTF8 = "invalid UTF-8"

HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant", "chatgpt")
IMAGE_COLUMNS = ("url", "path", "image", "filepath", "file_name")
CAPTION_COLUMNS = ("caption", "text")


def r_missing(field: str) -> str:
    return f"missing field '{field}'"


def r_not_string(field: str) -> str:
    return f"non-string field '{field}'"


def r_unknown_role(role: str) -> str:
    return f"unknown role '{role}'"


class Skip(NamedTuple):
    """A record left out: `reason` is the counted key, `detail` the human-readable specifics."""

    reason: str
    detail: str = ""


class SourceError(ValueError):
    """A whole source file is unusable (message names the file and what is wrong)."""


Item = tuple[str, "dict[str, Any] | Skip"]


def _read_text(path: str, errors: str = "strict") -> str:
    try:
        with open(path, encoding="utf-8", errors=errors) as f:
            return f.read()
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from None


def iter_json_objects(path: str) -> Iterator[tuple[str, Any]]:
    """Elements of a JSON array file, or lines of a JSONL file (`*.jsonl`, or text not starting with `[`), as
    `(file:line, value | Skip)`.

    A JSONL line that does not parse is one `Skip(R_JSON)`, one that is not UTF-8 one `Skip(R_UTF8)`. In a JSON
    array a syntax error makes the rest of the file unreadable: one `Skip(R_JSON)` at the error's line, and parsing
    stops; invalid UTF-8 in an array is a `SourceError` (the whole document is unreadable).
    """
    text = _read_text(path, errors="surrogateescape")  # undecodable bytes become lone surrogates U+DC80..U+DCFF
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] != "[" or path.lower().endswith(".jsonl"):  # a .jsonl file is lines, whatever comes first
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            bad = _first_bad_byte(line)
            if bad is not None:
                yield f"{path}:{lineno}", Skip(R_UTF8, f"byte 0x{ord(line[bad]) - 0xDC00:02x} at column {bad + 1}")
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path}:{lineno}", Skip(R_JSON, e.msg)
            except RecursionError:
                yield f"{path}:{lineno}", Skip(R_JSON, "nested too deeply")
        return
    if _first_bad_byte(text) is not None:
        _read_text(path)  # raises the SourceError naming the byte
    decoder = json.JSONDecoder()
    pos, line, counted, previous, k = start + 1, 1, 0, 0, 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", counted, pos)
        counted = pos
        if pos >= len(text):
            yield f"{path}:{line}", Skip(R_JSON, "unterminated JSON array")
            return
        if text[pos] == "]":
            return
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield f"{path}:{text.count(chr(10), 0, e.pos) + 1}", Skip(R_JSON, f"{e.msg}; rest of file unreadable")
            return
        except RecursionError:
            yield f"{path}:{line}", Skip(R_JSON, "nested too deeply; rest of file unreadable")
            return
        yield (f"{path}:{line}" if line != previous else f"{path}:{line} element {k}"), value
        pos, previous, k = end, line, k + 1


def _first_bad_byte(text: str):
    """Index of the first undecodable byte (a lone surrogate from `surrogateescape`), or None."""
    m = _BAD_BYTE.search(text)
    return m.start() if m else None


_BAD_BYTE = re.compile("[\udc80-\udcff]")


def _string_field(obj: dict, field: str, required: bool = True) -> str:
    if field not in obj or obj[field] is None:
        if required:
            raise _SkipSignal(Skip(r_missing(field)))
        return ""
    value = obj[field]
    if not isinstance(value, str):
        raise _SkipSignal(Skip(r_not_string(field), f"got {type(value).__name__}"))
    return value


class _SkipSignal(Exception):
    def __init__(self, skip: Skip):
        super().__init__(skip.reason)
        self.skip = skip


def _records(path: str, parse) -> Iterator[Item]:
    for where, obj in iter_json_objects(path):
        if isinstance(obj, Skip):
            yield where, obj
        elif not isinstance(obj, dict):
            yield where, Skip(R_NOT_OBJECT, f"got {type(obj).__name__}")
        else:
            try:
                yield where, parse(obj)
            except _SkipSignal as s:
                yield where, s.skip


def _instruction(obj: dict) -> dict:
    rec = {
        "instruction": _string_field(obj, "instruction"),
        "input": _string_field(obj, "input", required=False),
        "output": _string_field(obj, "output"),
    }
    if not rec["output"].strip():
        raise _SkipSignal(Skip(R_EMPTY_ANSWER))
    return rec


def instruction_records(path: str) -> Iterator[Item]:
    """Alpaca / GPT-4-LLM instruction data (JSON array or JSONL)."""
    return _records(path, _instruction)


def _conversation(obj: dict, image_root: str) -> dict:
    turns = obj.get("conversations")
    if turns is None:
        raise _SkipSignal(Skip(r_missing("conversations")))
    if not isinstance(turns, list):
        raise _SkipSignal(Skip("conversations is not a list"))
    roles, values, system, image_turn = [], [], "", -1
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise _SkipSignal(Skip(R_NOT_OBJECT, f"turn {i}"))
        role, value = _string_field(turn, "from"), _string_field(turn, "value")
        if "<image>" in value:
            value = value.replace("<image>", "").strip()
            if image_turn < 0 and role != "system":
                image_turn = len(roles)
        if role == "system" and i == 0:
            system = value
            continue
        if role in HUMAN_ROLES:
            role = "human"
        elif role in ASSISTANT_ROLES:
            role = "assistant"
        else:
            raise _SkipSignal(Skip(r_unknown_role(role), f"turn {i}"))
        if role != ("human" if len(roles) % 2 == 0 else "assistant"):
            raise _SkipSignal(Skip(R_ORDER, f"turn {i} is {role}"))
        if role == "assistant" and not value.strip():
            raise _SkipSignal(Skip(R_EMPTY_ANSWER, f"turn {i}"))
        roles.append(role)
        values.append(value)
    if len(roles) % 2:  # a trailing unanswered human turn carries no loss
        roles, values = roles[:-1], values[:-1]
    if not roles:
        raise _SkipSignal(Skip(R_NO_ASSISTANT))
    rec: dict[str, Any] = {"roles": roles, "values": values, "system": system}
    image = _string_field(obj, "image", required=False)
    if image:
        rec["_image"] = os.path.join(image_root, image)
    rec["image_turn"] = image_turn if image and image_turn < len(roles) else -1
    return rec


def conversation_records(path: str, image_root: str | None = None) -> Iterator[Item]:
    """ShareGPT / LLaVA conversations; image paths relative to `image_root` (default: the file's folder)."""
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    return _records(path, lambda obj: _conversation(obj, root))


def _pick_column(header: list[str], names: Iterable[str], path: str, what: str) -> int:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    raise SourceError(f"{path}: header {header} has no {what} column (one of {', '.join(names)})")


def tsv_caption_records(path: str, image_root: str | None = None) -> Iterator[Item]:
    """The release's caption TSV: header row, an image column (local path or file:// URL) and a caption column."""
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    rows = csv.reader(_read_text(path).splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(rows, None)
    if not header:
        raise SourceError(f"{path}: empty TSV (a header row with image and caption columns is required)")
    img_col = _pick_column(header, IMAGE_COLUMNS, path, "image")
    cap_col = _pick_column(header, CAPTION_COLUMNS, path, "caption")
    for lineno, row in enumerate(rows, 2):
        where = f"{path}:{lineno}"
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            yield where, Skip(R_TSV_ROW, f"{len(row)} columns, header has {len(header)}")
            continue
        ref, caption = row[img_col].strip(), row[cap_col].strip()
        if not caption:
            yield where, Skip(R_EMPTY_ANSWER)
        elif ref.startswith(("http://", "https://")):
            yield where, Skip(R_REMOTE, ref)
        else:
            ref = ref[len("file://"):] if ref.startswith("file://") else ref
            yield where, {"captions": [caption], "_image": os.path.join(root, ref)}


def _load_json_object(path: str, keys: tuple[str, ...]) -> dict:
    try:
        obj = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
    for key in keys:
        if not isinstance(obj, dict) or key not in obj:
            raise SourceError(f"{path}: missing key '{key}'")
    return obj


def coco_caption_records(annotations: str, image_root: str, karpathy: str | None = None,
                         splits: Iterable[str] = ("train", "restval")) -> Iterator[Item]:
    """COCO captions (`captions_*.json`: `images` [{id, file_name}], `annotations` [{image_id, caption}]).

    With `karpathy` (a `dataset_coco.json`: `images` [{cocoid, split, filename, filepath?}]) only images whose
    split is in `splits` are kept, found at `image_root/filepath/filename` or `image_root/file_name`.
    `where` is ``annotations:image <id>``.
    """
    ann = _load_json_object(annotations, ("images", "annotations"))
    captions: dict[Any, list[str]] = collections.defaultdict(list)
    for a in ann["annotations"]:
        if isinstance(a, dict) and isinstance(a.get("caption"), str) and a["caption"].strip():
            captions[a.get("image_id")].append(a["caption"].strip())
    wanted: dict[Any, str] | None = None
    if karpathy is not None:
        kp = _load_json_object(karpathy, ("images",))
        split_set = set(splits)
        wanted = {
            im.get("cocoid"): os.path.join(im.get("filepath", ""), im.get("filename", ""))
            for im in kp["images"] if isinstance(im, dict) and im.get("split") in split_set
        }
    for im in ann["images"]:
        image_id = im.get("id") if isinstance(im, dict) else None
        where = f"{annotations}:image {image_id}"
        if image_id is None or not isinstance(im.get("file_name"), str):
            yield where, Skip(r_missing("id/file_name"))
            continue
        if wanted is not None and image_id not in wanted:
            continue  # another split
        if not captions.get(image_id):
            yield where, Skip(R_NO_CAPTION)
            continue
        path = os.path.join(image_root, im["file_name"])
        if wanted is not None and wanted[image_id].strip(os.sep) and not os.path.exists(path):
            path = os.path.join(image_root, wanted[image_id])
        yield where, {"captions": captions[image_id], "_image": path}


def tfds_coco_caption_records(data_dir: str, split: str = "train") -> Iterator[Item]:
    """The TFDS catalog `coco_captions`, prepared by the user as array_record under `data_dir` (no download).

    Reads `data_dir/coco_captions/<config>/<version>` (the newest) with images kept encoded.
    """
    import tensorflow_datasets as tfds

    base = os.path.join(data_dir, "coco_captions")
    found = sorted(root for root, _, files in os.walk(base) if "dataset_info.json" in files)
    if not found:
        raise SourceError(f"{base}: no prepared coco_captions dataset (run `tfds build coco_captions "
                          f"--file_format=array_record --data_dir {data_dir}` first)")
    builder = tfds.builder_from_directory(found[-1])
    if "array_record" not in str(builder.info.file_format).lower():
        raise SourceError(f"{found[-1]}: prepared as {builder.info.file_format}; reading it needs TensorFlow; "
                          "prepare it with --file_format=array_record")
    try:
        source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    except (KeyError, ValueError) as e:
        raise SourceError(f"{found[-1]}: no split {split!r}: {e}") from None
    for i in range(len(source)):
        ex = source[i]
        where = f"{found[-1]}[{split}]:{i}"
        texts = ex["captions"]["text"]
        caps = [t.decode() if isinstance(t, bytes) else str(t) for t in texts]
        caps = [c.strip() for c in caps if c.strip()]
        yield where, ({"captions": caps, "_image": bytes(ex["image"])} if caps else Skip(R_NO_CAPTION))
