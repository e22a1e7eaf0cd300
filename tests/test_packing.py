"""Sequence packing: the packed model equals the unpacked one per sample, nothing crosses a segment, and the
packed pipeline is deterministic and resumes exactly (`lav2_jax.data.packing`, `lav2_jax.model.segments`)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lav2_jax.core import presets
from lav2_jax.data import builder
from lav2_jax.data.packing import DROPPED_KEY, Packer
from lav2_jax.data.pipeline import Pipeline, PipelineConfig
from lav2_jax.data.testing import train_sentencepiece, write_image, write_jsonl
from lav2_jax.data.tokenizer import load_tokenizer
from lav2_jax.model.factory import build_model, init_params
from lav2_jax.model.segments import segment_positions
from lav2_jax.train.loss import token_cross_entropy
from tests.model_utils import perturb_adapters

TINY = presets.get_model("tiny")
VIS = presets.get_vision("tiny")
LENGTHS = (9, 14, 6, 11, 7)  # 5 samples: packed into 2 rows of 32, unpacked into 5 rows


def _samples(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(LENGTHS):
        seq = rng.integers(3, TINY.vocab_size, size=n + 1)
        mask = (np.arange(n) >= n // 2).astype(np.float32)  # the second half is the "answer"
        out.append({"tokens": seq[:-1].astype(np.int32), "targets": seq[1:].astype(np.int32), "loss_mask": mask,
                    "image": rng.normal(size=(VIS.image_size, VIS.image_size, 3)).astype(np.float32),
                    "has_image": i != 2, DROPPED_KEY: 0})
    return out


def _packed(samples, with_images=True):
    packer = Packer(2, 32, (32,), with_images, 4 if with_images else None)
    assert all(packer.add(s) for s in samples)
    return {k: jnp.asarray(v) for k, v in packer.batch().items() if not k.startswith("_")}


def _where(batch):
    """(row, slice) of every sample of a packed batch, in segment order."""
    out = []
    for r, seg in enumerate(np.asarray(batch["segment_ids"])):
        for s in range(1, int(seg.max()) + 1):
            idx = np.nonzero(seg == s)[0]
            out.append((r, slice(int(idx[0]), int(idx[-1]) + 1)))
    return out


@pytest.fixture(scope="module", params=["paper", "release-bias"])
def model(request):
    """(logits fn, loss-and-grad fn, params): jitted once per adapter (early and official visual fusion)."""
    m = build_model(TINY, presets.tiny_adapter(request.param, TINY, VIS), VIS)
    params = perturb_adapters(init_params(m, jax.random.PRNGKey(0)), scale=0.5)

    @jax.jit
    def logits(p, batch):
        return m.apply({"params": p}, batch["tokens"], batch["images"], batch["has_image"],
                       segment_ids=batch.get("segment_ids"))

    @jax.jit
    def loss_grads(p, batch):
        """Per-token masked losses [B, T] and the gradient of their sum over every parameter."""
        def total(p):
            hidden = m.apply({"params": p}, batch["tokens"], batch["images"], batch["has_image"],
                             segment_ids=batch.get("segment_ids"), return_hidden=True)
            ce = token_cross_entropy(hidden, p["output"]["kernel"], batch["targets"]) * batch["loss_mask"]
            return ce.sum(), ce
        (_, ce), grads = jax.value_and_grad(total, has_aux=True)(p)
        return ce, grads

    return logits, loss_grads, params


def _unpacked(samples):
    T = max(len(s["tokens"]) for s in samples)
    def pad(key, dtype):
        return jnp.asarray(np.stack([np.pad(s[key], (0, T - len(s[key]))) for s in samples]).astype(dtype))
    return {"tokens": pad("tokens", np.int32), "targets": pad("targets", np.int32),
            "loss_mask": pad("loss_mask", np.float32), "images": jnp.asarray(np.stack([s["image"] for s in samples])),
            "has_image": jnp.asarray([s["has_image"] for s in samples])}


def test_packed_losses_and_gradients_equal_unpacked(model):
    _, loss_grads, params = model
    samples = _samples()
    packed, flat = _packed(samples), _unpacked(samples)
    assert packed["tokens"].shape == (2, 32) and packed["images"].shape[:2] == (2, 4)
    ce_p, g_p = loss_grads(params, packed)
    ce_u, g_u = loss_grads(params, flat)
    for i, (r, span) in enumerate(_where(packed)):
        n = LENGTHS[i]
        np.testing.assert_allclose(ce_p[r, span], ce_u[i, :n], atol=1e-5, rtol=0)
        chex.assert_trees_all_close(packed["positions"][r, span], jnp.arange(n))
    chex.assert_trees_all_close(g_p, g_u, atol=1e-5, rtol=1e-5)  # float32; the summation order differs


def test_no_attention_across_segments(model):
    logits, _, params = model
    packed = _packed(_samples())
    spans = _where(packed)
    r, span = spans[1]
    changed = packed["tokens"].at[r, span].set((packed["tokens"][r, span] + 7) % TINY.vocab_size)
    base, out = logits(params, packed), logits(params, {**packed, "tokens": changed})
    for i, (ri, si) in enumerate(spans):
        if i == 1:
            assert float(jnp.abs(out[ri, si] - base[ri, si]).max()) > 1e-3
        else:
            np.testing.assert_array_equal(out[ri, si], base[ri, si])


def test_each_segment_sees_only_its_own_image(model):
    logits, _, params = model
    packed = _packed(_samples())
    spans = _where(packed)
    r, span = spans[3]
    slot = int(packed["segment_ids"][r, span.start]) - 1
    images = packed["images"].at[r, slot].multiply(-1.0)
    base, out = logits(params, packed), logits(params, {**packed, "images": images})
    for i, (ri, si) in enumerate(spans):
        if i == 3:
            assert float(jnp.abs(out[ri, si] - base[ri, si]).max()) > 1e-4
        else:
            np.testing.assert_array_equal(out[ri, si], base[ri, si])
    # the image-less sample 2 matches the sample alone without an image
    r2, s2 = spans[2]
    s = _samples()[2]
    alone = logits(params, {"tokens": jnp.asarray(s["tokens"][None]), "images": jnp.asarray(s["image"][None]),
                            "has_image": jnp.asarray([False])})
    np.testing.assert_allclose(base[r2, s2], alone[0], atol=1e-5, rtol=0)


def test_segment_positions_restart():
    seg = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    chex.assert_trees_all_close(segment_positions(seg), jnp.asarray([[0, 1, 2, 0, 1, 0, 0, 1], list(range(8))]))


# ---------------------------------------------------------------------------------------------------------------
# The packed grain pipeline.

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("pack")
    tok = load_tokenizer(train_sentencepiece(str(d / "tok.model")))
    inst = [{"instruction": f"Task {i} " + "word " * (i % 5), "output": f"answer {i}"} for i in range(12)]
    builder.build("instruction", [builder.Source("instruction", write_jsonl(str(d / "i.jsonl"), inst))],
                  str(d / "inst"), progress=False)
    for i in range(6):
        write_image(str(d / f"{i}.png"), 40, 36, seed=i)
    (d / "c.tsv").write_text("path\tcaption\n" + "".join(f"{i}.png\tcaption {i}\n" for i in range(6)))
    builder.build("caption", [builder.Source("tsv", str(d / "c.tsv"))], str(d / "cap"), progress=False)
    return d, tok


def _cfg(**kw):
    base = dict(batch_size=2, max_len=128, image_size=16, shard_index=0, shard_count=1, seed=3, packing=True)
    return PipelineConfig(**{**base, **kw})


def _answers(tok, batch):
    out = []
    for targets, mask, seg in zip(batch["targets"], batch["loss_mask"], batch["segment_ids"]):
        for s in range(1, int(seg.max()) + 1):
            keep = (seg == s) & (mask > 0) & (targets != tok.eos_id)
            out.append(tok.decode([int(t) for t in targets[keep]]))
    return out


def test_packed_pipeline_holds_every_sample_once(env):
    d, tok = env
    it = iter(Pipeline(str(d / "inst"), tok, _cfg(num_epochs=1, drop_remainder=False, max_len=256)))
    batches = list(it)
    answers = [a for b in batches for a in _answers(tok, b)]
    assert sorted(answers) == sorted(f"answer {i}" for i in range(12))
    assert it.rows == 12 and it.dropped == 0 and len(batches) < 6  # more than one sample per row
    for b in batches:
        seg, pos = b["segment_ids"], b["positions"]
        assert seg.shape == pos.shape == b["tokens"].shape and b["has_image"].shape == (2,)
        for row_seg, row_pos in zip(seg, pos):
            for s in range(1, int(row_seg.max()) + 1):
                np.testing.assert_array_equal(row_pos[row_seg == s], np.arange(int((row_seg == s).sum())))


def test_packed_pipeline_resumes_exactly(env):
    d, tok = env
    p = Pipeline(str(d / "cap"), tok, _cfg(max_len=256, max_segments=3))
    it = iter(p)
    for _ in range(2):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    assert expected[0]["images"].shape == (2, 3, 16, 16, 3) and expected[0]["has_image"].shape == (2, 3)
    assert int(expected[0]["segment_ids"].max()) > 1
    fresh = iter(Pipeline(str(d / "cap"), tok, _cfg(max_len=256, max_segments=3)))
    fresh.set_state(state)
    for want in expected:
        chex.assert_trees_all_equal(next(fresh), want)
    assert fresh.get_state() == it.get_state()
