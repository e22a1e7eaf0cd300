"""grain input pipelines over datasets written by `lav2_jax.data.builder`.

Batch contract (what the trainer and the model consume; numpy arrays):

==============  =================  ==========================================================================
key             dtype [shape]      meaning
==============  =================  ==========================================================================
``tokens``      int32 [B, T]       model inputs: ``BOS + prompt + answer + EOS`` without its last token,
                                   right-padded with pad id 0
``targets``     int32 [B, T]       the same sequence shifted left by one (padding 0)
``loss_mask``   float32 [B, T]     1.0 where the target is an answer token or the final EOS, else 0.0
``images``      float32 [B,H,W,3]  normalised images (`lav2_jax.data.images`); zeros for samples without
                                   one. Present for caption and conversation data, absent for instruction data
``has_image``   bool [B]           whether the sample has an image (all False for instruction data)
==============  =================  ==========================================================================

With `packing=True` several samples share a row, and the batch adds ``segment_ids`` and ``positions`` (per-segment
images for image streams): see `lav2_jax.data.packing`; `steps_per_epoch` then over-counts the batches of an epoch.

``T`` is the smallest of `config.buckets` (default: powers of two from 64 below `max_len`, then `max_len`)
holding the longest sample of the batch, so a run compiles at most ``len(buckets)`` train-step shapes.
Samples are truncated to `max_len`; one that keeps no answer token is dropped and counted
(`PipelineIterator.dropped`, see its docstring for when a drop is counted).

Samples are the system's (`PipelineConfig.system`, a name of `lav2_jax.core.registry`): its `tokenize_record`
turns a record into tokens (its template, `PipelineConfig.template` naming one where the system has several) and
its `record_images` into the image fields, augmented (grain's per-element RNG) when `train` and `augment`.
LLaMA-Adapter V2: the templates of `lav2_jax.core.templates`. Spliced systems (`System.spliced_samples`: LLaVA,
mPLUG-Owl): each image is `image_tokens` placeholder ids in ``tokens`` (so `max_len` and the buckets count them:
the sequence grows by the image's token count), never in the loss; ``has_image`` says whether the row holds
placeholders. Several images per sample (`max_images` > 1, for systems whose `System.max_images` allows it):
``images`` [B, max_images, H, W, 3] and ``has_image`` [B, max_images], the slots of
`lav2_jax.data.images.stack_image_slots`; a sample with more images is dropped and counted.

Order of operations (grain dataset API)::

    source (tfds array_record) → shard → shuffle(seed) → repeat(num_epochs) → random_map(the system's
    tokenise, decode + augment + normalise) → to_iter_dataset(read threads) → drop-and-count
    → batch(pad to bucket) → mp_prefetch(worker processes)

* Sharding: process `shard_index` of `shard_count` (default `jax.process_index()` / `jax.process_count()`)
  takes records ``shard_index, shard_index + count, ...``; shards are cut to equal length, so up to
  ``count - 1`` records are left out of every epoch (`Pipeline.left_out`).
* Shuffle: a permutation of the shard by `seed`, different every epoch (grain reseeds per epoch). With
  `group_by_modality_length` (LLaVA-1.5 stage 2) the order of `lav2_jax.data.modality_groups` replaces shard and
  shuffle: each global batch is all-image or all-text.
* Augmentation and caption choice use grain's per-element RNG, so they too are a function of (seed, position).
* Checkpointing: `PipelineIterator.get_state()` is a JSON-serialisable dict (grain's state plus the drop count);
  `set_state` on a fresh iterator of the same pipeline (same config, including `worker_count`) continues with
  exactly the batches the saved iterator would have produced.
* Joint recipe (docs/design.md §6, paper §4.2): `JointPipeline` advances a caption pipeline and an instruction
  pipeline together, one batch of each per step. Both repeat forever, so the shorter one simply starts its next
  (reshuffled) epoch while the longer continues; a "joint epoch" is `steps_per_epoch` = the longer one's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

from lav2_jax.core import registry
from lav2_jax.data import images, modality_groups, samples
from lav2_jax.data.packing import PackedBatches
from lav2_jax.data.records import open_source
from lav2_jax.data.tokenizer import PAD_ID, Tokenizer

DROPPED_KEY = "_n_dropped"


def default_buckets(max_len: int) -> tuple[int, ...]:
    """Powers of two from 64 below `max_len`, then `max_len` itself (e.g. 512 → (64, 128, 256, 512))."""
    out, b = [], 64
    while b < max_len:
        out.append(b)
        b *= 2
    return (*out, max_len)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Batch size is per process. `train` selects augmentation and a random caption (else center crop, caption 0)."""

    batch_size: int
    max_len: int
    buckets: tuple[int, ...] = ()
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None  # None: repeat forever
    train: bool = True
    image_size: int = 224
    channel_order: str = "rgb"
    worker_count: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 2
    read_buffer: int = 32
    shard_index: int | None = None
    shard_count: int | None = None
    drop_remainder: bool = True
    packing: bool = False  # several samples per row (`lav2_jax.data.packing`)
    max_segments: int = 8  # packing: samples (image slots) per row of an image stream; images per row if spliced
    # The system whose samples these are (`lav2_jax.core.registry`) and its template where it has several (LLaVA's
    # conversation templates, `lav2_jax.systems.llava.conversation`; "" for a system with one format). Spliced
    # systems: the visual tokens one image adds to the sequence (its placeholder ids are part of `max_len`), the
    # placeholder id, `image_aspect` square | pad, and whether training augments images (LLaVA: no).
    system: str = "lav2"
    template: str = ""
    image_tokens: int = 0
    image_token_id: int = 32000
    image_aspect: str = "square"
    augment: bool = True
    # Images one sample may hold (mPLUG-Owl: several `Human: <image>` lines); > 1 gives unpacked batches image slots
    # `images` [B, max_images, H, W, 3] + `has_image` [B, max_images]; a sample with more is dropped and counted.
    max_images: int = 1
    # LLaVA-1.5 stage 2: each global batch (batch_size × shard_count) all-image or all-text, spread over the
    # processes by length (`lav2_jax.data.modality_groups`); replaces the plain shuffle and the shard cut.
    group_by_modality_length: bool = False

    def resolved_buckets(self) -> tuple[int, ...]:
        buckets = tuple(sorted(self.buckets)) if self.buckets else default_buckets(self.max_len)
        if buckets[-1] != self.max_len:
            raise ValueError(f"the largest bucket must equal max_len {self.max_len}, got {buckets}")
        return buckets


class _Encode(grain.transforms.RandomMap):
    """Record → variable-length sample dict (the system's `tokenize_record` and `record_images`), or
    ``{"dropped": True}`` when truncation leaves no answer (or the sample holds more than `max_images` images).

    The per-element RNG draws the caption first (training), then whatever the system's image augmentation draws."""

    def __init__(self, tok: Tokenizer, config: PipelineConfig, with_images: bool):
        self.tok, self.config, self.with_images = tok, config, with_images
        self.system = registry.get(config.system)

    def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        cfg = self.config
        n_captions = len(record["captions"]) if "captions" in record else 1
        pick = int(rng.integers(n_captions)) if cfg.train else 0
        out, n_images = self.system.tokenize_record(self.tok, record, pick, cfg)
        if out is None:
            return {"dropped": True}
        sample: dict[str, Any] = {"tokens": out.tokens, "targets": out.targets, "loss_mask": out.loss_mask,
                                  "has_image": n_images > 0}
        if self.with_images:
            name = f"{record['source'].decode()}: image" if isinstance(record.get("source"), bytes) else None
            augment = rng if cfg.train and cfg.augment else None
            sample.update(self.system.record_images(record, n_images, cfg, augment, name))
        return sample


def check_image_slots(config: PipelineConfig, packed_images: bool) -> None:
    """ValueError unless `config.max_images` fits: >= 1, at most the system's `System.max_images`, and with packing
    of an image stream (`packed_images`) at most a row's image slots (`max_segments`)."""
    limit = registry.get(config.system).max_images
    if config.max_images < 1 or (limit is not None and config.max_images > limit):
        raise ValueError(f"max_images={config.max_images}: system {config.system!r} takes "
                         f"{'at least 1' if limit is None else f'1 to {limit}'} image(s) per sample")
    if packed_images and config.max_segments < config.max_images:
        raise ValueError(f"packing: max_segments {config.max_segments} (images per row) < max_images "
                         f"{config.max_images} (images per sample)")


class _DropCountingIterator(grain.DatasetIterator):
    """Skips ``{"dropped": True}`` markers; the next kept sample carries how many were skipped before it.

    More than `limit` (one epoch of records) consecutive drops means no sample fits: an error, not a hang.
    """

    def __init__(self, parent, limit: int):
        super().__init__(parent)
        self._limit = limit

    def __next__(self):
        skipped = 0
        while True:
            element = next(self._parent)
            if element.get("dropped"):
                skipped += 1
                if skipped > self._limit:
                    raise ValueError(f"{skipped} consecutive samples dropped: no sample keeps an answer token "
                                     "within max_len; raise max_len")
                continue
            element[DROPPED_KEY] = skipped
            return element

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


class _DropCounting(grain.IterDataset):
    def __init__(self, parent, limit: int):
        super().__init__(parent)
        self._limit = limit

    def __iter__(self):
        return _DropCountingIterator(self._parent.__iter__(), self._limit)


class _PadToBucket:
    """Batch function: pad every sample to the smallest bucket ≥ the longest one, stack (see the contract)."""

    def __init__(self, buckets: Sequence[int], with_images: bool, max_images: int = 1):
        self.buckets, self.with_images, self.max_images = tuple(buckets), with_images, max_images

    def __call__(self, elements: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
        longest = max(len(e["tokens"]) for e in elements)
        t = next(b for b in self.buckets if b >= longest)
        batch = {
            "tokens": np.full((len(elements), t), PAD_ID, np.int32),
            "targets": np.full((len(elements), t), PAD_ID, np.int32),
            "loss_mask": np.zeros((len(elements), t), np.float32),
        }
        for i, e in enumerate(elements):
            n = len(e["tokens"])
            batch["tokens"][i, :n] = e["tokens"]
            batch["targets"][i, :n] = e["targets"]
            batch["loss_mask"][i, :n] = e["loss_mask"]
        if self.with_images and self.max_images > 1:  # several images per sample: image slots
            batch["images"], batch["has_image"] = images.stack_image_slots([e["images"] for e in elements],
                                                                           self.max_images)
        else:
            if self.with_images:
                batch["images"] = np.stack([e["image"] for e in elements]).astype(np.float32, copy=False)
            batch["has_image"] = np.asarray([e["has_image"] for e in elements], np.bool_)
        batch[DROPPED_KEY] = np.int64(sum(e[DROPPED_KEY] for e in elements))
        return batch


class Pipeline:
    """A grain pipeline over one dataset (`source`: a folder from `lav2 data build`, or a random-access source)."""

    def __init__(self, source: Any, tokenizer: Tokenizer, config: PipelineConfig, split: str = "train"):
        self.config = config
        system = registry.get(config.system)
        system.check_pipeline(config)
        self.source = open_source(source, split) if isinstance(source, str) else source
        if len(self.source) == 0:
            raise ValueError("the dataset is empty")
        self.kind = samples.kind_of(self.source[0])
        self.with_images = self.kind in ("caption", "conversation")
        index, count = config.shard_index, config.shard_count
        if index is None or count is None:
            import jax

            index, count = jax.process_index(), jax.process_count()
        if not 0 <= index < count:
            raise ValueError(f"shard_index {index} outside 0..{count - 1}")
        self.shard_index, self.shard_count = index, count
        per_shard = len(self.source) // count
        if per_shard == 0:
            raise ValueError(f"{len(self.source)} records cannot feed {count} processes")
        self.left_out = len(self.source) - per_shard * count
        if config.group_by_modality_length:
            if not config.shuffle:
                raise ValueError("group_by_modality_length draws its own random order: it needs shuffle=True")
            has_image, lengths = modality_groups.modality_lengths(
                self.source, source if isinstance(source, str) else None, split)
            ds = modality_groups.ModalityGroupedDataset(grain.MapDataset.source(self.source), has_image, lengths,
                                                        config.batch_size, index, count, config.seed)
            per_shard, self.left_out = len(ds), ds.left_out
        else:
            ds = grain.MapDataset.source(self.source)[index::count][:per_shard]
            if config.shuffle:
                ds = ds.shuffle(seed=config.seed)
        if config.num_epochs != 1:
            ds = ds.repeat(config.num_epochs)
        self._records = per_shard
        ds = ds.random_map(_Encode(tokenizer, config, self.with_images), seed=config.seed)
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                                  prefetch_buffer_size=config.read_buffer))
        check_image_slots(config, config.packing and self.with_images)
        if config.packing:
            it = PackedBatches(_DropCounting(it, per_shard), config.batch_size, config.max_len,
                               config.resolved_buckets(), self.with_images, config.max_segments,
                               config.drop_remainder, spliced=system.spliced_samples)
        else:
            it = _DropCounting(it, per_shard).batch(config.batch_size, drop_remainder=config.drop_remainder,
                                                    batch_fn=_PadToBucket(config.resolved_buckets(), self.with_images,
                                                                          config.max_images))
        if config.worker_count > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain's worker start reads an absl flag; outside an absl app
                flags.FLAGS.mark_as_parsed()  # (pytest, scripts) the defaults must be marked parsed first
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count,
                                                             per_worker_buffer_size=config.worker_buffer_size))
        self._dataset = it

    @property
    def records_per_epoch(self) -> int:
        """Records of this process's shard in one epoch (before run-time drops)."""
        return self._records

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch of this shard, assuming no run-time drops."""
        return self._records // self.config.batch_size

    def __iter__(self) -> "PipelineIterator":
        finite = self.config.num_epochs is not None and not self.config.drop_remainder
        return PipelineIterator(self._dataset.__iter__(), self._records * self.config.num_epochs if finite else None)


class PipelineIterator:
    """Iterator of contract batches with a checkpointable state (`get_state` / `set_state`).

    `dropped` counts samples dropped by truncation (and mPLUG-Owl samples with more than `max_images` images).
    A drop is counted when the next kept sample is emitted;
    at the end of a finite pipeline without `drop_remainder` the count is made exact (records − rows emitted).
    With `drop_remainder=True`, drops after the last emitted sample of a finite pipeline are not counted.
    """

    def __init__(self, it, total: int | None = None):
        self._it, self._total, self.dropped, self.rows = it, total, 0, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            batch = dict(next(self._it))
        except StopIteration:
            if self._total is not None:
                self.dropped = self._total - self.rows
            raise
        self.dropped += int(batch.pop(DROPPED_KEY))
        self.rows += int(batch.pop("_n_samples", len(batch["tokens"])))  # packed batches count their samples
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._it.get_state(), "dropped": self.dropped, "rows": self.rows}

    def set_state(self, state: dict[str, Any]) -> None:
        self._it.set_state(state["grain"])
        self.dropped, self.rows = int(state["dropped"]), int(state["rows"])

    def close(self) -> None:
        self._it.close()


class JointPipeline:
    """Caption and instruction pipelines advanced together (see the module docstring, "Joint recipe")."""

    def __init__(self, caption: Pipeline, instruction: Pipeline):
        for name, p in (("caption", caption), ("instruction", instruction)):
            if p.config.num_epochs is not None:
                raise ValueError(f"the joint recipe needs the {name} pipeline to repeat (num_epochs=None)")
        self.caption, self.instruction = caption, instruction

    @property
    def steps_per_epoch(self) -> int:
        return max(self.caption.steps_per_epoch, self.instruction.steps_per_epoch)

    def __iter__(self) -> "JointIterator":
        return JointIterator(iter(self.caption), iter(self.instruction))


class JointIterator:
    """Yields ``{"caption": batch, "instruction": batch}``; state holds both iterators' states."""

    def __init__(self, caption: PipelineIterator, instruction: PipelineIterator):
        self.caption, self.instruction = caption, instruction

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, dict[str, np.ndarray]]:
        return {"caption": next(self.caption), "instruction": next(self.instruction)}

    def get_state(self) -> dict[str, Any]:
        return {"caption": self.caption.get_state(), "instruction": self.instruction.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.caption.set_state(state["caption"])
        self.instruction.set_state(state["instruction"])

    def close(self) -> None:
        self.caption.close()
        self.instruction.close()
