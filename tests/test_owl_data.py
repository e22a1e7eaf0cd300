"""mPLUG-Owl's templates, masking and data (docs/design.md §5.3): `lav2 data build --kind owl` → the pipeline.

Proves: the generation prompt is the release's text exactly; a jsonl of Owl objects (`text` + `image` list) builds
with text-only and multi-image samples kept and mismatched / misplaced-image samples skipped with counted reasons;
read back through the pipeline with `system="owl"`, every sample is BOS + separately tokenized text chunks with
Q + 1 placeholder ids at each `<image>` (in place), loss exactly on each answer and the EOS after it (never on the
system text, `Human:` turns, role tags, image tokens or padding); image j of a sample fills slot j of `images`
[B, max_images, ...] (padding slots zero and marked False), a sample with more images than slots is dropped and
counted, packing puts a sample's images in consecutive slots of its row; the evaluation image is a plain bicubic
resize (no crop), and training with `augment=False` gives exactly that.
"""

import json

import numpy as np
import pytest
from PIL import Image

from lav2_jax.systems.owl import templates as ot
from lav2_jax.cli.main import main as lav2_main
from lav2_jax.data import images
from lav2_jax.data.pipeline import Pipeline, PipelineConfig, open_source
from lav2_jax.data.testing import train_sentencepiece, write_image

SIZE, N_TOK, PID = 32, 5, -1


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from lav2_jax.data.tokenizer import load_tokenizer

    return load_tokenizer(train_sentencepiece(str(tmp_path_factory.mktemp("tok") / "tokenizer.model")))


def test_generation_prompt_is_the_release_text():
    want = ("The following is a conversation between a curious human and AI assistant. The assistant gives helpful, "
            "detailed, and polite answers to the user's questions.\nHuman: <image>\nHuman: What is this?\nAI: ")
    assert ot.prompt("What is this?", image=True) == want
    two = ot.prompt("And now?", history=[("human", "Hi"), ("assistant", "Hello")])
    assert two == ot.SYSTEM + "\nHuman: Hi\nAI: Hello\nHuman: And now?\nAI: "


def _expected(tok, chunks):
    """(tokens, targets, loss_mask) from (text | 'IMAGE' | 'EOS', is_answer) chunks, each tokenized on its own."""
    ids, mask = [tok.bos_id], [False]
    for text, ans in chunks:
        piece = [PID] * N_TOK if text == "IMAGE" else [tok.eos_id] if text == "EOS" else tok.encode(text)
        ids += piece
        mask += [ans] * len(piece)
    return np.array(ids[:-1]), np.array(ids[1:]), np.array(mask[1:], np.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`lav2 data build --kind owl` over one image sample, one text-only, one with two images (cat, then dog), and
    three it must skip; (folder, source file, dataset, records by source line)."""
    tmp_path = tmp_path_factory.mktemp("owl_data")
    write_image(str(tmp_path / "cat.png"), 50, 40, seed=1)
    write_image(str(tmp_path / "dog.png"), 36, 44, seed=2)
    rows = [
        {"image": ["cat.png"], "text": ot.SYSTEM + "\nHuman: <image>\nHuman: What is this?\nAI: A cat.\n"
                                                  "Human: Colour?\nAI: Grey."},
        {"image": [], "text": ot.SYSTEM + "\nHuman: Say hi\nAI: Hello", "task_type": "text"},
        {"image": ["cat.png", "dog.png"], "text": "\nHuman: <image>\nHuman: <image>\nHuman: Same?\nAI: No.\n"
                                                  "Human: <image>\nHuman: And now?\nAI: Yes."},
        {"image": ["cat.png"], "text": "\nHuman: no image line\nAI: ok"},
        {"image": ["cat.png"], "text": "\nHuman: Look\nHuman: <image>\nAI: ok"},
        {"image": ["cat.png", "dog.png", "cat.png"], "text": "\nHuman: <image>\nHuman: <image>\nHuman: <image>\n"
                                                             "Human: Same?\nAI: No."},
    ]
    rows[2]["image"].append("cat.png")  # the third image line (before the second question) shows the cat again
    src = tmp_path / "owl.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "ds")
    assert lav2_main(["data", "build", "--kind", "owl", "--src", str(src), "--image-root", str(tmp_path),
                      "--out", out, "--workers", "0", "--quiet"]) == 0
    return tmp_path, src, out, {int(r["source"].decode().rsplit(":", 1)[1]): r for r in open_source(out)}


def _pipeline(out, tok, **kw):
    cfg = dict(batch_size=1, max_len=512, shuffle=False, num_epochs=1, train=False, image_size=SIZE, shard_index=0,
               shard_count=1, system="owl", image_tokens=N_TOK, image_token_id=PID)
    return Pipeline(out, tok, PipelineConfig(**{**cfg, **kw}))


def _resized(path):
    img = Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return images.normalize(np.asarray(img))


def test_build_and_pipeline(built, tok):
    tmp_path, src, out, records = built
    assert sorted(records) == [1, 2, 3, 6]  # the two- and three-image samples are kept
    report = json.load(open(f"{out}/build_report.json"))
    assert report["kept"] == 4 and report["skipped"] == {"<image> lines do not match the image list": 1,
                                                         "an <image> line before an AI turn": 1}, report
    assert len(records[3]["more_images"]) == 2 and records[3]["more_image_turns"].tolist() == [0, 2]
    wheres = [r["source"].decode() for r in open_source(out)]
    by_where = dict(zip(wheres, _pipeline(out, tok, max_images=3)))
    img = by_where[f"{src}:1"]
    want = _expected(tok, [(ot.SYSTEM + "\nHuman: ", False), ("IMAGE", False),
                           ("\nHuman: What is this?\nAI: ", False), ("A cat.", True), ("EOS", True),
                           ("\nHuman: Colour?\nAI: ", False), ("Grey.", True), ("EOS", True)])
    n = len(want[0])
    for key, value in zip(("tokens", "targets", "loss_mask"), want):
        np.testing.assert_array_equal(img[key][0, :n], value, err_msg=key)
    assert not img["loss_mask"][0, n:].any() and img["has_image"].tolist() == [[True, False, False]]
    assert (img["tokens"][0] == PID).sum() == N_TOK
    np.testing.assert_allclose(img["images"][0, 0], _resized(tmp_path / "cat.png"), atol=1e-6)
    assert not img["images"][0, 1:].any()  # padding slots: zeros, marked False, no placeholder refers to them
    text = by_where[f"{src}:2"]
    want = _expected(tok, [(ot.SYSTEM + "\nHuman: Say hi\nAI: ", False), ("Hello", True), ("EOS", True)])
    n = len(want[0])
    for key, value in zip(("tokens", "targets", "loss_mask"), want):
        np.testing.assert_array_equal(text[key][0, :n], value, err_msg=key)
    assert text["has_image"].tolist() == [[False] * 3] and not (text["tokens"] == PID).any()
    # several `Human: <image>` lines: one run of Q + 1 placeholders each, in place; image j in slot j
    multi = by_where[f"{src}:3"]
    want = _expected(tok, [(ot.SYSTEM + "\nHuman: ", False), ("IMAGE", False), ("\nHuman: ", False),
                           ("IMAGE", False), ("\nHuman: Same?\nAI: ", False), ("No.", True), ("EOS", True),
                           ("\nHuman: ", False), ("IMAGE", False), ("\nHuman: And now?\nAI: ", False),
                           ("Yes.", True), ("EOS", True)])
    n = len(want[0])
    for key, value in zip(("tokens", "targets", "loss_mask"), want):
        np.testing.assert_array_equal(multi[key][0, :n], value, err_msg=key)
    assert multi["has_image"].tolist() == [[True, True, True]]
    for j, name in enumerate(("cat.png", "dog.png", "cat.png")):
        np.testing.assert_allclose(multi["images"][0, j], _resized(tmp_path / name), atol=1e-6)
    # one image slot (the default): the multi-image samples do not fit and are dropped, counted
    it = iter(_pipeline(out, tok, batch_size=1, drop_remainder=False))
    single = list(it)
    assert len(single) == 2 and it.dropped == 2 and single[0]["images"].shape == (1, SIZE, SIZE, 3)


def test_packed_owl_stream_puts_a_samples_images_in_consecutive_slots(built, tok):
    tmp_path, src, out, _ = built
    batches = list(_pipeline(out, tok, batch_size=2, max_images=3, packing=True, max_segments=4,
                             drop_remainder=False))
    assert all(b["images"].shape[1:] == (4, SIZE, SIZE, 3) for b in batches)
    found = 0
    for b in batches:
        for r in range(2):
            starts = np.flatnonzero(np.diff(np.concatenate([[0], b["tokens"][r] == PID]).astype(int)) == 1)
            assert int(b["has_image"][r].sum()) == len(starts)  # one filled slot per placeholder run of the row
            for s in range(1, int(b["segment_ids"][r].max()) + 1):
                span = np.flatnonzero(b["segment_ids"][r] == s)
                mine = [k for k, t in enumerate(starts) if span[0] <= t <= span[-1]]  # this sample's runs → slots
                if len(mine) == 3:
                    found += 1
                    for k, name in zip(mine, ("cat.png", "dog.png", "cat.png")):
                        np.testing.assert_allclose(b["images"][r, k], _resized(tmp_path / name), atol=1e-6)
    assert found == 2 and sum(int(b["segment_ids"].max(1).sum()) for b in batches) == 4  # samples 3 and 6
    with pytest.raises(ValueError, match="max_segments"):
        _pipeline(out, tok, max_images=3, packing=True, max_segments=2)


def test_augment_false_gives_the_evaluation_resize(built, tok):
    """Training with `augment=False` (configs/demo_owl.py) gives exactly the evaluation resize, whatever the seed;
    with the default (the release's crop + flip) the training image differs from it."""
    tmp_path, src, out, _ = built
    cat = _resized(tmp_path / "cat.png")
    for seed in (0, 1):
        batch = next(iter(_pipeline(out, tok, train=True, augment=False, seed=seed)))
        np.testing.assert_array_equal(batch["images"][0], cat)
    augmented = next(iter(_pipeline(out, tok, train=True, seed=0)))
    assert np.abs(augmented["images"][0] - cat).max() > 0.1


def test_system_prompt_dispatch():
    """Front ends render prompts per system: Owl's Human/AI format (with `<image>` when an image is given),
    LLaMA-Adapter V2's Alpaca / ### formats unchanged; the benchmarks' Alpaca prompts are re-rendered for Owl."""
    from lav2_jax.core import presets
    from lav2_jax.inference import prompts as st
    from lav2_jax.core import templates

    owl, lav2 = presets.get_adapter("owl"), presets.get_adapter("paper")
    assert st.instruction_prompt(owl, "Is it red?", image=True) == ot.prompt("Is it red?", image=True)
    assert st.from_alpaca(owl, templates.alpaca("Is it red?"), True) == ot.prompt("Is it red?", image=True)
    assert st.from_alpaca(owl, templates.alpaca("Q", "ctx")) == ot.prompt("Q\nctx")
    assert st.from_alpaca(lav2, templates.alpaca("Q")) == templates.alpaca("Q") == st.instruction_prompt(lav2, "Q")
    turns = [("human", "Hi"), ("assistant", "Hello"), ("human", "Bye")]
    assert st.chat_prompt(owl, turns, image=True) == ot.prompt("Bye", image=True, history=turns[:2])
    assert st.chat_prompt(lav2, turns) == templates.chat_prompt(turns)
    assert st.chat_stop(owl) == "\nHuman:" and st.caption_prompt(lav2) == templates.caption_prompt()
