"""Checks of `lav2 demo --systems` over a finished `lav2 demo --quick` workdir (its data and priors are reused):
mPLUG-Owl's two stages run for 2 steps each, the side-by-side table and its measurements, the groups each stage
trains (every other leaf bit-identical), and LLaVA's starting checkpoint and recipe groups (not trained here: the
LLaVA recipes train in tests/test_llava_train.py)."""

import json
import os

import jax
import numpy as np
from flax import traverse_util

from lav2_jax.checkpoint import load_pretrained, read_config
from lav2_jax.demo import system_inits, systems
from lav2_jax.systems.owl.clip_init import clip_to_owl_vision


def _flat(path) -> dict:
    return traverse_util.flatten_dict(jax.device_get(load_pretrained(path).params))


def lav2_config(workdir, steps: int = 2, batch: int = 4):
    from lav2_jax.cli.demo import DEFAULT_CONFIG
    from lav2_jax.cli.train import load_config
    from lav2_jax.demo.run import config_overrides

    return load_config(DEFAULT_CONFIG, config_overrides(str(workdir), True, 0) + [
        f"--config.total_steps={steps}", f"--config.batch.caption={batch}", f"--config.batch.instruction={batch}"])


def check_owl_run(workdir) -> None:
    out = systems.run_systems(lav2_config(workdir), str(workdir), ("owl",), quick=True, eval_scenes=3)
    assert json.loads((workdir / "systems.json").read_text()) == json.loads(json.dumps(out))
    assert set(out) == {"systems", "chance", "budget", "time_s"} and tuple(out["systems"]) == ("owl",)
    assert out["budget"] == {"steps": 2, "caption_batch": 4, "instruction_batch": 4}
    r = out["systems"]["owl"]
    assert [s["param_recipe"] for s in r["stages"]] == ["owl-stage1", "owl-stage2"]
    assert [s["steps"] for s in r["stages"]] == [2, 2]
    for m in systems.HEADLINE:
        assert 0.0 <= r["heldout"][m] <= 1.0
    assert r["peak_rss_mib"] > 0 and all(np.isfinite(s["median_step_s"]) for s in r["stages"])
    table = [line for line in (workdir / "systems.md").read_text().splitlines() if line.startswith("|")]
    assert len(table) == 3 and all(line.count("|") == len(systems.rows(out["systems"])[0]) + 1 for line in table)
    g1, g2 = (s["groups"] for s in r["stages"])
    assert g1["caption"] > 0 and g1["instruction"] == 0   # vision model + abstractor
    assert g2["caption"] == 0 and g2["instruction"] > 0   # LoRA only
    root = workdir / "systems" / "owl"
    init, one, two = _flat(root / "init"), _flat(root / "stage1" / "ckpt"), _flat(root / "stage2" / "ckpt")
    for before, after, trained in ((init, one, ("owl_vision", "abstractor")), (one, two, ())):
        for k, v in before.items():  # the stage's groups moved, every other leaf is bit-identical
            assert (not np.array_equal(np.asarray(v), np.asarray(after[k]))) == (k[0] in trained), "/".join(k)
    lora = [k for k in two if k[-1] == "lora_b"]
    assert lora and all(np.abs(np.asarray(two[k])).max() > 0 for k in lora)  # B starts at zero: it trained
    base, heads = _flat(workdir / "base"), read_config(root / "init").vision.heads
    vision = traverse_util.flatten_dict(clip_to_owl_vision(
        traverse_util.unflatten_dict({k[1:]: v for k, v in base.items() if k[0] == "clip"}), heads))
    for k, v in vision.items():  # stage 1 started from the demo's CLIP tower
        np.testing.assert_array_equal(np.asarray(init[("owl_vision",) + k]), v)


def check_llava_init(workdir) -> None:
    from lav2_jax.demo.data import Paths

    paths = Paths(os.path.abspath(workdir))
    stage1, stage2 = systems.stage_configs("llava", lav2_config(workdir), os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"), paths, 0)
    init_dir = str(workdir / "llava_init")
    system_inits.write_init(stage1, str(workdir / "prior"), str(workdir / "base"), paths.tokenizer, init_dir)
    init, prior, base = _flat(init_dir), _flat(workdir / "prior"), _flat(workdir / "base")
    for k, v in init.items():  # LLM from the prior, tower from the demo's base, the projector fresh
        if k[0] == "clip":
            np.testing.assert_array_equal(np.asarray(v), np.asarray(base[k]))
        elif k[0] != "mm_projector":
            np.testing.assert_array_equal(np.asarray(v), np.asarray(prior[k]))
    stage1.model.base_checkpoint = stage2.model.base_checkpoint = init_dir
    c1, c2 = systems.trainable_counts(stage1), systems.trainable_counts(stage2)
    projector = sum(int(np.size(v)) for k, v in init.items() if k[0] == "mm_projector")
    llm = sum(int(np.size(v)) for k, v in init.items() if k[0] not in ("mm_projector", "clip"))
    assert (c1["caption"], c1["instruction"]) == (projector, 0)
    assert (c2["caption"], c2["instruction"]) == (projector, llm)
