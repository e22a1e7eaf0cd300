"""Sequence packing of spliced streams (LLaVA, mPLUG-Owl): each segment's visual tokens land on its own
placeholders (slot j = the row's j-th image, text-only samples take no slot), per-token losses and gradients
equal the unpacked ones (tiny random LLaVA, float32, ≤1e-5), and the packed LLaVA pipeline fills slots in order.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ckpt_utils import random_params
from lav2_jax.core import presets
from lav2_jax.core.config import SpliceConfig
from lav2_jax.data import builder
from lav2_jax.systems.llava import samples as llava_samples
from lav2_jax.data.packing import DROPPED_KEY, Packer
from lav2_jax.data.pipeline import Pipeline, PipelineConfig, open_source
from lav2_jax.data.testing import train_sentencepiece, write_image, write_jsonl
from lav2_jax.data.tokenizer import load_tokenizer
from lav2_jax.model import splice
from lav2_jax.model.factory import build_model
from lav2_jax.train.loss import token_cross_entropy

IMG, N_TOK = 250, 16  # placeholder id inside the tiny vocabulary; 32 px / 8 px patches, CLS dropped
VISION = presets.get_vision("tiny").replace(output_dim=0)
# (text before the image, image?, text after): a text-only sample sits before an image sample in a row
SHAPES = ((9, False, 0), (3, True, 6), (2, True, 4), (5, True, 3), (7, False, 0))


def _samples(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for before, has_image, after in SHAPES:
        ids = rng.integers(3, 240, before + after + 1)
        seq = np.concatenate([ids[:before], [IMG] * N_TOK if has_image else [], ids[before:]]).astype(np.int32)
        targets = seq[1:]
        mask = splice.mask_image_targets(targets, np.ones(len(targets), np.float32), IMG)
        image = rng.normal(size=(32, 32, 3)).astype(np.float32) if has_image else np.zeros((32, 32, 3), np.float32)
        out.append({"tokens": seq[:-1], "targets": targets, "loss_mask": mask, "image": image,
                    "has_image": has_image, DROPPED_KEY: 0})
    return out


@pytest.fixture(scope="module")
def model():
    s = SpliceConfig(image_token_id=IMG, n_tokens=N_TOK)
    m = build_model(presets.get_model("tiny"), presets.get_adapter("none").replace(splice=s), VISION)
    params = random_params(m, seed=3)

    @jax.jit
    def loss_grads(p, batch):
        def total(p):
            hidden = m.apply({"params": p}, batch["tokens"], batch["images"], batch["has_image"],
                             segment_ids=batch.get("segment_ids"), positions=batch.get("positions"),
                             return_hidden=True)
            ce = token_cross_entropy(hidden, p["output"]["kernel"], batch["targets"]) * batch["loss_mask"]
            return ce.sum(), ce
        return jax.grad(total, has_aux=True)(p)

    return loss_grads, params


def test_packed_spliced_losses_and_gradients_equal_unpacked(model):
    loss_grads, params = model
    samples = _samples()
    packer = Packer(2, 64, (64,), True, 2, spliced=True)  # at most 2 images per row; text-only samples are free
    assert all(packer.add(s) for s in samples)
    packed = {k: jnp.asarray(v) for k, v in packer.batch().items() if not k.startswith("_")}
    seg = np.asarray(packed["segment_ids"])
    assert int(seg.max(axis=1).sum()) == len(samples) and packed["images"].shape[:2] == (2, 2)
    assert max(len(row) for row in packer.rows) > 2  # more samples than image slots in a row
    g_p, ce_p = loss_grads(params, packed)
    # unpacked: one sample per row, in batches of the packed shapes (a single compile); gradients summed
    ce_u, g_u = [], None
    for k in range(0, len(samples), 2):
        alone = Packer(2, 64, (64,), True, 2, spliced=True)
        for r, sample in enumerate(samples[k:k + 2]):
            alone.rows[r].append(sample)
            alone.used[r] = len(sample["tokens"])
        g, ce = loss_grads(params, {n: jnp.asarray(v) for n, v in alone.batch().items() if not n.startswith("_")})
        g_u = g if g_u is None else jax.tree_util.tree_map(jnp.add, g_u, g)
        ce_u += list(np.asarray(ce))
    ce_u = np.stack(ce_u)  # row i: sample i alone
    text_before_image = False
    for r, row in enumerate(packer.rows):  # first fit: which sample went where
        slot, seen_text = 0, False
        for s, e in enumerate(row, start=1):
            i = next(j for j, x in enumerate(samples) if x is e)
            span = np.flatnonzero(seg[r] == s)
            n = len(samples[i]["tokens"])
            assert len(span) == n and np.array_equal(np.asarray(packed["positions"][r, span]), np.arange(n))
            np.testing.assert_allclose(np.asarray(ce_p[r, span]), np.asarray(ce_u[i, :n]), atol=1e-5, rtol=0)
            if samples[i]["has_image"]:  # its image sits in the row's next slot
                np.testing.assert_array_equal(np.asarray(packed["images"][r, slot]), samples[i]["image"])
                slot, text_before_image = slot + 1, text_before_image or seen_text
            seen_text = seen_text or not samples[i]["has_image"]
        assert int(np.asarray(packed["has_image"][r]).sum()) == slot
    assert text_before_image  # a text-only segment before an image one: slot ≠ segment index
    assert float(jnp.abs(g_u["mm_projector"]["linear_2"]["kernel"]).max()) > 0
    chex.assert_trees_all_close(g_p, g_u, atol=1e-5, rtol=1e-5)  # float32; the summation order differs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("packed_llava")
    tok = load_tokenizer(train_sentencepiece(str(d / "tok.model")))
    rows = []
    for i in range(8):
        if i % 3 == 1:
            rows.append({"conversations": [{"from": "human", "value": f"Hi {i}"}, {"from": "gpt", "value": f"t{i}"}]})
        else:
            write_image(str(d / f"{i}.png"), 20 + i, 16, seed=i)
            rows.append({"image": f"{i}.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                                 {"from": "gpt", "value": f"p{i}"}]})
    out = str(d / "ds")
    builder.build("conversation", [builder.Source("conversation", write_jsonl(str(d / "c.jsonl"), rows))], out,
                  progress=False)
    return d, out, tok


def test_packed_llava_pipeline_fills_image_slots_in_segment_order(dataset):
    d, out, tok = dataset
    n_img, img_id = 3, 500
    cfg = PipelineConfig(batch_size=2, max_len=512, image_size=16, shard_index=0, shard_count=1, seed=1,
                         num_epochs=1, drop_remainder=False, system="llava", template="vicuna_v1", image_tokens=n_img,
                         image_token_id=img_id, image_aspect="pad", augment=False, packing=True, max_segments=2)
    by_answer = {r["values"][-1].decode(): r for r in open_source(out)}
    seen, texts_in_rows = set(), 0
    for batch in Pipeline(out, tok, cfg):
        assert batch["images"].shape[1:] == (2, 16, 16, 3) and batch["has_image"].shape[1] == 2
        for r, seg in enumerate(batch["segment_ids"]):
            slot = 0
            for s in range(1, int(seg.max()) + 1):
                span = np.flatnonzero(seg == s)
                answer = tok.decode([int(t) for t, m in zip(batch["targets"][r, span], batch["loss_mask"][r, span])
                                     if m and t != tok.eos_id])
                rec, placeholders = by_answer[answer], int((batch["tokens"][r, span] == img_id).sum())
                seen.add(answer)
                if rec["has_image"]:
                    assert placeholders == n_img
                    want = llava_samples.preprocess_image(str(d / f"{answer[1:]}.png"), 16, "pad")
                    np.testing.assert_allclose(batch["images"][r, slot], want, atol=1e-6)
                    slot += 1
                else:
                    assert placeholders == 0
                    texts_in_rows += slot > 0 or int(seg.max()) > 1
            assert int(batch["has_image"][r].sum()) == slot and not batch["images"][r, slot:].any()
    assert seen == set(by_answer) and texts_in_rows > 0
