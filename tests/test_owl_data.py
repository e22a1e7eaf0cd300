"""mPLUG-Owl's templates, masking and data (SEED_SYSTEMS.md §3.3): `lav2 data build --kind owl` → the pipeline.

Proves: the generation prompt is the release's text exactly; a jsonl of Owl objects (`text` + `image` list) builds
with text-only samples kept and multi-image / mismatched samples skipped with counted reasons; read back through
the pipeline with `template="owl"`, every sample is BOS + separately tokenized text chunks with Q + 1 placeholder
ids at `<image>` (in place), loss exactly on each answer and the EOS after it (never on the system text, `Human:`
turns, role tags, image tokens or padding); the evaluation image is a plain bicubic resize (no crop).
"""

import json

import numpy as np
import pytest
from PIL import Image

from lav2_jax import owl_templates as ot
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


def test_build_and_pipeline(tmp_path, tok):
    write_image(str(tmp_path / "cat.png"), 50, 40, seed=1)
    rows = [
        {"image": ["cat.png"], "text": ot.SYSTEM + "\nHuman: <image>\nHuman: What is this?\nAI: A cat.\n"
                                                  "Human: Colour?\nAI: Grey."},
        {"image": [], "text": ot.SYSTEM + "\nHuman: Say hi\nAI: Hello", "task_type": "text"},
        {"image": ["cat.png", "cat.png"], "text": "\nHuman: <image>\nHuman: <image>\nHuman: Same?\nAI: Yes"},
        {"image": ["cat.png"], "text": "\nHuman: no image line\nAI: ok"},
    ]
    src = tmp_path / "owl.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "ds")
    assert lav2_main(["data", "build", "--kind", "owl", "--src", str(src), "--image-root", str(tmp_path),
                      "--out", out, "--workers", "0", "--quiet"]) == 0
    wheres = [r["source"].decode() for r in open_source(out)]
    assert sorted(wheres) == [f"{src}:1", f"{src}:2"]
    report = json.load(open(f"{out}/build_report.json"))
    assert report["skipped"] == {"more than one image (one image slot per sequence)": 1,
                                 "<image> lines do not match the image list": 1}, report
    cfg = PipelineConfig(batch_size=1, max_len=512, shuffle=False, num_epochs=1, train=False, image_size=SIZE,
                         shard_index=0, shard_count=1, template="owl", image_tokens=N_TOK, image_token_id=PID)
    by_where = dict(zip(wheres, Pipeline(out, tok, cfg)))
    img = by_where[f"{src}:1"]
    want = _expected(tok, [(ot.SYSTEM + "\nHuman: ", False), ("IMAGE", False),
                           ("\nHuman: What is this?\nAI: ", False), ("A cat.", True), ("EOS", True),
                           ("\nHuman: Colour?\nAI: ", False), ("Grey.", True), ("EOS", True)])
    n = len(want[0])
    for key, value in zip(("tokens", "targets", "loss_mask"), want):
        np.testing.assert_array_equal(img[key][0, :n], value, err_msg=key)
    assert not img["loss_mask"][0, n:].any() and img["has_image"].tolist() == [True]
    assert (img["tokens"][0] == PID).sum() == N_TOK
    resized = Image.open(tmp_path / "cat.png").convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    np.testing.assert_allclose(img["images"][0], images.normalize(np.asarray(resized)), atol=1e-6)
    text = by_where[f"{src}:2"]
    want = _expected(tok, [(ot.SYSTEM + "\nHuman: Say hi\nAI: ", False), ("Hello", True), ("EOS", True)])
    n = len(want[0])
    for key, value in zip(("tokens", "targets", "loss_mask"), want):
        np.testing.assert_array_equal(text[key][0, :n], value, err_msg=key)
    assert text["has_image"].tolist() == [False] and not (text["tokens"] == PID).any()


def test_system_prompt_dispatch():
    """Front ends render prompts per system: Owl's Human/AI format (with `<image>` when an image is given),
    LLaMA-Adapter V2's Alpaca / ### formats unchanged; the benchmarks' Alpaca prompts are re-rendered for Owl."""
    from lav2_jax import presets, system_templates as st, templates

    owl, lav2 = presets.get_adapter("owl"), presets.get_adapter("paper")
    assert st.instruction_prompt(owl, "Is it red?", image=True) == ot.prompt("Is it red?", image=True)
    assert st.from_alpaca(owl, templates.alpaca("Is it red?"), True) == ot.prompt("Is it red?", image=True)
    assert st.from_alpaca(owl, templates.alpaca("Q", "ctx")) == ot.prompt("Q\nctx")
    assert st.from_alpaca(lav2, templates.alpaca("Q")) == templates.alpaca("Q") == st.instruction_prompt(lav2, "Q")
    turns = [("human", "Hi"), ("assistant", "Hello"), ("human", "Bye")]
    assert st.chat_prompt(owl, turns, image=True) == ot.prompt("Bye", image=True, history=turns[:2])
    assert st.chat_prompt(lav2, turns) == templates.chat_prompt(turns)
    assert st.chat_stop(owl) == "\nHuman:" and st.caption_prompt(lav2) == templates.caption_prompt()
