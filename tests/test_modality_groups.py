"""`group_by_modality_length` (LLaVA-1.5 stage 2): every global batch is all-image or all-text, spread over the
processes longest-first by stripes; the order is deterministic by seed, differs per epoch, covers each record at
most once per epoch, and the iterator state restores mid-epoch exactly; `lav2 data build` stores the lengths.
"""

import json
import os

import numpy as np
import pytest

from lav2_jax.data import builder, modality_groups
from lav2_jax.data.pipeline import Pipeline, PipelineConfig, open_source
from lav2_jax.data.testing import train_sentencepiece, write_image, write_jsonl
from lav2_jax.data.tokenizer import load_tokenizer

N_IMG, IMG = 3, 500  # placeholders per image; id outside the 400-word vocabulary
N_IMAGE, N_TEXT = 11, 7


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("modality")
    tok = load_tokenizer(train_sentencepiece(str(d / "tok.model")))
    write_image(str(d / "a.png"), 20, 16, seed=1)
    rows = [{"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nDescribe" + " it" * i},
                                                   {"from": "gpt", "value": f"picture {i}"}]} for i in range(N_IMAGE)]
    rows += [{"conversations": [{"from": "human", "value": "Say" + " more" * i}, {"from": "gpt", "value": f"text {i}"}]}
             for i in range(N_TEXT)]
    out = str(d / "ds")
    builder.build("conversation", [builder.Source("conversation", write_jsonl(str(d / "c.jsonl"), rows))], out,
                  progress=False)
    return out, tok


def _cfg(**kw):
    base = dict(batch_size=2, max_len=512, image_size=16, shard_index=0, shard_count=1, seed=3, system="llava",
                template="vicuna_v1", image_tokens=N_IMG, image_token_id=IMG, image_aspect="pad", augment=False,
                group_by_modality_length=True)
    return PipelineConfig(**{**base, **kw})


def _answer(tok, row_targets, row_mask) -> str:
    return tok.decode([int(t) for t, m in zip(row_targets, row_mask) if m and t != tok.eos_id])


def test_build_stores_the_lengths_a_pass_measures(env):
    out, _ = env
    src = open_source(out)
    assert os.path.isfile(os.path.join(out, "modality_lengths.train.npz"))
    stored = modality_groups.modality_lengths(src, out)
    measured = modality_groups.modality_lengths(src)
    assert all(np.array_equal(a, b) for a, b in zip(stored, measured))
    has_image, lengths = stored
    assert has_image.sum() == N_IMAGE and (~has_image).sum() == N_TEXT
    for i in range(len(src)):  # LLaVA's measure: words of every turn
        assert lengths[i] == sum(len(v.decode().split()) for v in src[i]["values"])


def test_epoch_order_blocks_are_one_modality_and_sorted_by_length():
    rng = np.random.default_rng(0)
    has_image, lengths = rng.random(50) < 0.6, rng.integers(1, 100, 50).astype(np.int32)
    orders = [modality_groups.epoch_order(has_image, lengths, 8, seed=1, epoch=e) for e in (0, 1)]
    for order in orders:
        assert len(order) == 48 and len(set(order.tolist())) == 48
        blocks = order.reshape(-1, 8)
        mixed = [b for b in blocks if len(set(has_image[b].tolist())) > 1]
        assert len(mixed) <= 1 and (not mixed or mixed[0] is blocks[-1])
        assert all((np.diff(lengths[b]) <= 0).all() for b in blocks)
    assert not np.array_equal(orders[0], orders[1])
    np.testing.assert_array_equal(orders[0], modality_groups.epoch_order(has_image, lengths, 8, seed=1, epoch=0))


def _global_batches(out, tok, epochs=2, **kw):
    """Per step: the rows of two processes together (answers, has_image)."""
    its = [list(Pipeline(out, tok, _cfg(shard_index=k, shard_count=2, num_epochs=epochs, **kw))) for k in (0, 1)]
    assert len(its[0]) == len(its[1])
    return [{"answers": [_answer(tok, t, m) for b in pair for t, m in zip(b["targets"], b["loss_mask"])],
             "has_image": np.concatenate([b["has_image"] for b in pair])} for pair in zip(*its)]


def test_global_batches_are_single_modality_and_cover_an_epoch(env):
    out, tok = env
    steps = _global_batches(out, tok)
    per_epoch = (N_IMAGE + N_TEXT) // 4  # global batch 4 = 2 processes × 2 rows
    assert len(steps) == 2 * per_epoch
    for e in range(2):
        epoch = steps[e * per_epoch:(e + 1) * per_epoch]
        answers = [a for s in epoch for a in s["answers"]]
        assert len(set(answers)) == len(answers) == 4 * per_epoch  # nobody twice, no process overlap
        for s in epoch[:-1]:  # every batch but an epoch's last (leftovers of both) is one modality
            assert len(set(s["has_image"].tolist())) == 1
            assert all(a.startswith("picture" if s["has_image"][0] else "text") for a in s["answers"])
    first, second = steps[:per_epoch], steps[per_epoch:]
    assert [s["answers"] for s in first] != [s["answers"] for s in second]  # reshuffled per epoch
    assert [s["answers"] for s in _global_batches(out, tok, epochs=1)] == [s["answers"] for s in first]


def test_processes_take_interleaved_stripes_of_the_length_order(env):
    out, tok = env
    src = open_source(out)
    has_image, lengths = modality_groups.modality_lengths(src, out)
    order = modality_groups.epoch_order(has_image, lengths, 4, seed=3, epoch=0)
    p = [Pipeline(out, tok, _cfg(shard_index=k, shard_count=2, num_epochs=1)) for k in (0, 1)]
    assert p[0].left_out == (N_IMAGE + N_TEXT) % 4 and p[0].steps_per_epoch == (N_IMAGE + N_TEXT) // 4
    batch0, batch1 = next(iter(p[0])), next(iter(p[1]))
    want = [src[int(i)]["values"][1].decode() for i in order[:4]]  # block 0, longest first
    got0 = [_answer(tok, t, m) for t, m in zip(batch0["targets"], batch0["loss_mask"])]
    got1 = [_answer(tok, t, m) for t, m in zip(batch1["targets"], batch1["loss_mask"])]
    assert got0 == want[0::2] and got1 == want[1::2]


def test_iterator_state_restores_mid_epoch(env):
    out, tok = env
    it = iter(Pipeline(out, tok, _cfg()))
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(6)]  # crosses the epoch boundary (9 steps per epoch)
    it2 = iter(Pipeline(out, tok, _cfg()))
    it2.set_state(state)
    for a, b in zip(expected, [next(it2) for _ in range(6)]):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_without_shuffle_is_an_error(env):
    out, tok = env
    with pytest.raises(ValueError, match="shuffle=True"):
        Pipeline(out, tok, _cfg(shuffle=False))
