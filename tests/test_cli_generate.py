"""`lav2 generate` / `lav2 chat` smoke tests on tiny checkpoints (save_pretrained + a tiny sentencepiece model)."""

import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

from ckpt_utils import write_sentencepiece
from generate_helpers import tiny_bundle
from lav2_jax.core import templates
from lav2_jax.checkpoint import load_pretrained, save_pretrained
from lav2_jax.cli.main import main
from lav2_jax.data.images import preprocess
from lav2_jax.inference import generate
from model_utils import TINY

CFG = TINY.replace(vocab_size=64, max_seq_len=512)  # the tokenizer's vocabulary; room for templates


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    sp = write_sentencepiece(str(root / "tok" / "tokenizer.model"), vocab_size=64)
    out = {}
    for name, adapter, vision in (("vision", "release-bias", True), ("text", "release-lora-bias", False)):
        b = tiny_bundle(adapter, vision=vision, config=CFG)
        out[name] = save_pretrained(str(root / name), b.model, b.params, tokenizer=sp)
    img = root / "cat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(img)
    out["image"] = str(img)
    return out


def run_cli(capsys, *argv):
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


GREEDY = ("--temperature", "0", "--max-new-tokens", "6")


def test_generate_streams_the_same_text_as_the_api(ckpts, capsys):
    rc, out, err = run_cli(capsys, "generate", "--ckpt", ckpts["vision"], "--image", ckpts["image"],
                           "--prompt", "the cat", *GREEDY)
    assert rc == 0, err
    bundle = load_pretrained(ckpts["vision"])
    pixels = preprocess(ckpts["image"], 32, bundle.channel_order)
    want = generate(bundle, [templates.alpaca("the cat")], [pixels], max_new_tokens=6, temperature=0).texts[0]
    assert out == want + "\n"
    rc, raw, _ = run_cli(capsys, "generate", "--ckpt", ckpts["text"], "--raw", "--prompt", "the dog", *GREEDY)
    text = load_pretrained(ckpts["text"])
    assert rc == 0 and raw == generate(text, ["the dog"], max_new_tokens=6, temperature=0).texts[0] + "\n"


def test_batch_file(ckpts, capsys, tmp_path):
    (tmp_path / "img.png").write_bytes(open(ckpts["image"], "rb").read())
    rows = [{"prompt": "the cat", "image": "img.png"}, {"prompt": "a dog", "input": "in the park"},
            {"prompt": "the red ball"}]
    batch = tmp_path / "prompts.jsonl"
    batch.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, out, err = run_cli(capsys, "generate", "--ckpt", ckpts["vision"], "--batch-file", str(batch), *GREEDY)
    assert rc == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    bundle = load_pretrained(ckpts["vision"])
    pixels = preprocess(str(tmp_path / "img.png"), 32, bundle.channel_order)
    prompts = [templates.alpaca(r["prompt"], r.get("input")) for r in rows]
    want = generate(bundle, prompts, [pixels, None, None], max_new_tokens=6, temperature=0).texts
    assert got == [{"prompt": r["prompt"], "output": w} for r, w in zip(rows, want)]


def test_caption_expert_end_to_end(ckpts, capsys, monkeypatch):
    from lav2_jax.inference import streaming

    prompts, real = [], streaming.stream_text
    monkeypatch.setattr(streaming, "stream_text", lambda bundle, prompt, image=None, **kw: prompts.append(prompt)
                        or real(bundle, prompt, image, **kw))
    rc, out, err = run_cli(capsys, "generate", "--ckpt", ckpts["vision"], "--image", ckpts["image"],
                           "--prompt", "what is it", "--expert", "caption", *GREEDY)
    assert rc == 0, err
    # The expert's caption: the model's own greedy continuation of the caption prompt (64 new tokens at most, the
    # expert's default), stripped; it fills the Input field, and the model still sees the image.
    bundle = load_pretrained(ckpts["vision"])
    pixels = preprocess(ckpts["image"], 32, bundle.channel_order)
    caption = generate(bundle, [templates.caption_prompt()], [pixels], max_new_tokens=64, temperature=0).texts[0]
    caption = caption.strip()
    assert caption, "the tiny model's caption is blank: the Input field would not be exercised"
    prompt = templates.alpaca("what is it", input=caption)
    assert prompts == [prompt] and f"### Input:\n{caption}\n\n### Response:" in prompt
    assert out == generate(bundle, [prompt], [pixels], max_new_tokens=6, temperature=0).texts[0] + "\n"


@pytest.mark.parametrize("case, argv, message", [
    ("missing checkpoint", ["--ckpt", "/nonexistent/ckpt", "--prompt", "x"], "checkpoint not found"),
    ("missing image", ["--ckpt", "{vision}", "--image", "/nonexistent.png", "--prompt", "x"], "image not found"),
    ("image for a text-only model", ["--ckpt", "{text}", "--image", "{image}", "--prompt", "x"], "text-only"),
    ("prompt longer than the context", ["--ckpt", "{text}", "--raw", "--prompt", "the cat sat " * 200], "context"),
    ("expert without image", ["--ckpt", "{vision}", "--prompt", "x", "--expert", "caption"], "needs an image"),
    ("caption expert, text-only model", ["--ckpt", "{text}", "--image", "{image}", "--prompt", "x", "--expert",
                                         "caption"], "text-only"),
])
def test_user_errors_are_one_line(ckpts, capsys, case, argv, message):
    argv = [a.format(**ckpts) for a in argv]
    rc, out, err = run_cli(capsys, "generate", *argv, "--max-new-tokens", "2")
    assert rc == 2, (case, out, err)
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_ocr_expert_missing_is_a_user_error(ckpts, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytesseract", None)
    rc, _, err = run_cli(capsys, "generate", "--ckpt", ckpts["text"], "--image", ckpts["image"], "--prompt", "read",
                         "--expert", "ocr")
    assert rc == 2 and "pip install pytesseract" in err and "tesseract-ocr" in err


def test_chat(ckpts, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n\nwhat is the cat doing\n/quit\nignored\n"))
    rc, out, err = run_cli(capsys, "chat", "--ckpt", ckpts["vision"], "--image", ckpts["image"], "--system", "S",
                           "--temperature", "0", "--max-new-tokens", "480")
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and all(line.startswith("Assistant: ") for line in lines)
    assert "dropped the oldest" in err  # context 512: the second turn cannot keep the first with 480 reserved


@pytest.fixture(scope="module")
def llava_ckpt(ckpts, tmp_path_factory):
    """A tiny LLaVA checkpoint (spliced, not mPLUG-Owl; 16 visual tokens per 32 px image), the same tokenizer."""
    from ckpt_utils import random_params
    from lav2_jax.core import presets
    from lav2_jax.core.config import SpliceConfig
    from lav2_jax.model.factory import build_model

    adapter = presets.get_adapter("none").replace(splice=SpliceConfig(image_token_id=CFG.vocab_size, n_tokens=16))
    model = build_model(CFG, adapter, presets.get_vision("tiny").replace(output_dim=0))
    return save_pretrained(str(tmp_path_factory.mktemp("llava") / "llava"), model, random_params(model),
                           tokenizer=f"{ckpts['vision']}/tokenizer")


@pytest.mark.parametrize("kind, message", [
    ("vision", "several images need a spliced system: mPLUG-Owl"),  # LLaMA-Adapter V2: no splice at all
    ("llava", "only mPLUG-Owl's template places several images"),
])
def test_several_images_for_a_model_other_than_owl_are_one_line_errors(ckpts, llava_ckpt, capsys, monkeypatch, kind,
                                                                       message):
    ckpt = llava_ckpt if kind == "llava" else ckpts[kind]
    two = ("--image", ckpts["image"], "--image", ckpts["image"])
    raws = [(), ("--raw",)] if kind == "vision" else [()]  # a LLaVA prompt may place its own <image> markers (--raw)
    for raw in raws:
        rc, out, err = run_cli(capsys, "generate", "--ckpt", ckpt, *two, *raw, "--prompt", "x", "--max-new-tokens", "2")
        assert rc == 2 and out == "" and "2 --image given" in err and message in err, (raw, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    rc, out, err = run_cli(capsys, "chat", "--ckpt", ckpt, *two)
    assert rc == 2 and out == "" and "2 --image given: several images per conversation are mPLUG-Owl's" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
