"""mPLUG-Owl samples with several images (docs/design.md §5.3: several ``Human: <image>`` lines), model side.

Proves, on a tiny random Owl model in float32 (max-abs ≤ 1e-5): image j of a sample (slot j of `images`
[B, N, H, W, 3]) is encoded on its own and its Q + 1 abstractor tokens land on the sample's j-th placeholder run;
a padding slot (no placeholder refers to it) changes nothing, whatever it holds; the logits equal a hand splice
(a text-only copy of the LLM whose embedding table is extended by the visual tokens as extra rows, the
placeholders replaced by those rows' ids); swapping the two images changes the answer; and a packed Owl stream
with a two-image sample gives the per-token losses and the gradients (LLM, abstractor and vision model) of its
samples alone, unpacked (`lav2_jax.data.pipeline`'s multi-image batch function).
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ckpt_utils import random_params
from lav2_jax.core.config import AdapterConfig
from lav2_jax.data.packing import DROPPED_KEY, Packer
from lav2_jax.data.pipeline import _PadToBucket
from lav2_jax.model import splice
from lav2_jax.systems.owl.abstractor import VisualAbstractor
from lav2_jax.model.factory import build_model
from lav2_jax.systems.owl.visual import owl_splice, owl_visual_tokens
from lav2_jax.systems.owl.vision import OwlVisionModel
from lav2_jax.train.loss import token_cross_entropy
from owl_writers import ABSTRACTOR, LLM, VISION

ATOL = 1e-5
N_TOK = ABSTRACTOR.num_queries + 1
SPLICE = owl_splice(ABSTRACTOR, max_images=3)
PID = SPLICE.image_token_id
ADAPTER = AdapterConfig(linear_kind="none", norm_tuning=False, prompt_len=0, prompt_layers=0, visual_fusion="none",
                        splice=SPLICE)
# two images, each its own `Human: <image>` run, with text between and after them
ROW = [1, 7, 9] + [PID] * N_TOK + [11, 12] + [PID] * N_TOK + [13, 14, 15]
RUNS = [slice(3, 3 + N_TOK), slice(5 + N_TOK, 5 + 2 * N_TOK)]


class _Encoder(nn.Module):
    """The Transformer's visual path alone (same parameter names: owl_vision/..., abstractor/...)."""

    @nn.compact
    def __call__(self, images):
        return owl_visual_tokens(SPLICE, VISION, LLM, images)


def _images(n, seed):
    return np.random.default_rng(seed).standard_normal((n, VISION.image_size, VISION.image_size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def owl():
    model = build_model(LLM, ADAPTER, VISION)
    params = random_params(model, seed=5)
    images = _images(3, seed=11)  # slots 0 and 1: the sample's images; slot 2: padding
    visual = jax.jit(_Encoder().apply)({"params": params}, images)  # [3, Q + 1, D], the slots batched
    return model, params, jax.jit(model.apply), images, visual


def test_each_image_lands_on_its_own_run(owl):
    model, params, _, images, visual = owl
    assert visual.shape == (3, N_TOK, LLM.dim)
    vision, abstractor = jax.jit(OwlVisionModel(VISION).apply), jax.jit(VisualAbstractor(ABSTRACTOR, LLM.dim).apply)
    for j in range(2):  # each slot encoded on its own: vision model → abstractor of that image alone
        alone = abstractor({"params": params["abstractor"]}, vision({"params": params["owl_vision"]}, images[j:j + 1]))
        np.testing.assert_allclose(np.asarray(visual[j]), np.asarray(alone[0]), rtol=0, atol=ATOL)
    tokens = jnp.asarray([ROW], jnp.int32)
    table = params["tok_embeddings"]["embedding"]
    x = jnp.take(table, splice.embed_ids(tokens, PID), axis=0)
    spliced = np.asarray(splice.splice_visual(x, tokens, visual[None], PID))[0]
    for j, run in enumerate(RUNS):  # run j holds image j's Q + 1 tokens, in order (vit_eos last)
        np.testing.assert_array_equal(spliced[run], np.asarray(visual[j]))
    text = np.asarray([i for i, t in enumerate(ROW) if t != PID])
    np.testing.assert_array_equal(spliced[text], np.asarray(x)[0, text])
    assert np.abs(np.asarray(visual[0]) - np.asarray(visual[1])).max() > 1e-3  # the two images differ


def test_logits_equal_a_hand_splice_and_ignore_padding_slots(owl):
    model, params, apply, images, visual = owl
    tokens = jnp.asarray([ROW], jnp.int32)
    logits = np.asarray(apply({"params": params}, tokens, images[None]))[0]
    zeros = images.copy()
    zeros[2] = 0.0
    np.testing.assert_allclose(np.asarray(apply({"params": params}, tokens, zeros[None]))[0], logits, rtol=0,
                               atol=ATOL)  # the padding slot is never read
    # by hand: a text-only LLaMA whose vocabulary gains 2·(Q + 1) rows holding the two images' visual tokens
    visual = np.asarray(visual[:2]).reshape(2 * N_TOK, LLM.dim)
    V = LLM.vocab_size
    text_model = build_model(LLM.replace(vocab_size=V + 2 * N_TOK), ADAPTER.replace(splice=None))
    flat = {k: v for k, v in traverse_util.flatten_dict(params).items() if k[0] not in ("owl_vision", "abstractor")}
    flat[("tok_embeddings", "embedding")] = jnp.concatenate([params["tok_embeddings"]["embedding"], visual])
    kernel = params["output"]["kernel"]
    flat[("output", "kernel")] = jnp.concatenate([kernel, jnp.zeros((LLM.dim, 2 * N_TOK), kernel.dtype)], axis=1)
    ids = np.asarray(ROW)
    ids[ids == PID] = V + np.arange(2 * N_TOK)
    by_hand = np.asarray(jax.jit(text_model.apply)({"params": traverse_util.unflatten_dict(flat)}, ids[None]))
    np.testing.assert_allclose(logits, by_hand[0, :, :V], rtol=0, atol=ATOL)
    swapped = np.asarray(apply({"params": params}, tokens, images[None, [1, 0, 2]]))[0]
    np.testing.assert_allclose(swapped[:3], logits[:3], rtol=0, atol=ATOL)  # before the first image: causal
    assert np.abs(swapped[3:] - logits[3:]).max() > 1e-3  # the order of the slots is the order of the runs


def _samples(seed=0):
    """(text before, images, text after) per sample: a two-image sample among one-image and text-only ones."""
    rng = np.random.default_rng(seed)
    out = []
    for before, k, after in ((4, 0, 3), (2, 2, 3), (3, 1, 4), (6, 0, 2), (2, 1, 2)):
        ids = list(rng.integers(3, 240, before))
        for _ in range(k):  # each image's run, then a little text (the next `Human:` line)
            ids += [PID] * N_TOK + list(rng.integers(3, 240, 2))
        seq = np.asarray(ids + list(rng.integers(3, 240, after)), np.int32)
        targets = seq[1:]
        mask = splice.mask_image_targets(targets, np.ones(len(targets), np.float32), PID)
        imgs = _images(k, seed=100 + len(out))
        out.append({"tokens": seq[:-1], "targets": targets, "loss_mask": mask, "has_image": k > 0, "images": imgs,
                    "image": imgs[0] if k else np.zeros(imgs.shape[1:], np.float32), DROPPED_KEY: 0})
    return out


def test_packed_multi_image_losses_and_gradients_equal_unpacked(owl):
    model, params = owl[:2]

    @jax.jit
    def loss_grads(p, batch):
        def total(p):
            hidden = model.apply({"params": p}, batch["tokens"], batch["images"], batch["has_image"],
                                 segment_ids=batch["segment_ids"], positions=batch["positions"], return_hidden=True)
            ce = token_cross_entropy(hidden, p["output"]["kernel"], batch["targets"]) * batch["loss_mask"]
            return ce.sum(), ce
        return jax.grad(total, has_aux=True)(p)

    samples = _samples()
    packer = Packer(2, 64, (64,), True, 3, spliced=True)  # 3 image slots a row
    assert all(packer.add(s) for s in samples)
    packed = {k: jnp.asarray(v) for k, v in packer.batch().items() if not k.startswith("_")}
    assert packed["images"].shape[:2] == (2, 3)
    g_p, ce_p = loss_grads(params, packed)
    # unpacked: the pipeline's multi-image batch function, two samples a batch; one segment per row
    pad = _PadToBucket((64,), True, max_images=3)
    ce_u, g_u = [], None
    for k in range(0, len(samples), 2):
        chunk = samples[k:k + 2] + samples[:1] * (2 - len(samples[k:k + 2]))  # the last batch: a repeat, unused
        b = {n: v for n, v in pad(chunk).items() if not n.startswith("_")}
        assert b["images"].shape[:2] == (2, 3) and b["has_image"].sum(1).tolist() == [len(e["images"]) for e in chunk]
        b["segment_ids"], b["positions"] = np.ones((2, 64), np.int32), np.broadcast_to(np.arange(64), (2, 64))
        if len(samples[k:k + 2]) < 2:
            b["loss_mask"][1] = 0.0
        g, ce = loss_grads(params, {n: jnp.asarray(v) for n, v in b.items()})
        g_u = g if g_u is None else jax.tree_util.tree_map(jnp.add, g_u, g)
        ce_u += list(np.asarray(ce))[:len(samples[k:k + 2])]
    seg = np.asarray(packed["segment_ids"])
    multi = 0
    for r, row in enumerate(packer.rows):
        slot = 0
        for s, e in enumerate(row, start=1):
            i = next(j for j, x in enumerate(samples) if x is e)
            span = np.flatnonzero(seg[r] == s)
            n = len(e["tokens"])
            np.testing.assert_allclose(np.asarray(ce_p[r, span]), ce_u[i][:n], atol=ATOL, rtol=0)
            for image in e["images"]:  # the sample's images in consecutive slots of its row
                np.testing.assert_array_equal(np.asarray(packed["images"][r, slot]), image)
                slot += 1
            multi += len(e["images"]) > 1
        assert int(np.asarray(packed["has_image"][r]).sum()) == slot
    assert multi == 1
    for part in ("owl_vision", "abstractor"):  # the visual path is differentiated (stage 1 trains it)
        assert max(float(jnp.abs(x).max()) for x in jax.tree_util.tree_leaves(g_u[part])) > 0
    chex.assert_trees_all_close(g_p, g_u, atol=ATOL, rtol=1e-5)  # float32; the summation order differs
