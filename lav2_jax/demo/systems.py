"""`lav2 demo --systems lav2,llava,owl`: the demo's task trained with each system on the same data and budget,
side by side.

Shared by every system (built once, cached like `lav2 demo`'s): the data, the tokenizer, the language prior
(`<workdir>/prior`) and the contrastive CLIP tower (`<workdir>/base`), `lav2_jax.demo.run.prepare_base`. Then
each system trains through `lav2 train`'s engine (`lav2_jax.train.trainer.train`) and is exported and scored on
the held-out split by `lav2_jax.demo.heldout` (greedy, in its own prompt format):

  lav2   the demo's config (`configs/demo.py`): paper joint training, one step = a caption batch for the caption
         group + an instruction batch for the instruction group
  llava  `configs/demo_llava.py`: stage 1 (projector, caption data), then stage 2 (projector + full LLM,
         instruction data), from `lav2_jax.demo.system_inits.write_init`'s checkpoint
  owl    `configs/demo_owl.py`: stage 1 (vision model + abstractor, caption data), then stage 2 (LoRA on wq/wv,
         instruction data), likewise
A system's stages are its `System.demo_stages` (each a `get_config(stage)` of `configs/demo_<name>.py`); a system
without them trains the demo's own config, as LLaMA-Adapter V2 does.

Same budget: every stage runs the LLaMA-Adapter V2 config's `total_steps`, a caption stage with its caption batch
and an instruction stage with its instruction batch, so each system sees the same caption and instruction rows
and updates each of its groups as often.

Each system runs in its own Python process (`python -m lav2_jax.demo.systems SPEC OUT`), so its peak resident
memory (`ru_maxrss`, training and evaluation) is its own. Measured per system: trainable parameters per stage
(`lav2_jax.core.param_groups.count` under the stage's recipe), held-out metrics, the median step time of each stage
(from `metrics.jsonl`: the wall time between log lines over the steps between them, the first interval, which
holds the compilation, left out), training wall time, peak RSS. Written to `<workdir>/systems.md` and
`<workdir>/systems.json` ({"systems": {name: result}, "chance": {...}, "budget": {...}}) and printed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time

import ml_collections
import numpy as np

from lav2_jax.checkpoint import load_pretrained
from lav2_jax.core import param_groups as pg
from lav2_jax.core import registry
from lav2_jax.demo import heldout
from lav2_jax.demo import report as report_lib
from lav2_jax.demo import run as run_lib
from lav2_jax.demo import system_inits
from lav2_jax.eval.runner import read_json, write_json
from lav2_jax.inference.generation import decodes_unstacked
from lav2_jax.model.factory import abstract_params
from lav2_jax.train.defaults import base_config
from lav2_jax.train.export import export_run
from lav2_jax.train.state import model_from_config
from lav2_jax.train.trainer import train

SYSTEMS = ("lav2", "llava", "owl")
HEADLINE = ("caption_accuracy", "vqa_accuracy", "text_accuracy")


def system_stages(name: str) -> tuple[str, ...]:
    """System `name`'s stages in the comparison: its `System.demo_stages`, else the demo's one joint run."""
    return registry.get(name).demo_stages or ("joint",)


def config_file(name: str) -> str:
    """The config file of system `name`'s stages, beside configs/demo.py."""
    return f"demo_{name}.py"


def stage_base_config(name: str, stage: str, steps: int):
    """`base_config()` with what every LLaVA / Owl stage of the comparison shares (configs/demo_llava.py,
    demo_owl.py): the tiny model over the `demo_out` workdir's `systems/<name>/init` (stage 1) or stage 1's
    export (stage 2), pipeline data (caption data for stage 1, the instruction data as stage 2's `train` stream;
    96 positions, room for the visual tokens and the systems' system prompts), batches of 16, `steps` steps,
    clip 1.0, no periodic checkpoints, a log line every 5 steps."""
    if stage not in system_stages(name):
        raise ValueError(f"configs/{config_file(name)}:{stage}: the stage is one of {system_stages(name)}")
    c = base_config()
    c.model.update(preset="tiny", vision="tiny", base_checkpoint=f"demo_out/systems/{name}/"
                   + ("init" if stage == system_stages(name)[0] else f"{system_stages(name)[0]}/ckpt"))
    c.total_steps = steps
    c.batch.update(caption=16, train=16)
    c.optim.clip_norm = 1.0
    c.loss.vocab_chunk = 0
    c.data.update(source="pipeline", tokenizer="demo_out/tokenizer/tokenizer.model", channel_order="rgb",
                  worker_count=0)
    c.data.caption.update(path="demo_out/data/caption", max_len=96)
    c.data.train.update(path="demo_out/data/instruction", max_len=96)
    c.checkpoint.update(every_steps=100000, keep=1)
    c.log.update(every_steps=5, peak_flops=0.0)
    return c


def parse_systems(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in SYSTEMS]
    if bad or not names:
        raise ValueError(f"--systems {text!r}: expected a comma-separated subset of {','.join(SYSTEMS)}")
    return names


def _load_config(path: str, stage: str):
    spec = importlib.util.spec_from_file_location(f"demo_system_config_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(stage)


def stage_configs(name: str, lav2_config, config_dir: str, paths, seed: int) -> list:
    """The training configs of system `name`'s stages, pointed at the workdir of `paths` and given the LLaMA-Adapter
    V2 run's budget (module docstring)."""
    if not registry.get(name).demo_stages:
        return [lav2_config]
    out = []
    root = os.path.join(paths.workdir, "systems", name)
    steps = int(lav2_config.total_steps)
    first_stage = system_stages(name)[0]
    for stage in system_stages(name):
        c = _load_config(os.path.join(config_dir, config_file(name)), stage)
        c.model.base_checkpoint = os.path.join(root, "init" if stage == first_stage else
                                               os.path.join(first_stage, "ckpt"))
        c.data.tokenizer = paths.tokenizer
        c.data.caption.path, c.data.train.path = paths.caption_ds, paths.instruction_ds
        c.seed = c.data.seed = seed
        c.batch.caption, c.batch.train = int(lav2_config.batch.caption), int(lav2_config.batch.instruction)
        for g in ("caption", "instruction"):  # the warm-up keeps its fraction of the run
            c.optim[g].warmup_steps = int(math.ceil(c.optim[g].warmup_steps * steps / int(c.total_steps)))
        c.total_steps = steps
        out.append(c)
    return out


def trainable_counts(config) -> dict[str, int]:
    """Scalars per group under `config`'s recipe (`caption`, `instruction`, `frozen`, `total`)."""
    model = model_from_config(config.model)
    params = abstract_params(model)
    return pg.count(params, pg.param_groups(params, config.param_recipe, model.adapter))


def median_step_s(rows: list[dict]) -> float:
    """Median seconds per step between consecutive metrics.jsonl lines, the first interval (compilation) left out."""
    steps = [(r["step"], r["time"]) for r in rows]
    rates = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(steps[1:], steps[2:]) if s1 > s0]
    if not rates:  # too short a run to leave the compilation out
        rates = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(steps, steps[1:]) if s1 > s0]
    return float(np.median(rates)) if rates else float("nan")


def run_system(spec: dict) -> dict:
    """Trains, exports and evaluates one system (in its own process: `main`); returns its result."""
    root = spec["root"]
    stages, ckpt = [], ""
    for stage, cfg in zip(spec["stages"], spec["configs"]):
        config = ml_collections.ConfigDict(cfg)
        if stage == spec["stages"][0] and registry.get(spec["name"]).demo_stages:  # stage 1 starts from an init
            system_inits.write_init(config, spec["prior"], spec["base"], spec["tokenizer"],
                                    config.model.base_checkpoint, seed=int(config.seed))
        counts = trainable_counts(config)
        train_dir, ckpt = os.path.join(root, stage, "train"), os.path.join(root, stage, "ckpt")
        shutil.rmtree(train_dir, ignore_errors=True)
        t0 = time.time()
        summary = train(config, train_dir)
        train_s = time.time() - t0
        export_run(train_dir, ckpt, overwrite=True)
        rows = report_lib.read_metrics(os.path.join(train_dir, "metrics.jsonl"))
        stages.append({"stage": stage, "param_recipe": config.param_recipe, "recipe": config.recipe,
                       "steps": int(summary["step"]), "trainable": counts["caption"] + counts["instruction"],
                       "groups": counts, "median_step_s": median_step_s(rows), "train_s": train_s})
    t0 = time.time()
    data = heldout.load_heldout(spec["heldout"])
    if spec.get("eval_scenes"):
        data["scenes"] = data["scenes"][:int(spec["eval_scenes"])]
    bundle = load_pretrained(ckpt, layout="unstacked" if decodes_unstacked() else "scanned")
    shutil.rmtree(os.path.join(root, "eval"), ignore_errors=True)  # predictions.jsonl resumes: start afresh
    metrics, _ = heldout.evaluate(bundle, data, os.path.join(root, "eval"), desc=spec["name"])
    return {"system": spec["name"], "stages": stages, "heldout": metrics, "eval_s": time.time() - t0,
            "train_s": sum(s["train_s"] for s in stages), "peak_rss_mib": report_lib.peak_rss_mib(), "ckpt": ckpt}


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def rows(results: dict) -> list[tuple[str, ...]]:
    """Table rows: header, then one per system (stages joined by ' → ')."""
    out = [("system", "stages (recipe)", "trainable", *HEADLINE, "median step ms", "train s", "peak RSS MiB")]
    for name, r in results.items():
        st = r["stages"]
        out.append((name, " → ".join(s["param_recipe"] for s in st),
                    " → ".join(_fmt_count(s["trainable"]) for s in st),
                    *(f"{r['heldout'][m]:.3f}" for m in HEADLINE),
                    " → ".join(f"{1e3 * s['median_step_s']:.0f}" for s in st),
                    f"{r['train_s']:.0f}", f"{r['peak_rss_mib']:.0f}"))
    return out


def table(results: dict) -> str:
    rs = rows(results)
    widths = [max(len(r[i]) for r in rs) for i in range(len(rs[0]))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rs]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown(results: dict, notes: list[str]) -> str:
    rs = rows(results)
    out = ["| " + " | ".join(rs[0]) + " |", "|" + "---|" * len(rs[0])]
    out += ["| " + " | ".join(r) + " |" for r in rs[1:]]
    return "\n".join(["# lav2 demo --systems: the demo's task with each system", "", *out, "", *notes, ""])


def run_systems(lav2_config, workdir: str, names, *, quick: bool = False, seed: int = 0, config_dir: str = "",
                eval_scenes: int = 0, modes=None, log=print) -> dict:
    """Every system in `names` (module docstring); returns systems.json's content. `config_dir`: where
    demo_llava.py and demo_owl.py are (default: beside configs/demo.py of this repository). `eval_scenes` > 0
    scores only that many held-out scenes (tests); `modes` replaces `run.MODES` (tests)."""
    t0 = time.time()
    workdir = os.path.abspath(workdir)
    config_dir = config_dir or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "configs")
    paths, prior = run_lib.prepare_base(workdir, quick=quick, seed=seed, log=log, modes=modes)
    results = {}
    for name in names:
        configs = stage_configs(name, lav2_config, config_dir, paths, seed)
        root = os.path.join(workdir, "systems", name)
        os.makedirs(root, exist_ok=True)
        spec = {"name": name, "root": root, "stages": list(system_stages(name)),
                "configs": [c.to_dict() for c in configs], "prior": os.path.join(workdir, "prior"),
                "base": os.path.join(workdir, "base"),
                "tokenizer": paths.tokenizer, "heldout": paths.heldout, "eval_scenes": eval_scenes}
        spec_path, out_path = os.path.join(root, "spec.json"), os.path.join(root, "result.json")
        write_json(spec_path, json.loads(json.dumps(spec, default=list)))
        if os.path.exists(out_path):
            os.remove(out_path)
        log(f"\n== {name}: " + " → ".join(f"{c.param_recipe} ({c.recipe}, {c.total_steps} steps)" for c in configs))
        subprocess.run([sys.executable, "-m", "lav2_jax.demo.systems", spec_path, out_path], check=True)
        with open(out_path, encoding="utf-8") as f:
            results[name] = json.load(f)
    data = heldout.load_heldout(paths.heldout)
    if eval_scenes:
        data["scenes"] = data["scenes"][:eval_scenes]
    chance = heldout.chance_metrics(data)
    budget = {"steps": int(lav2_config.total_steps), "caption_batch": int(lav2_config.batch.caption),
              "instruction_batch": int(lav2_config.batch.instruction)}
    out = {"systems": results, "chance": chance, "budget": budget, "time_s": time.time() - t0}
    notes = [f"Same data and budget: every stage {budget['steps']} steps; caption stages {budget['caption_batch']} "
             f"caption rows a step, instruction stages {budget['instruction_batch']} instruction rows a step (the "
             "lav2 joint step does one of each). Every system starts from the same language prior and contrastive "
             "vision tower; held-out accuracies greedy, each system in its own prompt format.",
             "Chance: " + ", ".join(f"{m} {chance[m]:.3f}" for m in HEADLINE) + f". Mode: "
             f"{'quick' if quick else 'full'}; seed {seed}; priors {'cached' if prior.get('cached') else 'trained'}"
             f"; total wall {out['time_s']:.0f} s. Step time = median wall time per step of each stage (data "
             "pipeline included); peak RSS = the system's own process (training and evaluation)."]
    write_json(os.path.join(workdir, "systems.json"), out)
    with open(os.path.join(workdir, "systems.md"), "w", encoding="utf-8") as f:
        f.write(markdown(results, notes))
    log("")
    log(table(results))
    log("")
    for n in notes:
        log(n)
    log(f"\nwrote {os.path.join(workdir, 'systems.md')} and systems.json")
    return out


def main(argv: list[str]) -> int:
    """`python -m lav2_jax.demo.systems SPEC.json OUT.json`: one system's run (`run_system`)."""
    spec_path, out_path = argv
    result = run_system(read_json(spec_path, "system spec"))
    write_json(out_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
