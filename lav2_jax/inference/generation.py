"""Batched generation with a KV cache: `generate(bundle, prompts, ...)` and token streaming (docs/design.md §3.3.3).

`bundle` is what `lav2_jax.load_pretrained` returns (anything with `.model`, `.params`, `.tokenizer`). Prompts are
final strings (apply `lav2_jax.core.templates.alpaca(...)` etc. first); each is encoded with BOS and no EOS.

Host side (this module): encode, bucket shapes, pad, place on devices, decode the result. Traced side:
`lav2_jax.inference.engine` (prefill + `lax.while_loop`, one jitted call per shape bucket).

Buckets (few compilations): prompt length → a power of two >= 16 (capped at the context), batch → 1, 2, 4, 8, …
(a multiple of the data-parallel size under a mesh), new-token buffer → a power of two >= 16; the exact
`max_new_tokens` is a per-row budget (a runtime value), also capped so no row runs past the context
(`len(prompt) + new <= max_seq_len`, the release's `total_len` rule). Padding rows start done; padded prompt
slots are overwritten before any row can attend to them, so padding never reaches an output.

Sharding: under a mesh (passed as `mesh=`, or found on the parameters when `load_pretrained(..., mesh=)` placed
them) the parameters are put on their training shardings (`lav2_jax.core.sharding.logical_shardings`) and the batch is
split over the mesh axes of the logical `act_batch` axis (data × fsdp); jit propagates the rest.

Streaming (`stream`): a Python loop over one jitted decode step, one host round trip per token — chosen over a host
callback inside the while loop because the caller can stop at any point (chat stops at the text "###"), Ctrl-C
works between steps, and the tokens equal `generate`'s for the same seed (same prefill and step functions).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Iterator, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from lav2_jax.core.sharding import LOGICAL_RULES, logical_shardings
from lav2_jax.data.images import stack_image_slots
from lav2_jax.inference import engine
from lav2_jax.model.factory import abstract_params, unscanned, unstack_layers
from lav2_jax.model.splice import check_placeholders


class Generated(NamedTuple):
    """texts[i]: decoded continuation of prompt i; token_ids[i]: its ids (prompt excluded, cut at the first EOS)."""

    texts: list[str]
    token_ids: list[list[int]]


class PromptError(ValueError):
    """A prompt the model cannot take (the CLI reports it as a user error)."""


class PromptTooLong(PromptError):
    """A prompt leaves no room in the model's context for even one new token."""


class ImagePlaceholderMismatch(PromptError):
    """A spliced system's prompt does not hold one `<image>` per given image."""


class ImageNotSupported(ValueError):
    """An image was given to a model without a vision tower."""


@dataclasses.dataclass
class _Batch:
    """Host-prepared inputs of one call (numpy; B = batch bucket, n = real rows)."""

    n: int
    tokens: np.ndarray  # [B, T] int32
    lengths: np.ndarray  # [B] int32
    budgets: np.ndarray  # [B] int32
    images: Optional[np.ndarray]  # [B, H, W, 3] float32 (several per prompt: [B, N, H, W, 3])
    has_image: Optional[np.ndarray]  # [B] bool ([B, N])
    new_len: int
    cache_len: int


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """BOS + prompt, no EOS (docs/design.md §3.3.3)."""
    return [list(tokenizer.encode(p, bos=True, eos=False)) for p in prompts]


def check_context(ids: Sequence[Sequence[int]], max_seq_len: int) -> None:
    """Raises PromptTooLong when a prompt (BOS included) leaves no room for a new token."""
    for i, row in enumerate(ids):
        if len(row) >= max_seq_len:
            raise PromptTooLong(f"prompt {i} is {len(row)} tokens long (BOS included); the model's context is "
                                f"{max_seq_len} tokens, which leaves no room to generate")


def _stack_images(model, images, n: int, B: int):
    """None | array [n, H, W, 3] | list of [H, W, 3] arrays or None → (images [B, H, W, 3], has_image [B]).

    Several images per prompt (spliced systems: one `<image>` each, in order): a row may be a stack [k, H, W, 3]
    (or the array [n, k, H, W, 3]); then (images [B, N, H, W, 3], has_image [B, N]) with N = the most images of a
    row, row i's images in slots 0..k-1 and the other slots zero (no placeholder refers to them)."""
    if images is None or (isinstance(images, (list, tuple)) and all(im is None for im in images)):
        return None, None
    if model.vision is None:
        raise ImageNotSupported("an image was given, but this model has no vision tower (it is text-only)")
    size = model.vision.image_size
    rows = list(images) if isinstance(images, (list, tuple)) else list(np.asarray(images, np.float32))
    if len(rows) != n:
        raise ValueError(f"{len(rows)} images for {n} prompts")
    if any(im is not None and np.ndim(im) == 4 for im in rows):
        return _stack_image_slots(model, rows, B, size)
    out = np.zeros((B, size, size, 3), np.float32)
    has = np.zeros((B,), bool)
    for i, im in enumerate(rows):
        if im is None:
            continue
        im = np.asarray(im, np.float32)
        if im.shape != (size, size, 3):
            raise ValueError(f"image {i} has shape {im.shape}; this model takes preprocessed [{size}, {size}, 3] "
                             "images (lav2_jax.data.images.preprocess)")
        out[i], has[i] = im, True
    return out, has


def _stack_image_slots(model, rows, B: int, size: int):
    """Rows of None / [H, W, 3] / [k, H, W, 3] → (images [B, N, H, W, 3], has_image [B, N]) (`_stack_images`)."""
    if model.adapter.splice is None:
        raise ImageNotSupported("several images per prompt need a spliced system (mPLUG-Owl, LLaVA); this model "
                                "takes one image per prompt")
    stacks = [np.zeros((0, size, size, 3), np.float32) if im is None else np.asarray(im, np.float32) for im in rows]
    stacks = [x[None] if x.ndim == 3 else x for x in stacks]
    for i, x in enumerate(stacks):
        if x.shape[1:] != (size, size, 3):
            raise ValueError(f"image {i} has shape {x.shape[1:]}; this model takes preprocessed [{size}, {size}, 3] "
                             "images (lav2_jax.data.images.preprocess)")
    padding_rows = [np.zeros((0, size, size, 3), np.float32)] * (B - len(stacks))
    return stack_image_slots(stacks + padding_rows, max(len(x) for x in stacks))


def prepare(model, tokenizer, prompts: Sequence[str], images=None, max_new_tokens: int = 256,
            batch_multiple: int = 1) -> _Batch:
    """Encodes, validates and pads one call's inputs to its shape bucket."""
    c = model.config
    ids = encode_prompts(tokenizer, prompts)
    check_context(ids, c.max_seq_len)
    n = len(ids)
    B = engine.batch_bucket(n, batch_multiple)
    lengths = np.ones((B,), np.int32)
    lengths[:n] = [len(r) for r in ids]
    T = engine.bucket(int(lengths.max()), cap=c.max_seq_len)
    tokens = np.full((B, T), tokenizer.pad_id, np.int32)
    tokens[n:, 0] = tokenizer.bos_id
    for i, row in enumerate(ids):
        tokens[i, :len(row)] = row
    budgets = np.zeros((B,), np.int32)
    budgets[:n] = np.minimum(max_new_tokens, c.max_seq_len - lengths[:n])
    new_len = engine.bucket(max_new_tokens, cap=c.max_seq_len)
    cache_len = min(c.max_seq_len, T + new_len)
    imgs, has = _stack_images(model, images, n, B)
    splice = model.adapter.splice
    if splice is not None:  # LLaVA / mPLUG-Owl: one `<image>` (n_tokens placeholder ids) per given image
        try:
            check_placeholders(tokens[:n], splice.image_token_id, splice.n_tokens,
                               0 if has is None else has[:n] if has.ndim == 1 else has[:n].sum(axis=1))
        except ValueError as e:
            raise ImagePlaceholderMismatch(str(e)) from None
    return _Batch(n, tokens, lengths, budgets, imgs, has, new_len, cache_len)


@functools.lru_cache(maxsize=16)
def _param_shardings(model, mesh):
    return logical_shardings(abstract_params(model, boxed=True), mesh)


def _batch_spec():
    return PartitionSpec(*nn.logical_to_mesh_axes(("act_batch",), LOGICAL_RULES))


def find_mesh(params):
    """The mesh the parameters live on (load_pretrained(..., mesh=)), or None on a single device."""
    leaf = jax.tree_util.tree_leaves(params)[0]
    sharding = getattr(leaf, "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    return mesh if mesh is not None and getattr(mesh, "size", 1) > 1 else None


def _data_size(mesh) -> int:
    axes = _batch_spec()[0]
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return int(np.prod([mesh.shape[a] for a in axes])) if mesh is not None else 1


def place(model, params, batch: _Batch, mesh):
    """(params, device inputs dict): params on their training shardings and the batch split over data, or as is."""
    arrays = {"tokens": batch.tokens, "lengths": batch.lengths, "budgets": batch.budgets,
              "images": batch.images, "has_image": batch.has_image}
    if mesh is None:
        return params, {k: None if v is None else jnp.asarray(v) for k, v in arrays.items()}
    params = jax.device_put(params, _param_shardings(model, mesh))
    axes = _batch_spec()[0]

    def put(v):
        return jax.device_put(v, NamedSharding(mesh, PartitionSpec(axes, *(None,) * (v.ndim - 1))))

    return params, {k: None if v is None else put(v) for k, v in arrays.items()}


def _parts(bundle):
    return bundle.model, bundle.params, bundle.tokenizer


def _param_bytes(params) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))


def decodes_unstacked(mesh=None) -> bool:
    """Whether decoding runs over unstacked layers: on the CPU backend without a mesh (see `decode_view`)."""
    return mesh is None and jax.default_backend() == "cpu"


def decode_view(bundle, model, params, mesh):
    """The model and parameters decoding runs on.

    Single-device CPU runs decode over the layers *unstacked* (`ModelConfig.scan_layers=False`): XLA:CPU runs a
    matmul whose weight is a per-layer slice of the stacked `[L, ...]` array at about half the memory bandwidth, and
    batch-1 decoding is bandwidth-bound (`benchmarks/scan_matvec.py`). The unstacked copy is made once per bundle,
    and only while a second copy of the weights takes under a quarter of physical memory; otherwise, on
    accelerators and under a mesh the scanned layout is used as loaded.
    """
    if not decodes_unstacked(mesh) or not model.config.scan_layers:
        return model, params
    cached = getattr(bundle, "_cpu_decode_view", None)
    if cached is not None and cached[0] is params:
        return cached[1], cached[2]
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 0
    if _param_bytes(params) * 4 > ram:
        return model, params
    view = (params, unscanned(model), unstack_layers(params, model.config.n_layers))
    try:
        object.__setattr__(bundle, "_cpu_decode_view", view)
    except (AttributeError, TypeError):  # a bundle that cannot hold it: recomputed per call
        pass
    return view[1], view[2]


def sampling_spec(batch: _Batch, tokenizer, temperature: float, top_p: float, seed: int) -> engine.SamplingSpec:
    """The engine's sampling spec for one prepared call (its buffer and cache lengths, the tokenizer's EOS/pad)."""
    return engine.SamplingSpec.create(temperature, top_p, seed, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                                      cache_len=batch.cache_len, new_len=batch.new_len)


def cut_at_eos(ids: Sequence[int], eos_id: int) -> list[int]:
    ids = [int(t) for t in ids]
    return ids[:ids.index(eos_id)] if eos_id in ids else ids


def generate(bundle, prompts: Sequence[str] | str, images=None, max_new_tokens: int = 256, temperature: float = 0.1,
             top_p: float = 0.75, seed: int = 0, *, mesh=None) -> Generated:
    """Generates a continuation of every prompt (docs/design.md §3.3.3 decoding: greedy at temperature 0, else the
    top-p rule).

    prompts: list of final strings (or one string); images: None, a float array [B, H, W, 3] of preprocessed
    images, or a list with an [H, W, 3] array or None per prompt. Spliced systems (LLaVA, mPLUG-Owl) take the
    image where the prompt says `<image>` (one per image; the bundle's tokenizer expands it); a prompt with
    several `<image>` takes a [k, H, W, 3] stack, image j at the j-th `<image>`. Returns `Generated(texts, token_ids)`.
    Raises PromptTooLong / ImageNotSupported (ValueErrors) for inputs the model cannot take.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    model, params, tok = _parts(bundle)
    if not prompts or max_new_tokens == 0:
        check_context(encode_prompts(tok, prompts), model.config.max_seq_len)
        return Generated([""] * len(prompts), [[] for _ in prompts])
    mesh = mesh if mesh is not None else find_mesh(params)
    model, params = decode_view(bundle, model, params, mesh)
    batch = prepare(model, tok, prompts, images, max_new_tokens, _data_size(mesh))
    params, inputs = place(model, params, batch, mesh)
    spec = sampling_spec(batch, tok, temperature, top_p, seed)
    out, count = engine.generate_fn(model, spec, params, **inputs)
    out, count = np.asarray(out), np.asarray(count)
    ids = [cut_at_eos(out[i, :count[i]], tok.eos_id) for i in range(batch.n)]
    return Generated([tok.decode(r) for r in ids], ids)


def stream(bundle, prompt: str, image=None, max_new_tokens: int = 256, temperature: float = 0.1, top_p: float = 0.75,
           seed: int = 0, *, mesh=None) -> Iterator[int]:
    """Yields the generated token ids of one prompt as they are produced (EOS not yielded).

    Same prefill and decode step as `generate` (the step jitted on its own, called from a Python loop), so for the
    same seed the ids equal `generate(bundle, [prompt], [image], ...)`'s. Closing the generator stops decoding.
    """
    model, params, tok = _parts(bundle)
    if max_new_tokens <= 0:
        check_context(encode_prompts(tok, [prompt]), model.config.max_seq_len)
        return
    mesh = mesh if mesh is not None else find_mesh(params)
    model, params = decode_view(bundle, model, params, mesh)
    batch = prepare(model, tok, [prompt], None if image is None else [image], max_new_tokens, _data_size(mesh))
    params, inputs = place(model, params, batch, mesh)
    spec = sampling_spec(batch, tok, temperature, top_p, seed)
    state = engine.prefill_fn(model, spec, params, **inputs)
    produced = 0
    while True:
        count = int(state.count[0])
        if count > produced:
            produced = count
            token = int(state.tok[0])
            if token == tok.eos_id:
                return
            yield token
        if bool(state.done[0]) or int(state.step) >= batch.new_len:
            return
        state = engine.step_fn(model, spec, params, state)
