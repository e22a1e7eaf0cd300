"""Held-out scoring of the demo's tasks (`lav2 demo`): caption attributes, visual questions, text-only instructions.

Input: the demo's `heldout.json` (`lav2_jax.demo.data`): scenes (colour, shape, count, position, image path) that
training never saw, and the text-only items. Each is turned into runner `Item`s and predicted greedily through
`lav2_jax.eval.runner` (`run_items` + `model_predictor`: batched `generate`, resumable `predictions.jsonl`):

  caption   the Alpaca caption prompt (`templates.caption_prompt()`) with the image; the generated caption is
            parsed for one value per attribute (`scenes.parse_caption`); `caption_<attribute>` is the fraction
            right, `caption_accuracy` their mean, `caption_exact` the fraction with all four right.
  vqa       each scene's four questions in the chat template (`templates.chat_prompt`) with the image;
            `vqa_<attribute>` and their mean `vqa_accuracy` (the answer's leading words must be the value).
  text      the text-only instructions in the chat template, no image: `text_accuracy`.

`chance_metrics` gives the same names for uniform guessing (the held-out answers are exactly balanced, so a model
that cannot see the image, answering every scene alike, scores exactly the chance rate on caption and vqa).
`gates_off(params)` is a copy of a parameter tree with every prompt gate (adapter `gate`, `new_gate`, early
`visual_gate`) set to zero: no adapter prompt and no visual prompt reaches the model, the rest of the adapter
(biases, scales, norms) stays as trained. All metrics are in [0, 1].
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lav2_jax.demo import scenes as sc
from lav2_jax.eval.runner import Item, PredictionLog, model_predictor, read_json, run_items
from lav2_jax.inference import prompts as st

GATE_NAMES = ("gate", "new_gate", "visual_gate")
MAX_NEW_TOKENS = 16


def load_heldout(path: str) -> dict[str, Any]:
    """heldout.json with image paths made absolute: {"scenes": [...], "text": [...]}."""
    data = read_json(path, "held-out file")
    root = os.path.dirname(os.path.abspath(path))
    for s in data["scenes"]:
        s["image"] = os.path.join(root, s["image"])
    return data


def items(data: dict[str, Any], adapter=None) -> list[Item]:
    """Every held-out prompt as a runner Item (`meta` carries the task, attribute and expected answer), in the
    prompt format of `adapter`'s system (`lav2_jax.inference.prompts`; None: LLaMA-Adapter V2's)."""
    out = []
    for i, s in enumerate(data["scenes"]):
        out.append(Item(f"caption/{i}", st.caption_prompt(adapter), s["image"], {"task": "caption", "scene": i}))
        for attr, question in sc.QUESTIONS.items():
            out.append(Item(f"vqa/{i}/{attr}", st.chat_prompt(adapter, [("human", question)], image=True), s["image"],
                            {"task": "vqa", "scene": i, "attribute": attr, "answer": s[attr]}))
    for j, t in enumerate(data["text"]):
        out.append(Item(f"text/{j}", st.chat_prompt(adapter, [("human", t["question"])]), None,
                        {"task": "text", "kind": t["kind"], "answer": t["answer"]}))
    return out


def score(data: dict[str, Any], records: dict[str, dict]) -> dict[str, float]:
    """Metrics (module docstring) from the prediction records of `items(data)`."""
    attrs = tuple(sc.ATTRIBUTES)
    cap = {a: [] for a in attrs}
    exact, vqa = [], {a: [] for a in attrs}
    for i, s in enumerate(data["scenes"]):
        parsed = sc.parse_caption(records[f"caption/{i}"].get("prediction", ""))
        hits = [parsed[a] == s[a] for a in attrs]
        for a, h in zip(attrs, hits):
            cap[a].append(h)
        exact.append(all(hits))
        for a in attrs:
            vqa[a].append(sc.answer_matches(records[f"vqa/{i}/{a}"].get("prediction", ""), s[a]))
    text = [sc.answer_matches(records[f"text/{j}"].get("prediction", ""), t["answer"])
            for j, t in enumerate(data["text"])]
    out = {f"caption_{a}": float(np.mean(cap[a])) for a in attrs}
    out["caption_accuracy"] = float(np.mean([out[f"caption_{a}"] for a in attrs]))
    out["caption_exact"] = float(np.mean(exact))
    out.update({f"vqa_{a}": float(np.mean(vqa[a])) for a in attrs})
    out["vqa_accuracy"] = float(np.mean([out[f"vqa_{a}"] for a in attrs]))
    out["text_accuracy"] = float(np.mean(text))
    return out


def chance_metrics(data: dict[str, Any]) -> dict[str, float]:
    """The metrics of uniform guessing among each question's possible answers."""
    out = {f"caption_{a}": 1.0 / len(v) for a, v in sc.ATTRIBUTES.items()}
    out["caption_accuracy"] = sc.chance()
    out["caption_exact"] = float(np.prod([1.0 / len(v) for v in sc.ATTRIBUTES.values()]))
    out.update({f"vqa_{a}": 1.0 / len(v) for a, v in sc.ATTRIBUTES.items()})
    out["vqa_accuracy"] = sc.chance()
    out["text_accuracy"] = float(np.mean([1.0 / t["choices"] for t in data["text"]]))
    return out


def gates_off(params: dict) -> dict:
    """`params` with every prompt gate leaf (adapter, new and visual gates) replaced by zeros."""
    def zero(path, x):
        name = getattr(path[-1], "key", None)
        return jnp.zeros_like(x) if name in GATE_NAMES else x

    return jax.tree_util.tree_map_with_path(zero, params)


def captions(data: dict[str, Any], records: dict[str, dict]) -> list[str]:
    """The generated caption of every held-out scene, in order."""
    return [records[f"caption/{i}"].get("prediction", "") for i in range(len(data["scenes"]))]


def evaluate(bundle, data: dict[str, Any], out_dir: str, *, batch_size: int = 64, progress: bool = True,
             desc: str = "eval") -> tuple[dict[str, float], dict[str, dict]]:
    """(metrics, prediction records) of `bundle` on the held-out data; predictions in `out_dir`."""
    predict, load_image = model_predictor(bundle, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
    with PredictionLog(os.path.join(out_dir, "predictions.jsonl")) as log:
        records = run_items(items(data, bundle.model.adapter), predict, log, load_image=load_image,
                            batch_size=batch_size, strict=True, desc=desc, progress=progress)
    return score(data, records), records
