"""The demo's embedded data, written once into the workdir in the formats a user's data would have.

`prepare(workdir, sizes)` writes (skipping what is already complete):

  data/images/{train,heldout}/N.png   the rendered scenes (`lav2_jax.demo.scenes`)
  data/captions.tsv                   image → caption, the release's caption TSV (`lav2 data build --kind caption`)
  data/instructions.json              LLaVA-style conversations: a visual question with its image, or a text-only
                                      instruction, no image (`lav2 data build --kind conversation`)
  data/caption/, data/instruction/    the two TFDS array_record datasets `lav2 train` reads (`source="pipeline"`)
  data/heldout.json                   the held-out scenes (never in training) and the text-only items
  tokenizer/tokenizer.model           a sentencepiece BPE trained on the demo's texts and templates

`zero_shot=True` leaves the visual questions out of the instruction data (text-only instructions only): the
caption stream then carries all the vision, the setting of paper §4.2's composition claim.

`prior_texts(...)` are the language-prior stage's documents: the same samples rendered as text through the
templates, image-free (visual answers are then just words the model learns to expect after each question).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from PIL import Image

from lav2_jax.core import templates
from lav2_jax.data import builder
from lav2_jax.data.tokenizer_train import train_sentencepiece
from lav2_jax.demo import scenes as sc

IMAGE_SIZE = 32
QUESTION_OFFSET = 1 << 20  # question scenes' image files are numbered from here (caption scenes from 0)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much data the demo writes and trains on."""

    caption_images: int = 1500
    question_images: int = 1500
    text_repeats: int = 12      # each text-only item this many times in the instruction data
    prior_text_repeats: int = 60  # ... and this many times in the language prior's documents
    heldout_repeats: int = 1    # every attribute combination this many times in the held-out split


@dataclasses.dataclass(frozen=True)
class Paths:
    workdir: str

    @property
    def data(self) -> str:
        return os.path.join(self.workdir, "data")

    @property
    def tokenizer(self) -> str:
        return os.path.join(self.workdir, "tokenizer", "tokenizer.model")

    @property
    def caption_ds(self) -> str:
        return os.path.join(self.data, "caption")

    @property
    def instruction_ds(self) -> str:
        return os.path.join(self.data, "instruction")

    @property
    def heldout(self) -> str:
        return os.path.join(self.data, "heldout.json")


def _save_png(path: str, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path, format="PNG")


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def image_path(data_dir: str, split: str, index: int) -> str:
    return os.path.join(data_dir, "images", split, f"{index}.png")


def scene_sets(sizes: Sizes, seed: int) -> tuple[list[sc.Scene], list[sc.Scene]]:
    scenes = sc.train_scenes(sizes.caption_images + sizes.question_images, seed)
    return scenes[:sizes.caption_images], scenes[sizes.caption_images:]


def conversations(question_scenes: list[sc.Scene], sizes: Sizes, zero_shot: bool, seed: int) -> list[dict]:
    """The instruction data: one visual question per scene (a random attribute), plus the text-only items."""
    rng = np.random.default_rng([seed, 3])
    rows = []
    if not zero_shot:
        for i, s in enumerate(question_scenes):
            _, q, a = sc.questions(s)[int(rng.integers(len(sc.ATTRIBUTES)))]
            rows.append({"conversations": [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}],
                         "image": f"images/train/{QUESTION_OFFSET + i}.png"})
    for _ in range(sizes.text_repeats):
        for t in sc.text_items():
            rows.append({"conversations": [{"from": "human", "value": t.question}, {"from": "gpt", "value": t.answer}]})
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def _chat(question: str, answer: str) -> str:
    return templates.render(templates.chat_segments([("human", question), ("assistant", answer)]))


def prior_texts(sizes: Sizes, seed: int = 0) -> list[str]:
    """Documents of the language-prior stage, each through the template it is trained with later:

    - caption samples and visual questions with their scenes' answers, image-free (the formats; the attribute
      words are unpredictable there, so alone they teach a uniform guess and leave the values interchangeable);
    - the same scenes *described in words*: "two red circles on the left. What colour are the shapes?" → "red",
      and the caption prompt with the description as its input → the caption. Here each attribute word is
      predictable from the context, so the language model learns distinct values and to read them from its
      context — what a pretrained LLaMA brings, and what the visual prompts later supply instead of the words;
    - the text-only instructions, `prior_text_repeats` times each (a sixth of the full run's documents; with
      fewer, a prior of a few hundred steps answers the knowledge items but few counting or opposites ones)."""
    cap_scenes, q_scenes = scene_sets(sizes, seed)
    out = [templates.render(templates.caption_segments(s.caption())) for s in cap_scenes]
    for s in cap_scenes:
        out.append(templates.render(templates.instruction_segments(templates.CAPTION_INSTRUCTION, s.caption(),
                                                                   s.caption())))
    for s in q_scenes:
        for _, q, a in sc.questions(s):
            out.append(_chat(q, a))
            out.append(_chat(f"{s.caption()}. {q}", a))
    for _ in range(sizes.prior_text_repeats):
        for t in sc.text_items():
            out.append(_chat(t.question, t.answer))
    return out


def train_tokenizer(path: str, sizes: Sizes, seed: int = 0, vocab_size: int = 768) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cap_scenes, _ = scene_sets(sizes, seed)
    extra = list(sc.corpus_texts(cap_scenes[:200])) * 4
    extra += [templates.caption_prompt(), templates.chat_prompt([("human", sc.QUESTIONS["colour"])])] * 40
    tmp = path + ".tmp"
    train_sentencepiece(tmp, extra=extra, vocab_size=vocab_size)
    os.replace(tmp, path)
    return path


def _build(kind: str, fmt: str, src: str, out: str) -> None:
    builder.build(kind, [builder.Source(fmt, src)], out, strict=True, progress=False, overwrite=True)


def prepare(workdir: str, sizes: Sizes = Sizes(), *, zero_shot: bool = False, seed: int = 0,
            log=print) -> Paths:
    """Writes the demo's data into `workdir` (see the module docstring); returns its paths. Idempotent: a
    `data/done.json` stamp records the settings, and matching data is reused."""
    paths = Paths(os.path.abspath(workdir))
    stamp = os.path.join(paths.data, "done.json")
    settings = {"sizes": dataclasses.asdict(sizes), "zero_shot": zero_shot, "seed": seed, "image_size": IMAGE_SIZE}
    if os.path.exists(stamp) and os.path.exists(paths.tokenizer):
        with open(stamp, encoding="utf-8") as f:
            if json.load(f) == settings:
                log(f"data: reusing {paths.data}")
                return paths
    for split in ("train", "heldout"):
        os.makedirs(os.path.join(paths.data, "images", split), exist_ok=True)
    cap_scenes, q_scenes = scene_sets(sizes, seed)
    rows = ["path\tcaption"]
    for i, s in enumerate(cap_scenes):
        _save_png(image_path(paths.data, "train", i), sc.render(s, IMAGE_SIZE))
        rows.append(f"images/train/{i}.png\t{s.caption()}")
    with open(os.path.join(paths.data, "captions.tsv"), "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    if not zero_shot:
        for i, s in enumerate(q_scenes):
            _save_png(image_path(paths.data, "train", QUESTION_OFFSET + i), sc.render(s, IMAGE_SIZE))
    _write_json(os.path.join(paths.data, "instructions.json"), conversations(q_scenes, sizes, zero_shot, seed))
    held = sc.heldout_scenes(sizes.heldout_repeats, seed)
    for i, s in enumerate(held):
        _save_png(image_path(paths.data, "heldout", i), sc.render(s, IMAGE_SIZE))
    _write_json(paths.heldout, {"image_size": IMAGE_SIZE,
                                "scenes": [dict(s.to_json(), image=f"images/heldout/{i}.png")
                                           for i, s in enumerate(held)],
                                "text": [dataclasses.asdict(t) for t in sc.text_items()]})
    train_tokenizer(paths.tokenizer, sizes, seed)
    _build("caption", "tsv", os.path.join(paths.data, "captions.tsv"), paths.caption_ds)
    _build("conversation", "conversation", os.path.join(paths.data, "instructions.json"), paths.instruction_ds)
    _write_json(stamp, settings)
    log(f"data: {len(cap_scenes)} caption images, {0 if zero_shot else len(q_scenes)} visual questions, "
        f"{sizes.text_repeats * len(sc.text_items())} text-only instructions, {len(held)} held-out images "
        f"→ {paths.data}")
    return paths
