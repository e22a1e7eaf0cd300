"""Expert models (paper §4.4): the prompt composition, the expert registry, caption and OCR experts (faked I/O),
and the OCR expert with the real `pytesseract` and Tesseract binary on a drawn sign."""

import shutil
import sys
import types

import numpy as np
import pytest
from PIL import Image

from generate_helpers import tiny_bundle
from lav2_jax.core import presets, templates
from lav2_jax.inference import experts
from lav2_jax.inference.experts import (CaptionExpert, ExpertUnavailable, OcrExpert, expert_prompt, get_expert,
                                        register_expert)


class FakeExpert:
    name = "fake"

    def __init__(self, text: str):
        self.text, self.seen = text, []

    def __call__(self, image):
        self.seen.append(image)
        return self.text


def test_expert_text_fills_the_alpaca_input_field():
    fake = FakeExpert("  a red ball on the grass \n")
    prompt = expert_prompt("What is in the picture?", "photo.png", fake)
    assert fake.seen == ["photo.png"]
    assert prompt == templates.alpaca("What is in the picture?", input="a red ball on the grass")
    assert prompt == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nWhat is in the picture?"
        "\n\n### Input:\na red ball on the grass\n\n### Response:")
    # An expert that finds nothing gives the no-input template.
    assert expert_prompt("Describe.", "x.png", FakeExpert(" \n")) == templates.alpaca("Describe.")


def test_registry():
    register_expert("fake", lambda bundle, **kw: FakeExpert("t"))
    try:
        assert get_expert("fake").name == "fake"
    finally:
        experts.EXPERTS.pop("fake")
    with pytest.raises(ValueError, match="unknown expert 'nope'"):
        get_expert("nope")


def test_caption_expert_uses_the_caption_prompt(tmp_path, monkeypatch):
    path = tmp_path / "img.png"
    Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(path)
    calls = []

    def fake_generate(bundle, prompts, images=None, **kw):
        calls.append((prompts, images, kw))
        return types.SimpleNamespace(texts=[" a grey square "])

    monkeypatch.setattr("lav2_jax.inference.experts.generate", fake_generate)
    bundle = tiny_bundle("release-bias", vision=True)
    text = CaptionExpert(bundle)(str(path))
    assert text == "a grey square"
    (prompts, images, kw), = calls
    assert prompts == [templates.caption_prompt()] and kw["temperature"] == 0.0
    assert len(images) == 1 and images[0].shape == (32, 32, 3) and images[0].dtype == np.float32
    with pytest.raises(ExpertUnavailable, match="text-only"):
        CaptionExpert(tiny_bundle("release-lora-bias"))


def test_ocr_expert_missing_dependencies_are_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytesseract", None)  # import fails
    with pytest.raises(ExpertUnavailable, match="pip install pytesseract.*tesseract-ocr"):
        OcrExpert()

    class NotFound(OSError):
        pass

    def missing_binary():
        raise NotFound("tesseract is not installed")

    fake = types.SimpleNamespace(TesseractNotFoundError=NotFound, get_tesseract_version=missing_binary)
    monkeypatch.setitem(sys.modules, "pytesseract", fake)
    with pytest.raises(ExpertUnavailable, match="binary was not found.*apt-get install tesseract-ocr"):
        OcrExpert()


def test_ocr_expert_text(monkeypatch, tmp_path):
    seen = []
    fake = types.SimpleNamespace(
        TesseractNotFoundError=OSError, get_tesseract_version=lambda: "5.3",
        image_to_string=lambda img, lang: seen.append((img.size, lang)) or " STOP\n\n  slow \x0c")
    monkeypatch.setitem(sys.modules, "pytesseract", fake)
    path = tmp_path / "sign.png"
    Image.fromarray(np.zeros((20, 50, 3), np.uint8)).save(path)
    assert OcrExpert()(str(path)) == "STOP slow"
    assert seen == [((50, 20), "eng")]


def _real_tesseract() -> bool:
    try:
        import pytesseract  # noqa: F401
    except ImportError:
        return False
    return shutil.which("tesseract") is not None


@pytest.mark.skipif(not _real_tesseract(), reason="needs pytesseract (the eval extra) and the tesseract binary "
                    "(Debian: apt-get install tesseract-ocr)")
def test_ocr_expert_reads_a_drawn_sign_into_the_prompt(tmp_path):
    from matplotlib import font_manager
    from PIL import ImageDraw, ImageFont

    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=False), 56)
    img = Image.new("RGB", (640, 220), "white")
    draw = ImageDraw.Draw(img)
    draw.text((30, 25), "LEMON TEA", fill="black", font=font)  # two lines: the expert joins them with one space
    draw.text((30, 120), "open daily 42", fill="black", font=font)
    path = tmp_path / "sign.png"
    img.save(path)
    expert = get_expert("ocr")
    assert expert(str(path)) == "LEMON TEA open daily 42"
    assert expert_prompt("What does the sign say?", str(path), expert) == templates.alpaca(
        "What does the sign say?", input="LEMON TEA open daily 42")


def test_caption_expert_asks_in_the_format_of_the_models_system(monkeypatch):
    """LLaVA and mPLUG-Owl models are asked for a caption in their own prompt format, not LLaMA-Adapter's."""
    asked = []

    def fake_generate(bundle, prompts, images=None, **kw):
        asked.append(prompts[0])
        return types.SimpleNamespace(texts=["a caption"])

    monkeypatch.setattr("lav2_jax.inference.experts.generate", fake_generate)
    monkeypatch.setattr("lav2_jax.inference.experts.load_for_model", lambda bundle, image: np.zeros((4, 4, 3)))
    for name in ("llava15", "owl"):
        model = types.SimpleNamespace(adapter=presets.get_adapter(name), vision=object())
        assert CaptionExpert(types.SimpleNamespace(model=model))("unused.png") == "a caption"
    llava, owl = asked
    assert llava.endswith("USER: <image>\nProvide a one-sentence caption for the provided image. ASSISTANT:")
    assert owl.endswith("Human: <image>\nHuman: Describe the image briefly.\nAI: ")
