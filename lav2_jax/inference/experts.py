"""Expert models (paper §4.4): a system that turns an image into text, which then becomes the Alpaca *Input*.

Interface: an `Expert` is any object with a `name` and `__call__(image) -> str`, where `image` is an image file
path (str / PathLike) or a `PIL.Image.Image`. Plug in more with `register_expert(name, factory)`; a factory takes
the bundle (it may ignore it) and keyword options.

Prompt composition (exactly, tested): `expert_prompt(instruction, image, expert) ==
lav2_jax.core.templates.alpaca(instruction, input=expert(image).strip())` — the expert's text, stripped of surrounding
whitespace, fills the `### Input:` field of the Alpaca template (docs/design.md §3.3.2); an expert that finds nothing
(blank text) gives the no-input template.

Built in:
  caption  the model captions the image itself with its system's caption prompt (`prompts.caption_prompt`),
           greedy by default, through `generate` (needs a model with a vision tower).
  ocr      text found by Tesseract: `pytesseract` (pip) + the `tesseract-ocr` binary (Debian package). Optional:
           when either is missing, `ExpertUnavailable` says what to install.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Protocol, Union

from PIL import Image

from lav2_jax.core import templates
from lav2_jax.data.images import decode, preprocess
from lav2_jax.inference import prompts
from lav2_jax.inference.generation import generate

ImageInput = Union[str, os.PathLike, Image.Image]


class ExpertUnavailable(RuntimeError):
    """An expert cannot run here (a missing optional dependency, or a model that cannot take images)."""


class Expert(Protocol):
    name: str

    def __call__(self, image: ImageInput) -> str: ...


def load_for_model(bundle, image: ImageInput):
    """An image file / PIL image → the model's preprocessed float32 [S, S, 3] (its size and channel order)."""
    vision = bundle.model.vision
    if vision is None:
        raise ExpertUnavailable("this model has no vision tower (it is text-only), so it cannot take an image")
    splice = bundle.model.adapter.splice  # LLaVA-1.5 pads to a square first
    aspect = splice.image_aspect_ratio if splice is not None else "square"
    return preprocess(image, vision.image_size, getattr(bundle, "channel_order", "rgb"), aspect_ratio=aspect)


class CaptionExpert:
    """Captions with the model itself: `generate(bundle, [caption prompt of its system], [image])`."""

    name = "caption"

    def __init__(self, bundle, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 0.75,
                 seed: int = 0):
        if bundle.model.vision is None:
            raise ExpertUnavailable("--expert caption needs a model with a vision tower; this one is text-only")
        self.bundle = bundle
        self.options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)

    def __call__(self, image: ImageInput) -> str:
        pixels = load_for_model(self.bundle, image)
        prompt = prompts.caption_prompt(self.bundle.model.adapter)
        return generate(self.bundle, [prompt], [pixels], **self.options).texts[0].strip()


class OcrExpert:
    """Text in the image, found by Tesseract (whitespace runs collapsed to single spaces)."""

    name = "ocr"
    INSTALL = ("the OCR expert needs Tesseract: `pip install pytesseract` and the tesseract binary "
               "(Debian/Ubuntu: `apt-get install tesseract-ocr`)")

    def __init__(self, bundle=None, lang: str = "eng"):
        try:
            import pytesseract
        except ImportError:
            raise ExpertUnavailable(f"pytesseract is not installed; {self.INSTALL}") from None
        try:
            pytesseract.get_tesseract_version()
        except (pytesseract.TesseractNotFoundError, OSError):
            raise ExpertUnavailable(f"the tesseract binary was not found; {self.INSTALL}") from None
        self._ocr, self.lang = pytesseract, lang

    def __call__(self, image: ImageInput) -> str:
        img = image if isinstance(image, Image.Image) else decode(image)
        return re.sub(r"\s+", " ", self._ocr.image_to_string(img, lang=self.lang)).strip()


EXPERTS: dict[str, Callable[..., Expert]] = {"caption": CaptionExpert, "ocr": OcrExpert}


def register_expert(name: str, factory: Callable[..., Expert]) -> None:
    """Makes `get_expert(name, bundle)` (and `lav2 generate --expert name`) build experts with `factory(bundle)`."""
    EXPERTS[name] = factory


def get_expert(name: str, bundle=None, **options) -> Expert:
    try:
        factory = EXPERTS[name]
    except KeyError:
        raise ValueError(f"unknown expert {name!r}; known: {', '.join(sorted(EXPERTS))}") from None
    return factory(bundle, **options)


def expert_prompt(instruction: str, image: ImageInput, expert: Expert) -> str:
    """`alpaca(instruction, input=expert(image).strip())` (paper §4.4; see the module docstring)."""
    return templates.alpaca(instruction, input=expert(image).strip())
