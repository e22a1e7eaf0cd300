"""Templates (docs/design.md §3.3.2), the two tokenizer back ends, and the sample rule
(tokens/targets/mask/truncation)."""

import json
import pickle

import numpy as np
import pytest

from lav2_jax.core import templates
from lav2_jax.data import samples
from lav2_jax.data.testing import train_sentencepiece
from lav2_jax.data.tokenizer import HFTokenizer, SentencePieceTokenizer, encode_segments, load_tokenizer


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    return load_tokenizer(train_sentencepiece(str(tmp_path_factory.mktemp("tok") / "tokenizer.model")))


def test_template_strings_are_design_section_3():
    assert templates.alpaca("Do X.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nDo X.\n\n### Response:")
    assert templates.alpaca("Do X.", "ctx") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nDo X.\n\n### Input:\n"
        "ctx\n\n### Response:")
    assert templates.alpaca("Do X.", "  ") == templates.alpaca("Do X.")  # blank input = no-input form
    assert templates.caption_prompt() == templates.alpaca("Generate caption of this image")
    system = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the human's questions.")
    turns = [("human", "Hi"), ("assistant", "Hello"), ("human", "Name?"), ("assistant", "Bot")]
    segs = templates.chat_segments(turns)
    assert segs == [(system + "###Human: Hi###Assistant:", False), (" Hello###", True),
                    ("Human: Name?###Assistant:", False), (" Bot", True)]
    assert templates.chat_prompt(turns[:3]) == system + "###Human: Hi###Assistant: Hello###Human: Name?###Assistant:"
    with pytest.raises(ValueError, match="alternate"):
        templates.chat_segments([("assistant", "x"), ("human", "y")])


def test_sentencepiece_ids_and_exact_round_trip(sp):
    assert (sp.bos_id, sp.eos_id, sp.pad_id) == (1, 2, 0)
    texts = [templates.alpaca("Give three tips for staying healthy."),
             templates.alpaca("Translate to French", "Hello   world\n  two spaces"),
             templates.caption_prompt(), templates.chat_prompt([("human", "What is in the picture?")]),
             "unicode é 🙂 survives via byte fallback"]
    for t in texts:
        ids = sp.encode(t, bos=True, eos=True)
        assert ids[0] == 1 and ids[-1] == 2
        assert sp.decode(ids[1:-1]) == t
    # Segments concatenate to the exact text (continuations carry no dummy-prefix space).
    segs = templates.chat_segments([("human", "Hi"), ("assistant", "A dog."), ("human", "More?"), ("assistant", "No")])
    ids, answer = encode_segments(sp, segs)
    assert sp.decode(ids[1:-1]) == "".join(t for t, _ in segs)
    answer_ids = [i for i, a in zip(ids[:-1], answer[:-1]) if a]
    assert sp.decode(answer_ids) == "A dog.### No"  # sentencepiece drops only the leading space when decoding
    assert pickle.loads(pickle.dumps(sp)).encode("a dog") == sp.encode("a dog")


def test_hf_tokenizer_directory(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([templates.caption_prompt(), "A dog runs on the beach."] * 5, trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|end_of_text|>"}}))
    hf = load_tokenizer(str(tmp_path))
    assert isinstance(hf, HFTokenizer)
    assert (hf.bos_id, hf.eos_id, hf.pad_id) == (0, 1, 0)
    text = templates.alpaca("Describe.", "A dog.")
    ids = hf.encode(text, bos=True, eos=True)
    assert ids[0] == 0 and ids[-1] == 1 and hf.decode(ids[1:-1]) == text
    ids, _ = encode_segments(hf, templates.caption_segments("A dog runs."))
    assert hf.decode(ids[1:-1]) == templates.caption_prompt() + "A dog runs."
    assert pickle.loads(pickle.dumps(hf)).encode("dog") == hf.encode("dog")


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="no such tokenizer"):
        load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="neither tokenizer.json nor tokenizer.model"):
        load_tokenizer(str(tmp_path))
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.model"):
        SentencePieceTokenizer(str(bad))


def test_sample_tokens_targets_mask_by_hand(sp):
    rec = {"instruction": "Say hi", "input": "", "output": "hi there"}
    prompt, answer = sp.encode(templates.alpaca("Say hi")), sp.encode_continuation("hi there")
    ids = [1] + prompt + answer + [2]
    out = samples.tokenize(sp, samples.record_segments(rec), max_len=512)
    np.testing.assert_array_equal(out.tokens, ids[:-1])
    np.testing.assert_array_equal(out.targets, ids[1:])
    expected_mask = [0.0] * len(prompt) + [1.0] * (len(answer) + 1)  # answer tokens and the final EOS
    np.testing.assert_array_equal(out.loss_mask, expected_mask)
    assert out.tokens.dtype == np.int32 and out.loss_mask.dtype == np.float32
    # Truncation keeping one answer token: the sample survives with exactly one loss position.
    cut = samples.tokenize(sp, samples.record_segments(rec), max_len=len(prompt) + 1)
    assert len(cut.tokens) == len(prompt) + 1 and cut.loss_mask.sum() == 1.0
    # Truncation cutting every answer token: dropped.
    assert samples.tokenize(sp, samples.record_segments(rec), max_len=len(prompt)) is None


def test_conversation_mask_only_on_assistant_turns(sp):
    rec = {"roles": ["human", "assistant", "human", "assistant"], "values": ["Hi", "Yo", "Why?", "Because"],
           "system": ""}
    segs = samples.record_segments(rec)
    out = samples.tokenize(sp, segs, max_len=1024)
    ids = np.concatenate([out.tokens[:1], out.targets])
    lengths = [len(sp.encode(segs[0][0]))] + [len(sp.encode_continuation(t)) for t, _ in segs[1:]]
    expected = np.concatenate([np.full(n, float(a)) for n, (_, a) in zip(lengths, segs)] + [[1.0]])
    np.testing.assert_array_equal(out.loss_mask, expected)
    assert ids[-1] == sp.eos_id and out.loss_mask[-1] == 1.0
    masked_text = sp.decode([t for t, m in zip(out.targets, out.loss_mask) if m][:-1])
    assert masked_text == "Yo### Because"
