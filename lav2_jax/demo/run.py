"""`run_demo`: the whole method end to end on embedded data, in one workdir (what `lav2 demo` runs).

  1. data        `lav2_jax.demo.data.prepare`: images, captions, visual questions, text-only instructions, a
                 held-out split, the tokenizer, the two TFDS datasets (cached)
  2. priors      `lav2_jax.demo.priors.build_base`: language prior + contrastive vision tower → `base/` (cached)
  3. training    `lav2_jax.train.trainer.train(config, <workdir>/train)`: the `lav2 train` engine, recipe
                 `joint`, early fusion, grain pipelines; tqdm, TensorBoard (`train/tb`), `train/metrics.jsonl`.
                 Always a fresh run (the cached stages above are what a rerun skips)
  4. export      `lav2_jax.train.export.export_run` → `<workdir>/ckpt` (adapter-only over `base/`)
  5. evaluation  `lav2_jax.demo.heldout` on the held-out split for trained / gates_off / untrained, + chance
  6. report      `lav2_jax.demo.report`: table, report.md, report.json, report.png

`MODES` holds the data and prior sizes of the full and `--quick` runs; the training steps are the config's
(`configs/demo.py`), which the CLI overrides for `--quick`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import numpy as np
from PIL import Image

from lav2_jax.checkpoint import load_pretrained
from lav2_jax.demo import heldout
from lav2_jax.demo import data as data_lib
from lav2_jax.demo import priors as priors_lib
from lav2_jax.demo import report as report_lib
from lav2_jax.demo.heldout import gates_off
from lav2_jax.eval.runner import write_json
from lav2_jax.inference.generation import decodes_unstacked
from lav2_jax.train.export import export_run
from lav2_jax.train.trainer import train

MODES = {
    "full": (data_lib.Sizes(), priors_lib.PriorSettings()),
    "quick": (data_lib.Sizes(caption_images=400, question_images=400, text_repeats=6, prior_text_repeats=16),
              priors_lib.PriorSettings(lm_steps=160)),
}
QUICK_TRAIN_STEPS = 80
GRID = 12


def config_overrides(workdir: str, quick: bool, seed: int) -> list[str]:
    """`--config.x=y` flags that point configs/demo.py at `workdir` (and shorten it for --quick)."""
    w = os.path.abspath(workdir)
    out = [f"--config.model.base_checkpoint={w}/base", f"--config.data.tokenizer={w}/tokenizer/tokenizer.model",
           f"--config.data.caption.path={w}/data/caption", f"--config.data.instruction.path={w}/data/instruction",
           f"--config.seed={seed}", f"--config.data.seed={seed}"]
    if quick:
        out.append(f"--config.total_steps={QUICK_TRAIN_STEPS}")
    return out


def user_commands(workdir: str, image: str) -> list[str]:
    w = workdir.rstrip("/")
    return [
        f'lav2 generate --ckpt {w}/ckpt --image {image} --prompt "Generate caption of this image" --temperature 0',
        f"lav2 chat --ckpt {w}/ckpt --image {image} --temperature 0    # then ask: What colour are the shapes?",
        f"lav2 export hf --ckpt {w}/prior --out {w}/prior_hf    # the language prior as a plain HF Llama",
        f"lav2 train --config configs/demo.py --workdir {w}/train2    # this run again, by hand",
    ]


def _bundles(ckpt: str, base: str):
    layout = "unstacked" if decodes_unstacked() else "scanned"
    trained = load_pretrained(ckpt, layout=layout)
    return {"trained": trained,
            "gates_off": dataclasses.replace(trained, params=gates_off(trained.params)),
            "untrained": load_pretrained(base, layout=layout)}


def _prompted_layers(model) -> list[int]:
    a, n = model.adapter, model.config.n_layers
    return list(range(n - a.prompt_layers, n)) if a.has_prompts else []


def prepare_base(workdir: str, *, quick: bool = False, seed: int = 0, zero_shot: bool = False, log=print,
                 modes=None):
    """Stages 1 and 2 (data, priors: cached) in `workdir`; returns (paths, the prior stage's report + `data_s`).
    `modes`: replaces `MODES` (tests)."""
    t0 = time.time()
    sizes, settings = (modes or MODES)["quick" if quick else "full"]
    settings = priors_lib.PriorSettings(**{**settings.__dict__, "seed": seed})
    paths = data_lib.prepare(workdir, sizes, zero_shot=zero_shot, seed=seed, log=log)
    cap_scenes, q_scenes = data_lib.scene_sets(sizes, seed)
    t_data = time.time()
    prior = priors_lib.build_base(paths, data_lib.prior_texts(sizes, seed), cap_scenes + q_scenes, settings, log)
    return paths, dict(prior, data_s=t_data - t0)


def run_demo(config, workdir: str, *, quick: bool = False, seed: int = 0, zero_shot: bool = False,
             log=print, display: str = "") -> dict:
    """Runs every stage (module docstring) with the train config `config`; returns report.json's content.
    `display`: the workdir as the user typed it (for the printed commands)."""
    t0 = time.time()
    workdir = os.path.abspath(workdir)
    paths, prior = prepare_base(workdir, quick=quick, seed=seed, zero_shot=zero_shot, log=log)
    t_data, t_prior = t0 + prior["data_s"], time.time()

    train_dir, ckpt_dir, eval_dir = (os.path.join(workdir, d) for d in ("train", "ckpt", "eval"))
    for d in (train_dir, eval_dir):
        shutil.rmtree(d, ignore_errors=True)
    log(f"training: recipe {config.recipe} ({config.param_recipe}), {config.total_steps} steps, "
        f"{'text-only instructions (zero-shot)' if zero_shot else 'visual questions + text-only instructions'}")
    summary = train(config, train_dir)
    t_train = time.time()
    export_run(train_dir, ckpt_dir, overwrite=True)
    log(f"exported {ckpt_dir}")

    data = heldout.load_heldout(paths.heldout)
    bundles = _bundles(ckpt_dir, os.path.join(workdir, "base"))
    results, records = {}, {}
    for name, bundle in bundles.items():
        results[name], records[name] = heldout.evaluate(bundle, data, os.path.join(eval_dir, name), desc=name)
    results["chance"] = heldout.chance_metrics(data)
    t_eval = time.time()

    report = report_lib.report_json(results, time.time() - t0)
    rows = report_lib.read_metrics(os.path.join(train_dir, "metrics.jsonl"))
    gen = heldout.captions(data, records["trained"])
    pick = np.linspace(0, len(data["scenes"]) - 1, GRID).astype(int)
    samples = []
    for i in pick:
        s = data["scenes"][i]
        truth = data_lib.sc.Scene(**{k: v for k, v in s.items() if k != "image"}).caption()
        parsed = data_lib.sc.parse_caption(gen[i])
        right = all(parsed[a] == s[a] for a in data_lib.sc.ATTRIBUTES)
        samples.append((np.asarray(_read_png(s["image"])), gen[i], truth, right))
    report_lib.plot(os.path.join(workdir, "report.png"), rows, samples,
                    _prompted_layers(bundles["trained"].model))
    stages = {"data_s": t_data - t0, "priors_s": t_prior - t_data, "train_s": t_train - t_prior,
              "eval_s": t_eval - t_train}
    retrieval = prior["vision_retrieval"]
    shown = display or workdir
    commands = user_commands(shown, os.path.join(shown, "data", "images", "heldout", "0.png"))
    notes = [f"Mode: {'quick' if quick else 'full'}{', zero-shot (text-only instruction stream)' if zero_shot else ''};"
             f" seed {seed}; {summary['step']} joint steps; wall {report['time_s']:.0f} s "
             f"(data {stages['data_s']:.0f} s, priors {stages['priors_s']:.0f} s"
             f"{' cached' if prior.get('cached') else ''}, training {stages['train_s']:.0f} s, evaluation "
             f"{stages['eval_s']:.0f} s); peak RSS {report['peak_rss_mib']:.0f} MiB.",
             "Vision tower (contrastive stage) held-out retrieval accuracy: "
             + ", ".join(f"{k} {v:.2f}" for k, v in retrieval.items()) + ".",
             "Conditions: trained = the exported adapter; gates_off = the same with every prompt gate forced to "
             "zero (no adapter prompt, no visual prompt); untrained = the frozen base (identity adapter); chance = "
             "uniform guessing. Text items are the prior's own instructions (retention, not generalisation)."]
    write_json(os.path.join(workdir, "report.json"), report)
    with open(os.path.join(workdir, "report.md"), "w", encoding="utf-8") as f:
        f.write(report_lib.markdown(results, notes, commands))
    log("")
    log(report_lib.table(results))
    log("")
    for n in notes:
        log(n)
    log(f"\nwrote {os.path.join(workdir, 'report.md')}, report.json, report.png; checkpoint {ckpt_dir}; "
        f"TensorBoard: tensorboard --logdir {os.path.join(train_dir, 'tb')}")
    log("try it:")
    for c in commands:
        log(f"  {c}")
    return report


def _read_png(path: str):
    with Image.open(path) as im:
        return im.convert("RGB").copy()
