"""The demo's world: procedurally drawn scenes, their captions, visual questions and text-only instructions.

A scene is `count` shapes of one `shape` and one `colour` stacked in the `position` half of a square image:

  colour    red, green, blue, yellow          shape     circle, square, triangle
  count     one, two, three                   position  left, right

`render(scene, size)` draws it (4× supersampled, then box-filtered down; a little pixel noise) as uint8 [S, S, 3].
Every placement and size jitter is a function of the scene's `seed`, so an image is reproducible from its record.

Texts (the templates of docs/design.md §3.3.2 are applied later, by the data pipeline and by evaluation):

  caption      "two red circles on the left"                               (caption stream, Alpaca caption prompt)
  question     "What colour are the shapes?" → "red" (one per attribute)   (instruction stream, with the image)
  instruction  "What number comes after two?" → "three", opposites, "What colour is grass?" → "green",
               colour-or-shape
                                                                           (instruction stream, text only)

Visual answers need the image: every attribute is uniform over its values, so a model that cannot see scores the
chance rate `1 / len(values)` per attribute (`chance`). Text-only answers are a function of the question.
The held-out split (`heldout_scenes`) enumerates every attribute combination once with seeds that training never
draws (training seeds are < HELDOUT_SEED), so its images are new and its answers exactly balanced.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": ("red", "green", "blue", "yellow"),
    "shape": ("circle", "square", "triangle"),
    "count": ("one", "two", "three"),
    "position": ("left", "right"),
}
RGB = {"red": (220, 45, 40), "green": (40, 175, 70), "blue": (50, 95, 235), "yellow": (235, 210, 45)}
BACKGROUND = (28, 28, 32)
QUESTIONS = {
    "colour": "What colour are the shapes?",
    "shape": "What shape are they?",
    "count": "How many shapes are there?",
    "position": "Which side are the shapes on?",
}
HELDOUT_SEED = 1_000_000
SUPERSAMPLE = 4
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# World knowledge about the scene words: the only text in which a colour or a shape name is predictable, so the
# language prior learns them as distinct words (otherwise every value of an attribute is interchangeable in its
# text and the model cannot name one even when its context says which).
KNOWLEDGE = (("What colour is the sky?", "blue"), ("What colour is grass?", "green"),
             ("What colour is a lemon?", "yellow"), ("What colour is a strawberry?", "red"),
             ("What colour is the sea?", "blue"), ("What colour is a leaf?", "green"),
             ("What colour is the sun?", "yellow"), ("What colour is a fire truck?", "red"),
             ("Which shape is round?", "circle"), ("Which shape has three sides?", "triangle"),
             ("Which shape has four equal sides?", "square"), ("What shape is a wheel?", "circle"),
             ("What shape is a slice of pizza?", "triangle"), ("What shape is a chessboard?", "square"))
OPPOSITES = (("left", "right"), ("top", "bottom"), ("big", "small"), ("hot", "cold"), ("up", "down"),
             ("day", "night"))


@dataclasses.dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    count: str
    position: str
    seed: int

    def attribute(self, name: str) -> str:
        return getattr(self, name)

    @property
    def n(self) -> int:
        return ATTRIBUTES["count"].index(self.count) + 1

    def caption(self) -> str:
        plural = "s" if self.n > 1 else ""
        return f"{self.count} {self.colour} {self.shape}{plural} on the {self.position}"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def random_scene(rng: np.random.Generator, seed: int) -> Scene:
    values = {k: v[int(rng.integers(len(v)))] for k, v in ATTRIBUTES.items()}
    return Scene(seed=seed, **values)


def train_scenes(n: int, seed: int = 0) -> list[Scene]:
    """`n` random scenes with image seeds in [0, HELDOUT_SEED)."""
    rng = np.random.default_rng([seed, 1])
    seeds = rng.choice(HELDOUT_SEED, size=n, replace=False)
    return [random_scene(rng, int(s)) for s in seeds]


def heldout_scenes(repeats: int = 1, seed: int = 0) -> list[Scene]:
    """Every attribute combination `repeats` times, with image seeds >= HELDOUT_SEED (never drawn in training)."""
    combos = list(itertools.product(*ATTRIBUTES.values()))
    out = []
    for r in range(repeats):
        for i, values in enumerate(combos):
            out.append(Scene(*values, seed=HELDOUT_SEED + (seed * 7919 + r) * len(combos) + i))
    return out


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        s = r * 0.88
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    else:
        draw.polygon(((cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)), fill=fill)


def render(scene: Scene, size: int = 32) -> np.ndarray:
    """The scene as uint8 [size, size, 3] RGB: shapes stacked in three vertical slots of their half."""
    rng = np.random.default_rng([scene.seed, 7])
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(img)
    slots = np.sort(rng.choice(3, size=scene.n, replace=False))
    half = big / 2
    x0 = 0.0 if scene.position == "left" else half
    fill = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in RGB[scene.colour])
    for slot in slots:
        r = big * rng.uniform(0.13, 0.155)
        cx = x0 + half / 2 + rng.uniform(-0.07, 0.07) * big
        cy = (slot + 0.5) * big / 3 + rng.uniform(-0.015, 0.015) * big
        _draw_shape(draw, scene.shape, cx, cy, r, fill)
    small = np.asarray(img.resize((size, size), Image.Resampling.BOX), np.int16)
    noise = rng.integers(-6, 7, small.shape)
    return np.clip(small + noise, 0, 255).astype(np.uint8)


def questions(scene: Scene) -> list[tuple[str, str, str]]:
    """(attribute, question, answer) for each attribute of `scene`."""
    return [(k, QUESTIONS[k], scene.attribute(k)) for k in ATTRIBUTES]


@dataclasses.dataclass(frozen=True)
class TextItem:
    kind: str
    question: str
    answer: str
    choices: int  # number of possible answers of this kind (chance = 1 / choices)


def text_items() -> list[TextItem]:
    """Every text-only instruction: counting (after / before), opposites, colour and shape knowledge,
    colour-or-shape."""
    items = []
    for a, b in zip(NUMBERS, NUMBERS[1:]):
        items.append(TextItem("after", f"What number comes after {a}?", b, len(NUMBERS)))
        items.append(TextItem("before", f"What number comes before {b}?", a, len(NUMBERS)))
    for a, b in OPPOSITES:
        items.append(TextItem("opposite", f"What is the opposite of {a}?", b, 2 * len(OPPOSITES)))
        items.append(TextItem("opposite", f"What is the opposite of {b}?", a, 2 * len(OPPOSITES)))
    for question, answer in KNOWLEDGE:
        kind = "colour" if answer in ATTRIBUTES["colour"] else "shape"
        items.append(TextItem("knowledge", question, answer, len(ATTRIBUTES[kind])))
    for c in ATTRIBUTES["colour"]:
        items.append(TextItem("kind", f"Is {c} a colour or a shape?", "a colour", 2))
    for s in ATTRIBUTES["shape"]:
        items.append(TextItem("kind", f"Is {s} a colour or a shape?", "a shape", 2))
    return items


_WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    """Lower-case words of `text`, plural shape names folded to the singular."""
    out = []
    for w in _WORD.findall(text.lower()):
        out.append(w[:-1] if w.endswith("s") and w[:-1] in ATTRIBUTES["shape"] else w)
    return out


def parse_caption(text: str) -> dict[str, str | None]:
    """{attribute: the first value of that attribute named in `text`, or None}."""
    ws = words(text)
    return {k: next((w for w in ws if w in values), None) for k, values in ATTRIBUTES.items()}


def answer_matches(generated: str, answer: str) -> bool:
    """The generated answer's leading words equal the expected answer's words."""
    want = words(answer)
    return words(generated)[:len(want)] == want


def chance(attributes=tuple(ATTRIBUTES)) -> float:
    """Expected accuracy, averaged over `attributes`, of guessing uniformly."""
    return float(np.mean([1.0 / len(ATTRIBUTES[a]) for a in attributes]))


def corpus_texts(scenes: list[Scene]) -> Iterator[str]:
    """Every answer and question string the demo uses (for training its tokenizer)."""
    for s in scenes:
        yield s.caption()
    for _, q, a in questions(scenes[0]):
        yield q
    for values in ATTRIBUTES.values():
        yield " ".join(values)
    for t in text_items():
        yield f"{t.question} {t.answer}"
