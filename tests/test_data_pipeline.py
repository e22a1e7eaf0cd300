"""grain pipeline mechanics: sharding, checkpointed iterator state, drop counting, buckets, the joint recipe."""

import json

import numpy as np
import pytest

from lav2_jax.data import builder
from lav2_jax.data.pipeline import JointPipeline, Pipeline, PipelineConfig, default_buckets
from lav2_jax.data.testing import train_sentencepiece, write_image, write_jsonl
from lav2_jax.data.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    tok = load_tokenizer(train_sentencepiece(str(d / "tok.model")))
    inst = [{"instruction": f"Task {i}", "output": f"answer {i}"} for i in range(10)]
    inst += [{"instruction": "long " * 300, "output": f"answer {i}"} for i in range(10, 13)]  # dropped at 128
    builder.build("instruction", [builder.Source("instruction", write_jsonl(str(d / "i.jsonl"), inst))],
                  str(d / "inst"), progress=False)
    for i in range(4):
        write_image(str(d / f"{i}.png"), 40 + 4 * i, 36, seed=i)
    (d / "c.tsv").write_text("path\tcaption\n" + "".join(f"{i}.png\tcaption {i}\n" for i in range(4)))
    builder.build("caption", [builder.Source("tsv", str(d / "c.tsv"))], str(d / "cap"), progress=False)
    return d, tok


def _cfg(**kw):
    base = dict(batch_size=2, max_len=128, image_size=16, shard_index=0, shard_count=1, seed=5)
    return PipelineConfig(**{**base, **kw})


def _answers(tok, batches):
    """The answer text of every row (targets under the loss mask, final EOS excluded)."""
    out = []
    for b in batches:
        for targets, mask in zip(b["targets"], b["loss_mask"]):
            out.append(tok.decode([t for t, m in zip(targets, mask) if m and t != tok.eos_id]))
    return out


def test_two_hosts_cover_the_dataset_exactly_once(env):
    d, tok = env
    seen = []
    for host in (0, 1):
        p = Pipeline(str(d / "inst"), tok, _cfg(batch_size=1, num_epochs=1, shard_index=host, shard_count=2,
                                                 max_len=2048))
        assert p.left_out == 1  # 13 records over 2 hosts: equal shards of 6
        seen.append(_answers(tok, list(p)))
    assert len(seen[0]) == len(seen[1]) == 6 and not set(seen[0]) & set(seen[1])
    every = {f"answer {i}" for i in range(13)}
    assert set(seen[0]) | set(seen[1]) <= every and len(every - set(seen[0]) - set(seen[1])) == 1


def test_shuffle_is_deterministic_by_seed_and_differs_per_epoch(env):
    d, tok = env
    def order(seed):
        return _answers(tok, list(Pipeline(str(d / "inst"), tok, _cfg(batch_size=1, num_epochs=2, seed=seed,
                                                                       max_len=2048))))
    a, b, c = order(1), order(1), order(2)
    assert a == b and a != c
    assert sorted(a[:13]) == sorted(a[13:]) and a[:13] != a[13:]  # each epoch complete, reshuffled


def test_over_long_samples_are_dropped_and_counted(env):
    d, tok = env
    it = iter(Pipeline(str(d / "inst"), tok, _cfg(batch_size=1, num_epochs=1, drop_remainder=False)))
    answers = _answers(tok, list(it))
    assert sorted(answers) == sorted(f"answer {i}" for i in range(10))
    assert it.dropped == 3
    with pytest.raises(ValueError, match="no sample keeps an answer token"):
        next(iter(Pipeline(str(d / "inst"), tok, _cfg(max_len=8))))


def test_batch_contract_and_buckets(env):
    d, tok = env
    assert default_buckets(512) == (64, 128, 256, 512) and default_buckets(96) == (64, 96)
    b = next(iter(Pipeline(str(d / "cap"), tok, _cfg(buckets=(32, 64, 128)))))
    assert set(b) == {"tokens", "targets", "loss_mask", "images", "has_image"}
    assert b["tokens"].dtype == np.int32 and b["targets"].dtype == np.int32 and b["loss_mask"].dtype == np.float32
    assert b["images"].shape == (2, 16, 16, 3) and b["images"].dtype == np.float32 and b["has_image"].all()
    T = b["tokens"].shape[1]
    lengths = (b["tokens"] != 0).sum(1)
    assert T in (32, 64, 128) and lengths.max() <= T and (T == 32 or lengths.max() > T // 2)
    real = b["tokens"][:, 1:] != 0
    np.testing.assert_array_equal(b["targets"][:, :-1][real], b["tokens"][:, 1:][real])
    assert not b["loss_mask"][b["tokens"] == 0].any()  # padding is never in the loss


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.multiprocess)])
def test_iterator_state_restores_mid_epoch(env, workers):
    d, tok = env
    p = Pipeline(str(d / "cap"), tok, _cfg(batch_size=1, worker_count=workers))  # train: augmentation + caption
    it = iter(p)
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    expected = _take(it, 6)  # crosses the epoch boundary (4 records)
    it.close()
    it2 = iter(Pipeline(str(d / "cap"), tok, _cfg(batch_size=1, worker_count=workers)))
    it2.set_state(state)
    _same(_take(it2, 6), expected)
    it2.close()


def test_joint_recipe_repeats_the_shorter_pipeline(env):
    d, tok = env
    joint = JointPipeline(Pipeline(str(d / "cap"), tok, _cfg()), Pipeline(str(d / "inst"), tok, _cfg(max_len=2048)))
    assert joint.caption.steps_per_epoch == 2 and joint.instruction.steps_per_epoch == 6
    assert joint.steps_per_epoch == 6
    it = iter(joint)
    steps = _take(it, joint.steps_per_epoch)
    captions = _answers(tok, [s["caption"] for s in steps])
    assert sorted(captions[:4]) == sorted(captions[4:8]) == [f"caption {i}" for i in range(4)]  # repeated
    state = json.loads(json.dumps(it.get_state()))
    nxt = _take(it, 2)
    it2 = iter(joint)
    it2.set_state(state)
    for a, b in zip(_take(it2, 2), nxt):
        _same([a["caption"], a["instruction"]], [b["caption"], b["instruction"]])
    with pytest.raises(ValueError, match="repeat"):
        JointPipeline(Pipeline(str(d / "cap"), tok, _cfg(num_epochs=1)), joint.instruction)
