"""The trainer's input: an iterator of `{stream: batch}` (numpy, this process's rows) with `get_state`/`set_state`.

`config.data.source`:
  synthetic  `lav2_jax.train.synthetic` (deterministic, in memory; each process takes its rows of the global batch)
  pipeline   `lav2_jax.data.pipeline` grain pipelines over datasets from `lav2 data build`: `config.data.<stream>`
             gives `path` and `max_len`; each process reads its 1/process_count shard with a per-process batch of
             global_batch / process_count. Joint recipe: one `JointPipeline` (caption + instruction). The
             model's system (`lav2_jax.core.registry.of(adapter)`) adds its fields (`System.pipeline_options`):
             LLaVA `data.template` and `data.image_aspect` (square | pad), the image token count and id from the
             model's splice config; mPLUG-Owl `data.augment` (the release's training crop + flip, default on) and
             `data.max_images` (images per sample, default 1); `data.group_by_modality_length` (LLaVA-1.5 stage
             2) makes every global batch all-image or all-text (`lav2_jax.data.modality_groups`).
"""

from __future__ import annotations

from typing import Any

import jax

from lav2_jax.checkpoint.layout import read_config
from lav2_jax.core import registry
from lav2_jax.data.pipeline import JointPipeline, Pipeline, PipelineConfig
from lav2_jax.data.tokenizer import TokenizerError, check_vocab, load_tokenizer
from lav2_jax.train.mesh import local_rows
from lav2_jax.train.synthetic import MultiStream, SyntheticStream


class Keyed:
    """Wraps a single-stream iterator so that it yields `{key: batch}` (pretrain / finetune / full recipes)."""

    def __init__(self, key: str, it):
        self.key, self.it = key, it

    def __iter__(self):
        return self

    def __next__(self):
        return {self.key: next(self.it)}

    def get_state(self) -> Any:
        return self.it.get_state()

    def set_state(self, state: Any) -> None:
        self.it.set_state(state)


def synthetic(config, setup) -> MultiStream:
    d = config.data
    vision = setup.model.vision
    streams = []
    for s in setup.streams:
        splice = setup.model.adapter.splice
        visual = setup.model.adapter.has_visual or splice is not None
        with_images = s.batch_key in ("caption", "train") and visual and vision is not None
        gb = setup.global_batch[s.batch_key]
        spliced = dict(image_tokens=splice.n_tokens, image_token_id=splice.image_token_id) if splice else {}
        streams.append(SyntheticStream(
            s.batch_key, gb, int(d.seq_len), setup.model.config.vocab_size,
            image_size=vision.image_size if with_images else 0, seed=int(d.seed),
            num_examples=int(d.num_examples) or None, answer_vocab=int(d.answer_vocab),
            rows=local_rows(setup.mesh, gb), **(spliced if with_images else {})))
    return MultiStream(streams)


def pipeline(config, setup):
    d = config.data
    tok = load_tokenizer(d.tokenizer)
    vision = setup.model.vision
    order = channel_order(config)

    def make(key: str) -> Pipeline:
        sc = d[key]
        gb = setup.global_batch[key]
        if gb % jax.process_count():
            raise ValueError(f"global batch {gb} of stream {key!r} does not split over {jax.process_count()} hosts")
        pc = PipelineConfig(batch_size=gb // jax.process_count(), max_len=int(sc.max_len), seed=int(d.seed),
                            image_size=vision.image_size if vision is not None else 224,
                            channel_order=order, worker_count=int(d.get("worker_count", 0)),
                            packing=bool(d.get("packing", False)), max_segments=int(sc.get("max_segments", 8)),
                            group_by_modality_length=bool(d.get("group_by_modality_length", False)),
                            **system_options(d, setup.model.adapter))
        return Pipeline(sc.path, tok, pc)

    keys = [s.batch_key for s in setup.streams]
    if keys == ["caption", "instruction"]:
        return iter(JointPipeline(make("caption"), make("instruction")))
    if len(keys) != 1:
        raise ValueError(f"no pipeline for streams {keys}")
    return Keyed(keys[0], iter(make(keys[0])))


def check_tokenizer(config, model) -> None:
    """`lav2_jax.data.tokenizer.TokenizerError` when `config.data.tokenizer` is missing or unreadable, and its
    subclass `VocabularyError` when pipeline data (`config.data.tokenizer`) would feed `model` ids
    outside its vocabulary; the message names the tokenizer and where the model's vocab_size comes from
    (`config.model.preset`, or the base checkpoint's config.json). Synthetic data draws ids inside the vocabulary."""
    if config.data.source != "pipeline":
        return
    d, mc, splice = config.data, config.model, model.adapter.splice
    where = (f"model.vocab_size in {mc.base_checkpoint}/config.json, config.model.base_checkpoint"
             if mc.get("base_checkpoint") else f"config.model.preset={mc.preset!r}")
    try:
        tok = load_tokenizer(d.tokenizer)
    except TokenizerError as e:
        raise TokenizerError(f"config.data.tokenizer: {e}") from None
    check_vocab(tok, model.config.vocab_size, f"config.data.tokenizer={d.tokenizer}", where,
                splice.image_token_id if splice is not None else None)


def system_options(d, adapter) -> dict:
    """PipelineConfig fields of the model's system: `system` and what the system's `pipeline_options` reads from
    `config.data` (`d`) and the adapter (LLaVA: its template, image token count and id, no augmentation;
    mPLUG-Owl: `data.augment`, default on = the release's crop + flip, and `data.max_images`)."""
    system = registry.of(adapter)
    return dict(system=system.name, **system.pipeline_options(d, adapter))


def channel_order(config) -> str:
    """The pixel channel order of a run, its one source of truth: `data.channel_order` when set, else the base
    checkpoint's (converted release weights want BGR), else rgb (a random base)."""
    return config.data.get("channel_order", "") or _base_channel_order(config.model) or "rgb"


def _base_channel_order(mc) -> str:
    """The base checkpoint's channel order (the released weights want BGR), when training over one."""
    if not mc.get("base_checkpoint"):
        return ""
    return read_config(mc.base_checkpoint).channel_order


def make_data(config, setup):
    source = config.data.source
    if source == "synthetic":
        return synthetic(config, setup)
    if source == "pipeline":
        return pipeline(config, setup)
    raise ValueError(f"config.data.source={source!r}: use 'synthetic' or 'pipeline'")


class DataWorkerError(RuntimeError):
    """A data worker process died (the message names the step, the worker's exit and the checkpoint to resume)."""


def next_batch(data, step: int, resume_hint: str) -> dict:
    """`next(data)` for step `step`; a grain worker process that died becomes a `DataWorkerError` (grain itself
    notices within about a second and raises; this names what the user needs to go on)."""
    try:
        return next(data)
    except RuntimeError as e:
        if "Worker process" not in str(e) and "worker" not in type(e).__name__.lower():
            raise
        raise DataWorkerError(f"step {step}: a data worker process died ({str(e).splitlines()[0]}); "
                              f"{resume_hint}") from None
