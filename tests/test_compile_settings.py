"""`lav2 compile --config` flags, `config.model.scan_layers`, and the batch search of `benchmarks/tpu_sizing.py`
(the search is checked against a made-up linear memory model: nothing is compiled here)."""

import importlib.util
import os

import pytest

from lav2_jax.cli import compile as compile_cli
from lav2_jax.cli.main import build_parser, main
from lav2_jax.cli.train import load_config
from lav2_jax.train import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny_joint.py")


def _args(*argv):
    return build_parser().parse_args(["compile", "--config", TINY, "--topology", "v5e:2x2", *argv])


def test_compile_batch_sets_every_stream_of_the_recipe():
    config, mesh = compile_cli.train_config(_args("--batch", "16"))
    assert (config.batch.caption, config.batch.instruction) == (16, 16)
    assert mesh.shape["fsdp"] == 4
    config, _ = compile_cli.train_config(_args("--config.batch.caption=4"))  # no --batch: the config's own rows
    assert (config.batch.caption, config.batch.instruction) == (4, 8)


def test_compile_seq_with_config_is_a_user_error(capsys):
    assert main(["compile", "--config", TINY, "--topology", "v5e:2x2", "--seq", "64"]) == 2
    err = capsys.readouterr().err
    assert "--seq 64 is for --model" in err and "--config.data.<stream>.max_len" in err and "Traceback" not in err


def test_scan_layers_from_a_training_config():
    assert state_lib.model_configs(load_config(TINY, []).model)[0].scan_layers  # unset: the preset's
    mc = load_config(TINY, ["--config.model.scan_layers=False"]).model
    assert mc.scan_layers is False and state_lib.model_configs(mc)[0].scan_layers is False
    assert not state_lib.model_from_config(mc).config.scan_layers
    mc.base_checkpoint = "/nonexistent/ckpt"
    with pytest.raises(ValueError, match="scan_layers=False needs a random base"):
        state_lib.model_from_config(mc)


@pytest.fixture(scope="module")
def sizing():
    spec = importlib.util.spec_from_file_location("tpu_sizing", os.path.join(ROOT, "benchmarks", "tpu_sizing.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_batch_search_finds_the_largest_fitting_batch_in_few_compiles(sizing):
    gib, hbm = 2 ** 30, 16  # v5e: 16 GiB per chip, limit 0.75 × 16 = 12 GiB
    calls = []

    def fake_compile(row, variant, batch, remat=None, accum=None):  # 2 GiB fixed + 0.07 GiB per row (+ 3 % curve)
        calls.append(batch)
        temp = 0.07 * batch * gib * (1 + 0.03 * batch / 64)
        peak = 2 * gib + temp
        return dict(row=row, variant=variant, batch=batch, peak_bytes=peak, temp_bytes=temp,
                    hbm_fraction=peak / gib / hbm, devices_per_chip=1)

    r = sizing.size_row("7b-v5e8", "packed", [512, 256, 128, 64, 32], 0.75, fake_compile)
    assert r["batch"] == 128 and r["hbm_fraction"] <= 0.75  # 128: 11.5 GiB fits, 256: 21.6 GiB does not
    assert calls == [32, 128] and list(r["predicted"]) == [256] and r["predicted"][256] > 0.75 * hbm * 1.1
    calls.clear()
    r = sizing.size_row("7b-v5e8", "packed", [64, 32], 0.75, fake_compile)
    assert r["batch"] == 64 and r["largest_tried"] and calls == [32, 64]
    assert sizing.predict_largest({64: (6 * gib, 4 * gib)}, [128, 256], 12 * gib) == 128  # temps scale with batch
