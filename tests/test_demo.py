"""`lav2 demo --quick` end to end (data, priors, joint training, export, held-out evaluation, report), the saved
checkpoint through `lav2 generate`, and the tokenizer rules of exported checkpoints."""

import json
import os

import jax
import pytest

from lav2_jax.core import presets
from lav2_jax.checkpoint import save_pretrained
from lav2_jax.cli.main import main
from lav2_jax.demo import scenes as sc
from lav2_jax.demo.report import CONDITIONS
from lav2_jax.demo.run import QUICK_TRAIN_STEPS
from lav2_jax.demo import heldout
from lav2_jax.model.factory import build_model, init_params

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--workdir", str(workdir)]) == 0
    return workdir


def _predictions(demo_dir, condition: str) -> dict:
    """The held-out evaluation's prediction records of one condition, by id."""
    with open(demo_dir / "eval" / condition / "predictions.jsonl") as f:
        return {r["id"]: r for r in map(json.loads, f)}


@pytest.mark.slow
def test_demo_quick_report(demo_dir):
    with open(demo_dir / "report.json") as f:
        report = json.load(f)
    assert set(report) == {"heldout", "time_s", "peak_rss_mib"}
    assert set(report["heldout"]) == set(CONDITIONS)
    for cond in CONDITIONS:
        for metric in ("caption_accuracy", "vqa_accuracy", "text_accuracy"):
            assert 0.0 <= report["heldout"][cond][metric] <= 1.0
    h = report["heldout"]
    # No image reaches the model with the gates off (nor the untrained base): greedy decoding gives every scene
    # the same words, and the held-out answers are balanced, so these score at most chance.
    for cond in ("gates_off", "untrained"):
        for metric in ("caption_accuracy", "vqa_accuracy"):
            assert h[cond][metric] <= h["chance"][metric] + 1e-9
    assert h["chance"]["caption_accuracy"] == pytest.approx(sc.chance())
    # The visual path carries the image: with it the trained adapter names far more attributes than with its
    # gates off (measured: 0.781 vs 0.354; colour 0.74, shape 0.46, count 0.93, position 1.00).
    assert h["trained"]["caption_accuracy"] >= h["gates_off"]["caption_accuracy"] + 0.3
    assert h["trained"]["vqa_accuracy"] > h["gates_off"]["vqa_accuracy"]
    # Every figure is the scoring of the predictions on disk, and report.md's table shows report.json's figures.
    data = heldout.load_heldout(demo_dir / "data" / "heldout.json")
    for cond in ("trained", "gates_off", "untrained"):
        assert h[cond] == heldout.score(data, _predictions(demo_dir, cond)), cond
    assert h["chance"] == heldout.chance_metrics(data)
    table = {}
    for line in (demo_dir / "report.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 1 + len(CONDITIONS) and cells[0] in h["trained"]:
            table[cells[0]] = cells[1:]
    assert table == {m: [f"{h[c][m]:.3f}" for c in CONDITIONS] for m in h["trained"]}
    png = (demo_dir / "report.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    rows = [json.loads(line) for line in open(demo_dir / "train" / "metrics.jsonl")]
    # The exported checkpoint is the run's last step (not the first one, which the save interval also keeps).
    assert os.listdir(demo_dir / "train" / "checkpoints") == [str(QUICK_TRAIN_STEPS)]
    assert all("loss/caption" in r and "loss/instruction" in r and "gate/visual" in r for r in rows)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(demo_dir / "train" / "tb"))


@pytest.mark.slow
def test_demo_checkpoint_generates(demo_dir, capsys):
    image = demo_dir / "data" / "images" / "heldout" / "0.png"
    capsys.readouterr()
    assert main(["generate", "--ckpt", str(demo_dir / "ckpt"), "--image", str(image), "--prompt",
                 "Generate caption of this image", "--temperature", "0", "--max-new-tokens",
                 str(heldout.MAX_NEW_TOKENS)]) == 0
    out = capsys.readouterr().out
    # The same prompt, image and greedy decoding as the held-out evaluation's caption of scene 0 (run batched
    # there): the same caption (measured: "one red square on the left", a red circle on the left), naming a value
    # of every attribute in the caption grammar.
    assert out.strip() == _predictions(demo_dir, "trained")["caption/0"]["prediction"].strip()
    assert None not in sc.parse_caption(out).values()


def test_checkpoint_without_tokenizer_is_a_user_error(tmp_path, capsys):
    config = presets.get_model("tiny")
    model = build_model(config, presets.get_adapter("none"))
    ckpt = save_pretrained(tmp_path / "notok", model, init_params(model, jax.random.PRNGKey(0)))
    assert main(["generate", "--ckpt", ckpt, "--prompt", "hi", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert "no tokenizer" in err and "tokenizer/" in err and "Traceback" not in err


@pytest.mark.slow
def test_synthetic_run_export_generates(tmp_path, capsys):
    """The README's `lav2 train --config configs/tiny_joint.py` → `lav2 export trained` → `lav2 generate`."""
    from train_utils import TINY_CONFIG

    workdir, out = str(tmp_path / "run"), str(tmp_path / "ckpt")
    assert main(["train", "--config", TINY_CONFIG, "--workdir", workdir, "--config.total_steps=2",
                 "--config.log.progress=False", "--config.checkpoint.use_async=False"]) == 0
    assert main(["export", "trained", "--workdir", workdir, "--out", out]) == 0
    assert os.path.isfile(os.path.join(out, "tokenizer", "tokenizer.model"))
    capsys.readouterr()
    assert main(["generate", "--ckpt", out, "--prompt", "hi", "--max-new-tokens", "4", "--raw"]) == 0


@pytest.mark.slow
def test_demo_systems_side_by_side(demo_dir):
    """`lav2 demo --systems` over this demo's data and priors (tests/systems_checks.py): Owl trained 2 steps a
    stage, the table, each stage's groups; LLaVA's starting checkpoint and recipe groups."""
    from systems_checks import check_llava_init, check_owl_run

    check_llava_init(demo_dir)
    check_owl_run(demo_dir)
