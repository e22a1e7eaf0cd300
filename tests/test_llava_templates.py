"""LLaVA's templates and their token-level loss masks (plain, vicuna_v1, v0), the `<image>` placement of the source
JSON, and `lav2 data build --kind conversation` → the grain pipeline with visual-token placeholders.

Hand-worked expectations spell every sample out piece by piece: `E(text)` = a run's first piece (tokenizer dummy
prefix, after BOS / an image / `</s>`), `C(text)` = a continuation, `IMG` = the image's placeholder run. vicuna_v1 is
also checked against an independent re-implementation of LLaVA's own count-based rule (docs/design.md §4.3
"v1 masking": split on `</s>`, mask each round up to and including `" ASSISTANT: "` by token counts).
"""

import json

import numpy as np
import pytest

from lav2_jax.systems.llava import conversation as ct
from lav2_jax.cli.main import main as lav2_main
from lav2_jax.systems.llava import samples as llava_samples
from lav2_jax.data.pipeline import Pipeline, PipelineConfig, open_source
from lav2_jax.data.testing import train_sentencepiece, write_image

N_IMG, IMG = 5, 500  # visual tokens per image; placeholder id (outside the 400-word vocabulary)
S = ct.VICUNA_V1_SYSTEM


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from lav2_jax.data.tokenizer import load_tokenizer

    extra = [S + " USER: What is this? ASSISTANT: A cat.</s>USER: Colour? ASSISTANT: Grey.</s>"]
    return load_tokenizer(train_sentencepiece(str(tmp_path_factory.mktemp("tok") / "tokenizer.model"), extra))


def _layout(tok, pieces):
    """[(kind, text, loss)] with kind E / C / IMG / EOS → (ids, is_answer) spelled out by hand."""
    ids, ans = [tok.bos_id], [False]
    for kind, text, loss in pieces:
        new = {"E": lambda: tok.encode(text), "C": lambda: tok.encode_continuation(text),
               "IMG": lambda: [IMG] * N_IMG, "EOS": lambda: [tok.eos_id]}[kind]()
        ids += new
        ans += [loss] * len(new)
    return ids, ans


def _check(tok, segments, pieces):
    ids, ans = _layout(tok, pieces)
    got = llava_samples.tokenize(tok, segments, 4096, N_IMG, IMG)
    np.testing.assert_array_equal(got.tokens, ids[:-1])
    np.testing.assert_array_equal(got.targets, ids[1:])
    np.testing.assert_array_equal(got.loss_mask, np.asarray(ans[1:], np.float32))
    assert not got.loss_mask[got.targets == IMG].any()  # no loss on image tokens
    return got


TURNS = [("human", "What is this?"), ("assistant", "A cat."), ("human", "Colour?"), ("assistant", "Grey.")]


def test_vicuna_v1_two_turns_with_image_hand_worked(tok):
    segs = ct.training_segments("vicuna_v1", TURNS, image_turn=0)
    assert ct.render(segs) == (f"{S} USER: <image>\nWhat is this? ASSISTANT: A cat.</s>"
                               "USER: Colour? ASSISTANT: Grey.</s>")
    got = _check(tok, segs, [("E", f"{S} USER: ", False), ("IMG", "", False),
                             ("E", "\nWhat is this? ASSISTANT:", False), ("C", " A cat.", True), ("EOS", "", True),
                             ("E", "USER: Colour? ASSISTANT:", False), ("C", " Grey.", True), ("EOS", "", True)])
    answer = got.targets[got.loss_mask == 1]
    parts = np.split(answer, np.flatnonzero(answer == tok.eos_id) + 1)[:-1]
    assert [tok.decode(p[:-1]) for p in parts] == ["A cat.", "Grey."] and all(p[-1] == tok.eos_id for p in parts)
    assert got.loss_mask.sum() == len(tok.encode_continuation(" A cat.")) + len(tok.encode_continuation(" Grey.")) + 2


def _llava_v1_rule(tok, conversation: str, n_img: int):
    """LLaVA's v1 masking by token counts (docs/design.md §4.3), with a legacy-style tokenizer: `</s>` in text is the
    EOS id and the text after it gets the dummy prefix; `<image>` splits the text into separately tokenized chunks
    (BOS kept for the first only) joined by one image slot, expanded to `n_img` placeholders at the end."""
    def text_ids(text):
        out = []
        for j, part in enumerate(text.split("</s>")):
            out += ([tok.eos_id] if j else []) + (tok.encode(part) if part else [])
        return out

    def image_ids(text):
        out = [tok.bos_id]
        for i, chunk in enumerate(text.split("<image>")):
            out += ([-200] if i else []) + text_ids(chunk)
        return out

    ids = image_ids(conversation)
    labels = list(ids)
    sep = " ASSISTANT: "
    cur = 1
    labels[:cur] = [-100] * cur
    for rou in conversation.split("</s>"):
        if not rou:
            break
        parts = rou.split(sep)
        assert len(parts) == 2
        round_len = len(image_ids(rou))
        instruction_len = len(image_ids(parts[0] + sep)) - 2
        labels[cur:cur + instruction_len] = [-100] * instruction_len
        cur += round_len
    labels[cur:] = [-100] * (len(labels) - cur)
    assert cur == len(ids), "the count-based rule disagrees with the real length"
    expanded_ids, expanded_labels = [], []
    for i, lab in zip(ids, labels):
        expanded_ids += [IMG] * n_img if i == -200 else [i]
        expanded_labels += [-100] * n_img if i == -200 else [lab]
    return np.asarray(expanded_ids), np.asarray(expanded_labels)


@pytest.mark.parametrize("image_turn,turns", [(0, TURNS), (-1, TURNS), (0, TURNS[:2]),
                                              (0, TURNS + [("human", "Why?"), ("assistant", "It is a cat.")])])
def test_vicuna_v1_equals_llava_count_rule(tok, image_turn, turns):
    segs = ct.training_segments("vicuna_v1", turns, image_turn=image_turn)
    ids, labels = _llava_v1_rule(tok, ct.render(segs), N_IMG)
    got = llava_samples.tokenize(tok, segs, 4096, N_IMG, IMG)
    np.testing.assert_array_equal(got.tokens, ids[:-1])
    np.testing.assert_array_equal(got.loss_mask, (labels[1:] != -100).astype(np.float32))
    np.testing.assert_array_equal(got.targets[got.loss_mask == 1], labels[1:][labels[1:] != -100])


def test_plain_hand_worked(tok):
    segs = ct.training_segments("plain", [("human", "Describe the image briefly."), ("assistant", "A red bus.")], 0)
    assert ct.render(segs) == "<image>A red bus.\n"
    got = _check(tok, segs, [("IMG", "", False), ("E", "A red bus.\n", True)])
    assert got.tokens[0] == tok.bos_id and (got.tokens[1:1 + N_IMG] == IMG).all()  # BOS + image masked
    assert tok.eos_id not in got.targets  # no EOS
    assert llava_samples.record_segments({"roles": ["human", "assistant"], "values": ["q", "a"], "has_image": False},
                                         "plain") is None  # stage-1 samples need an image


def test_v0_two_turns_hand_worked(tok):
    segs = ct.training_segments("v0", TURNS, image_turn=0)
    sys0 = ct.V0_SYSTEM
    assert ct.render(segs) == (f"{sys0}\n\n### Human: <image>\nWhat is this?\n### Assistant: A cat.\n###"
                               " Human: Colour?\n### Assistant: Grey.\n###")
    got = _check(tok, segs, [("E", f"{sys0}\n\n### Human: ", False), ("IMG", "", False),
                             ("E", "\nWhat is this?\n### Assistant:", False), ("C", " A cat.\n###", True),
                             ("C", " Human: Colour?\n### Assistant:", False), ("C", " Grey.\n###", True)])
    assert tok.decode(got.targets[got.loss_mask == 1]).replace("###", "|") == "A cat.\n| Grey.\n|"


def test_llava_v1_system_and_text_only(tok):
    segs = ct.training_segments("llava_v1", TURNS[:2])
    assert ct.render(segs) == f"{ct.LLAVA_V1_SYSTEM} USER: What is this? ASSISTANT: A cat.</s>"
    got = _check(tok, segs, [("E", f"{ct.LLAVA_V1_SYSTEM} USER: What is this? ASSISTANT:", False),
                             ("C", " A cat.", True), ("EOS", "", True)])
    assert IMG not in got.tokens
    own = ct.training_segments("vicuna_v1", TURNS[:2], system="Be brief.")
    assert ct.render(own).startswith("Be brief. USER: ")


def test_generation_prompts_and_stops():
    assert ct.prompt("vicuna_v1", [("human", "What is this?")], 0) == f"{S} USER: <image>\nWhat is this? ASSISTANT:"
    assert ct.prompt("vicuna_v1", TURNS + [("human", "Why?")], 0) == (
        f"{S} USER: <image>\nWhat is this? ASSISTANT: A cat.</s>USER: Colour? ASSISTANT: Grey.</s>USER: Why? "
        "ASSISTANT:")
    assert ct.prompt("v0", [("human", "Hi")]) == f"{ct.V0_SYSTEM}\n\n### Human: Hi\n### Assistant:"
    assert ct.prompt("plain", [("human", "ignored")], 0) == "<image>"
    assert ct.stop_strings("vicuna_v1") == ("</s>",) and ct.stop_strings("v0") == ("###",)
    with pytest.raises(ValueError, match="unknown conversation template"):
        ct.prompt("chatml", [("human", "x")])


def test_truncation_keeps_whole_images(tok):
    segs = ct.training_segments("vicuna_v1", [("human", "Q"), ("assistant", "A long answer here.")], 0)
    full = llava_samples.tokenize(tok, segs, 4096, N_IMG, IMG)
    start = int(np.flatnonzero(full.tokens == IMG)[0])
    assert llava_samples.tokenize(tok, segs, start + 2, N_IMG, IMG) is None  # cut inside the image: dropped
    kept = llava_samples.tokenize(tok, segs, len(full.tokens) - 2, N_IMG, IMG)  # the budget counts image tokens
    assert len(kept.tokens) == len(full.tokens) - 2 and (kept.tokens == IMG).sum() == N_IMG


def test_data_build_conversation_to_llava_batches(tmp_path, tok):
    """LLaVA JSON (instruct-150k style with `<image>` after the question, a 558K caption pair, a text-only
    ShareGPT sample of mix665k) → `lav2 data build --kind conversation` → the pipeline with placeholders."""
    write_image(str(tmp_path / "coco" / "a.png"), 40, 24, seed=1)
    data = [
        {"id": "1", "image": "a.png", "conversations": [
            {"from": "human", "value": "What is this?\n<image>"}, {"from": "gpt", "value": "A cat."},
            {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Grey."}]},
        {"id": "2", "image": "a.png", "conversations": [
            {"from": "human", "value": "<image>\nRender a clear and concise summary of the photo."},
            {"from": "gpt", "value": "a grey cat on a sofa"}]},
        {"id": "3", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]
    src = tmp_path / "llava_v1_5_mix665k.json"
    src.write_text(json.dumps(data))
    out = str(tmp_path / "ds")
    assert lav2_main(["data", "build", "--kind", "conversation", "--src", str(src), "--image-root",
                      str(tmp_path / "coco"), "--out", out, "--workers", "0", "--quiet"]) == 0
    records = {r["source"].decode().rsplit(" ", 1)[-1]: r for r in open_source(out)}
    assert [int(records[k]["image_turn"]) for k in sorted(records)] == [0, 0, -1]
    cfg = dict(batch_size=3, max_len=256, shuffle=False, num_epochs=1, train=True, image_size=16, shard_index=0,
               shard_count=1, image_tokens=N_IMG, image_token_id=IMG, image_aspect="pad")
    batch = next(iter(Pipeline(out, tok, PipelineConfig(system="llava", template="vicuna_v1", **cfg))))
    order = [r["source"].decode() for r in open_source(out)]
    assert batch["has_image"].tolist() == [bool(open_source(out)[i]["has_image"]) for i in range(3)]
    expected_img = llava_samples.preprocess_image(str(tmp_path / "coco" / "a.png"), 16, "pad")
    for row, where in enumerate(order):
        rec = open_source(out)[row]
        want = llava_samples.tokenize(tok, llava_samples.record_segments(rec, "vicuna_v1"), 256, N_IMG, IMG)
        n = len(want.tokens)
        np.testing.assert_array_equal(batch["tokens"][row, :n], want.tokens)
        np.testing.assert_array_equal(batch["loss_mask"][row, :n], want.loss_mask)
        assert not batch["loss_mask"][row, n:].any()
        assert (batch["tokens"][row] == IMG).sum() == (N_IMG if rec["has_image"] else 0)
        if rec["has_image"]:
            np.testing.assert_allclose(batch["images"][row], expected_img, atol=1e-6)  # no augmentation
        else:
            assert not batch["images"][row].any()
    row = next(i for i in range(3) if open_source(out)[i]["values"][0] == b"What is this?")
    after = batch["tokens"][row][np.flatnonzero(batch["tokens"][row] == IMG)[-1] + 1:]
    head = tok.encode("\nWhat is this? ASSISTANT:")  # `<image>` moved to the front of its turn
    np.testing.assert_array_equal(after[:len(head)], head)
    plain = list(Pipeline(out, tok, PipelineConfig(system="llava", template="plain", **{**cfg, "batch_size": 1})))
    assert len(plain) == 2  # the text-only sample is no stage-1 sample: dropped and counted
    cap = [b for b in plain if tok.decode(b["targets"][0][b["loss_mask"][0] == 1]).startswith("a grey cat")]
    assert cap and (cap[0]["tokens"][0, 1:1 + N_IMG] == IMG).all()


def test_pad_to_square_fills_mean_colour():
    from PIL import Image

    from lav2_jax.data.images import expand_to_square

    img = Image.new("RGB", (30, 10), (255, 0, 0))
    sq = expand_to_square(img)
    assert sq.size == (30, 30) and sq.getpixel((0, 0)) == (122, 116, 104) and sq.getpixel((15, 15)) == (255, 0, 0)


def test_inference_prompts_of_a_llava_checkpoint_use_vicuna_v1():
    from lav2_jax.core import presets
    from lav2_jax.core import templates
    from lav2_jax.inference import prompts as system_templates

    adapter = presets.get_adapter("llava15")
    assert adapter.system == "llava"
    one = system_templates.instruction_prompt(adapter, "What is it?", image=True)
    assert one == ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                   "helpful, detailed, and polite answers to the user's questions. "
                   "USER: <image>\nWhat is it? ASSISTANT:")
    two = system_templates.chat_prompt(adapter, [("human", "What is it?"), ("assistant", "A cat."),
                                                 ("human", "Colour?")], image=True)
    assert two.endswith("USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Colour? ASSISTANT:")
    assert system_templates.chat_stop(adapter) == "</s>"
    assert "<image>" in system_templates.caption_prompt(adapter)
    alpaca = templates.alpaca("Is it red?")
    assert system_templates.from_alpaca(adapter, alpaca, image=True).endswith("USER: <image>\nIs it red? ASSISTANT:")
