"""Batch behaviour of `generate`: per-row EOS, max_new_tokens, padding, context limit, seeded sampling, bad input."""

import dataclasses

import numpy as np
import pytest

from generate_helpers import CharTokenizer, random_images, tiny_bundle
from lav2_jax.inference import ImageNotSupported, PromptTooLong, generate
from lav2_jax.inference import engine
from lav2_jax.inference.generation import place, prepare

PROMPTS = ["hi", "a longer prompt of text", "middle one"]


def with_tokenizer(bundle, **kw):
    return dataclasses.replace(bundle, tokenizer=CharTokenizer(**kw))


def test_per_row_eos_and_max_new_tokens():
    bundle = tiny_bundle("release-lora-bias")
    free = generate(with_tokenizer(bundle, eos_id=-1), PROMPTS, max_new_tokens=10, temperature=0).token_ids
    assert [len(r) for r in free] == [10, 10, 10]  # no EOS possible: exactly max_new_tokens (buffer is 16)
    # An EOS id that row 0 produces at step k >= 1 while some other row never produces it.
    candidates = [(k, t) for k, t in enumerate(free[0]) if k >= 1 and t not in free[0][:k]
                  and any(t not in r for r in free[1:])]
    assert candidates, free
    k, eos = candidates[0]
    got = generate(with_tokenizer(bundle, eos_id=eos), PROMPTS, max_new_tokens=10, temperature=0).token_ids
    for row, full in zip(got, free):  # each row stops at its own first EOS (excluded) and only there
        assert row == (full[:full.index(eos)] if eos in full else full)
    assert len(got[0]) == k and any(len(r) == 10 for r in got[1:])


def test_loop_ends_when_every_row_is_done():
    bundle = tiny_bundle("release-lora-bias")
    tok = CharTokenizer(eos_id=-1)
    batch = prepare(bundle.model, tok, PROMPTS, max_new_tokens=3)
    assert batch.new_len == 16 and list(batch.budgets) == [3, 3, 3, 0]  # bucket of 4 rows: one padding row
    params, inputs = place(bundle.model, bundle.params, batch, None)
    spec = engine.SamplingSpec(key=np.zeros(2, np.uint32), temperature=np.float32(1), top_p=np.float32(1),
                               eos_id=np.int32(-1), pad_id=np.int32(0), greedy=True, cache_len=batch.cache_len,
                               new_len=batch.new_len)
    state = engine.prefill_fn(bundle.model, spec, params, **inputs)
    state = engine.loop_fn(bundle.model, spec, params, state)
    assert int(state.step) == 3  # not 16: the while loop stopped once all rows were done
    assert list(np.asarray(state.count)) == [3, 3, 3, 0]


def test_padding_never_leaks():
    """Each row's output is the same alone, in a batch with longer prompts (other length bucket, padding rows), and
    whatever the pad id."""
    bundle = tiny_bundle("release-lora-bias")
    prompts = PROMPTS + ["x" * 20]  # 21 tokens: the batch's prompt bucket becomes 32
    batch = generate(bundle, prompts, max_new_tokens=6, temperature=0).token_ids
    repadded = generate(with_tokenizer(bundle, pad_id=77), prompts, max_new_tokens=6, temperature=0).token_ids
    assert repadded == batch
    for prompt, row in zip(prompts[:2], batch):
        assert generate(bundle, [prompt], max_new_tokens=6, temperature=0).token_ids[0] == row


def test_context_limit():
    bundle = tiny_bundle("release-lora-bias")
    ctx = bundle.model.config.max_seq_len  # 128
    out = generate(with_tokenizer(bundle, eos_id=-1), ["y" * (ctx - 4)], max_new_tokens=10, temperature=0)
    assert len(out.token_ids[0]) == 3  # BOS + 124 prompt tokens + 3 new = the whole context
    with pytest.raises(PromptTooLong, match="context"):
        generate(bundle, ["y" * (ctx - 1)], max_new_tokens=1)


def test_seeded_sampling_is_reproducible():
    bundle = tiny_bundle("release-lora-bias")
    kw = dict(max_new_tokens=6, temperature=1.0, top_p=1.0)
    a = generate(bundle, PROMPTS, seed=1, **kw).token_ids
    assert generate(bundle, PROMPTS, seed=1, **kw).token_ids == a
    assert generate(bundle, PROMPTS, seed=2, **kw).token_ids != a


def test_bad_inputs():
    bundle = tiny_bundle("release-lora-bias")
    with pytest.raises(ImageNotSupported, match="text-only"):
        generate(bundle, ["hi"], images=random_images(1), max_new_tokens=2)
    assert generate(bundle, [], max_new_tokens=4) == ([], [])
    assert generate(bundle, ["hi"], max_new_tokens=0).token_ids == [[]]
