"""Write a parsed source once into a TFDS dataset in `array_record` format, readable without TensorFlow.

TFDS approach (verified with tensorflow-datasets 4.9.10, no TensorFlow installed): a
`tfds.core.GeneratorBasedBuilder` subclass per kind (registration skipped) whose `_info` builds a
`tfds.core.DatasetInfo` directly, prepared with ``file_format="array_record"`` into a temporary `data_dir`;
the finished `<name>/<version>` folder is then renamed to `out`. Read it back with
``tfds.builder_from_directory(out).as_data_source(split)`` (what `lav2_jax.data.pipeline` does).
Only plain `Text`/`Tensor`/`Scalar` features are used (their encoding is pure numpy): images are stored as the
original encoded file bytes (``Tensor(shape=(), dtype=object)``) and decoded in grain workers.

Work is parallel (a spawn-context process pool): source files are parsed one per task, then every record is
finalised per task (image read and fully decoded to verify it, optional length check with a tokenizer).
Bad records are skipped with a counted reason and the summary ``N kept, M skipped: reason → count`` is printed;
with ``strict=True`` the first bad record raises `StrictError` naming its file and line. A `build_report.json`
(counts and up to five locations per reason) is written beside the records.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import multiprocessing
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from lav2_jax.core import registry
from lav2_jax.data import images, samples, sources
from lav2_jax.data.modality_groups import write_lengths
from lav2_jax.data.samples import KINDS
from lav2_jax.data.tokenizer import load_tokenizer

REPORT_FILE = "build_report.json"


class StrictError(ValueError):
    """`--strict`: the first bad record, named by file and line."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One source file (or TFDS catalog) and how to parse it: `format` names a parser in `PARSERS`, or a system's
    own source format (`System.data_kinds`, e.g. mPLUG-Owl's `owl`)."""

    format: str
    path: str
    options: tuple[tuple[str, Any], ...] = ()


PARSERS: dict[str, Callable[..., Iterator[sources.Item]]] = {
    "instruction": sources.instruction_records,
    "conversation": sources.conversation_records,
    "tsv": sources.tsv_caption_records,
    "coco": sources.coco_caption_records,
    "tfds_coco": sources.tfds_coco_caption_records,
}


def system_kinds() -> dict:
    """Every system's own source formats (`System.data_kinds`): {kind: `lav2_jax.core.system.DataKind`}."""
    return {k: v for system in registry.all_systems() for k, v in system.data_kinds.items()}


def parser(fmt: str) -> Callable[..., Iterator[sources.Item]]:
    """The parser of source format `fmt`: a generic one of `PARSERS`, else the system kind of that name."""
    known = {**PARSERS, **{k: kind.parse for k, kind in system_kinds().items()}}
    if fmt not in known:
        raise ValueError(f"unknown source format {fmt!r}; known: {', '.join(known)}")
    return known[fmt]


@dataclasses.dataclass
class BuildReport:
    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    out: str = ""

    def add_skip(self, where: str, skip: sources.Skip) -> None:
        self.skipped[skip.reason] += 1
        shown = self.examples.setdefault(skip.reason, [])
        if len(shown) < 5:
            shown.append(f"{where}" + (f" ({skip.detail})" if skip.detail else ""))

    def summary(self) -> str:
        """``N kept, M skipped: reason → count, ...`` (reasons by decreasing count)."""
        head = f"{self.kept} kept, {sum(self.skipped.values())} skipped"
        if not self.skipped:
            return head
        return head + ": " + ", ".join(f"{r} → {c}" for r, c in self.skipped.most_common())

    def to_json(self) -> dict:
        return {"kept": self.kept, "skipped": dict(self.skipped), "examples": self.examples}


def features(kind: str):
    """The TFDS `FeaturesDict` of a kind (see `lav2_jax.data.sources` for the canonical records)."""
    import tensorflow_datasets as tfds

    text, strings = tfds.features.Text(), tfds.features.Tensor(shape=(None,), dtype=np.str_)
    encoded = tfds.features.Tensor(shape=(), dtype=np.object_)
    spec: dict[str, Any] = {"source": tfds.features.Text()}
    if kind == "instruction":
        spec.update(instruction=text, input=text, output=text)
    elif kind == "conversation":
        spec.update(roles=strings, values=strings, system=text, image=encoded,
                    has_image=tfds.features.Scalar(dtype=np.bool_), image_turn=tfds.features.Scalar(dtype=np.int32),
                    # mPLUG-Owl multi-image samples: images 2.. (encoded) and the turns they precede; else empty
                    more_images=tfds.features.Tensor(shape=(None,), dtype=np.object_),
                    more_image_turns=tfds.features.Tensor(shape=(None,), dtype=np.int32))
    elif kind == "caption":
        spec.update(captions=strings, image=encoded)
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return tfds.features.FeaturesDict(spec)


# ---- worker side -------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_path: str | None, max_len: int | None) -> None:
    _WORKER.clear()
    if tokenizer_path is not None:
        _WORKER["tok"] = load_tokenizer(tokenizer_path)
    _WORKER["max_len"] = max_len


def _parse_source(src: Source) -> list[sources.Item]:
    try:
        return list(parser(src.format)(src.path, **dict(src.options)))
    except sources.SourceError as e:
        return [(src.path, sources.Skip("__fatal__", str(e)))]


def load_image(ref: str | bytes, where: str) -> bytes | sources.Skip:
    """Read (path) or take (bytes) an encoded image and verify it decodes fully; a `Skip` when it does not."""
    if isinstance(ref, str):
        if not os.path.isfile(ref):
            return sources.Skip(sources.R_MISSING_IMAGE, ref)
        try:
            with open(ref, "rb") as f:
                data = f.read()
        except OSError as e:
            return sources.Skip(sources.R_BAD_IMAGE, f"{ref}: {e.strerror or e}")
    else:
        data = ref
    try:
        images.decode(data, name=ref if isinstance(ref, str) else where)
    except images.ImageError as e:
        return sources.Skip(sources.R_BAD_IMAGE, str(e))
    return data


def _finalize(item: tuple[str, str, dict | sources.Skip]) -> tuple[str, dict | sources.Skip]:
    kind, where, rec = item
    if isinstance(rec, sources.Skip):
        return where, rec
    rec = dict(rec)
    if "tok" in _WORKER and samples.tokenize(_WORKER["tok"], samples.record_segments(rec),
                                              _WORKER["max_len"]) is None:
        return where, sources.Skip(sources.R_TOO_LONG, f"max_len {_WORKER['max_len']}")
    ref = rec.pop("_image", None)
    if kind == "caption" or ref is not None:
        if ref is None:
            return where, sources.Skip(sources.R_MISSING_IMAGE)
        data = load_image(ref, where)
        if isinstance(data, sources.Skip):
            return where, data
        rec["image"] = data
    more = []
    for ref in rec.pop("_more_images", None) or ():
        data = load_image(ref, where)
        if isinstance(data, sources.Skip):
            return where, data
        more.append(data)
    if kind == "conversation":
        rec["has_image"] = "image" in rec
        rec.setdefault("image", b"")
        rec["more_images"] = np.array(more, dtype=object)
        rec["more_image_turns"] = np.asarray(rec.get("more_image_turns", ()), np.int32).reshape(-1)
    rec["source"] = where
    return where, rec


# ---- driver ------------------------------------------------------------------------------------------------

def _tfds_builder_class(kind: str):
    import tensorflow_datasets as tfds

    class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = f"lav2_{kind}"
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "lav2 data build"}
        # No checksums file to find; tfds' default lookup imports the absent `importlib_resources` package.
        code_path = None

        def __init__(self, examples: Iterator[tuple[str, dict]], split: str, **kwargs):
            self._examples, self._split = examples, split
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=features(kind),
                                         description=f"lav2_jax {kind} data (lav2 data build)")

        def _split_generators(self, dl_manager):
            return {self._split: self._generate_examples()}

        def _generate_examples(self):
            yield from self._examples

    return _Builder


def build(kind: str, srcs: Sequence[Source], out: str, *, strict: bool = False, workers: int = 0,
          tokenizer: str | None = None, max_len: int | None = None, split: str = "train",
          overwrite: bool = False, progress: bool = True) -> BuildReport:
    """Parse `srcs`, finalise records (in `workers` processes; 0 = in this process) and write `out`.

    `tokenizer` + `max_len` also drop samples that would keep no answer token (`samples.tokenize`).
    Raises `StrictError` (strict mode), `sources.SourceError` (unusable file) or `FileExistsError`.
    """
    import tensorflow_datasets as tfds
    from tqdm.auto import tqdm

    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    if (tokenizer is None) != (max_len is None):
        raise ValueError("give both tokenizer and max_len to drop over-long samples, or neither")
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (use overwrite)")
    srcs = list(dict.fromkeys(srcs))
    report = BuildReport(out=out)
    tfds.disable_progress_bar()
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    pool = None
    try:
        if workers:
            pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (tokenizer, max_len))
        else:
            _init_worker(tokenizer, max_len)
        imap = pool.imap if pool is not None else map
        # Stage 1 (files in parallel) completes before stage 2 feeds the same pool: nesting the two imaps would
        # deadlock the pool's single task-feeding thread. Parsed records are text and paths, images come later.
        parsed = list(tqdm(imap(_parse_source, srcs), total=len(srcs), desc="files", disable=not progress))
        for per_file in parsed:
            for where, rec in per_file:
                if isinstance(rec, sources.Skip) and rec.reason == "__fatal__":
                    raise sources.SourceError(rec.detail)

        def items() -> Iterator[tuple[str, str, Any]]:
            for per_file in parsed:
                for where, rec in per_file:
                    yield kind, where, rec

        def examples() -> Iterator[tuple[str, dict]]:
            finalized = imap(_finalize, items(), 16) if pool is not None else map(_finalize, items())
            for where, rec in tqdm(finalized, desc="records", unit=" rec", disable=not progress):
                if isinstance(rec, sources.Skip):
                    if strict:
                        detail = f" ({rec.detail})" if rec.detail else ""
                        raise StrictError(f"{where}: {rec.reason}{detail}")
                    report.add_skip(where, rec)
                    continue
                report.kept += 1
                yield report.kept, rec  # a counter as key: unique even when `where` repeats (same file twice)

        builder = _tfds_builder_class(kind)(examples(), split, data_dir=tmp, file_format="array_record")
        builder.download_and_prepare()
        if report.kept == 0:
            raise ValueError(f"no usable record in {[s.path for s in srcs]}: {report.summary()}")
        written = os.path.join(tmp, builder.name, str(builder.version))
        with open(os.path.join(written, REPORT_FILE), "w", encoding="utf-8") as f:
            json.dump(report.to_json(), f, indent=1)
        if kind == "conversation":  # for `group_by_modality_length` (LLaVA-1.5 stage 2)
            write_lengths(written, split)
        if os.path.exists(out):
            shutil.rmtree(out) if os.path.isdir(out) else os.remove(out)
        os.replace(written, out)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        shutil.rmtree(tmp, ignore_errors=True)
    return report
