"""Ahead-of-time compilation for a TPU topology on this CPU host (libtpu installed by `make test`)."""

import json

import jax
import numpy as np

from lav2_jax.train import aot
from lav2_jax.core import presets
from lav2_jax.cli.main import main
from lav2_jax.model.factory import abstract_params, build_model


def test_compile_forward_for_v5e_shards_weights():
    config = presets.get_model("bench-s").replace(n_layers=2, weight_dtype="bfloat16")
    model = build_model(config, presets.get_adapter("chat65b"))
    mesh = aot.topology_mesh("v5e:2x2", data=1, fsdp=-1, tensor=1)
    assert mesh.shape == {"data": 1, "fsdp": 4, "tensor": 1}
    assert all(d.platform == "tpu" for d in mesh.devices.flat)
    report = aot.compile_report("v5e:2x2", mesh, aot.compile_forward(model, mesh, batch=4, seq=64))
    total = sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(abstract_params(model)))
    # FSDP over 4 chips: each chip holds about a quarter of the weights (small trainables replicated)
    assert total / 4 <= report.argument_bytes < total / 4 * 1.1
    assert report.output_bytes == 4 * 64 * config.vocab_size * 4 // 4  # f32 logits, batch sharded over 4
    assert report.xla_flops > 0


def test_cli_compile_json(capsys):
    rc = main(["compile", "--model", "bench-s", "--adapter", "lora", "--topology", "v5e:2x2", "--mesh", "2,2,1",
               "--batch", "4", "--seq", "32", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1} and out["num_devices"] == 4
    assert out["peak_bytes"] == out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]


def test_cli_compile_bad_input(capsys):
    assert main(["compile", "--model", "bench-s", "--topology", "v5e:2x2", "--mesh", "2,2"]) == 2
    assert "--mesh '2,2'" in capsys.readouterr().err
    assert main(["compile", "--model", "bench-s", "--topology", "v5e:2x2", "--mesh", "3,-1,1"]) == 2
    assert "4 devices do not divide" in capsys.readouterr().err
    assert main(["compile", "--model", "bench-s", "--topology", "v5e:2x2", "--batch", "3", "--mesh", "1,-1,1"]) == 2
    assert "--batch 3 does not divide" in capsys.readouterr().err


def test_compile_train_step_of_a_config(capsys):
    """The training step a `lav2 train` config describes compiles for a TPU slice; its state is donated."""
    config = aot.load_config("configs/tiny_joint.py")
    mesh = aot.topology_mesh("v5e:2x2", data=2, fsdp=2, tensor=1)
    report = aot.compile_report("v5e:2x2", mesh, aot.compile_train_step(config, mesh))
    assert report.alias_bytes > 0  # the donated train state (params + AdamW moments) is updated in place
    assert report.temp_bytes > 0 and report.xla_flops > 0
    assert main(["compile", "--config", "configs/tiny_joint.py", "--topology", "v5e:2x2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["program"] == "train_step" and "joint" in out["what"] and "'train'" not in out["what"]
    assert main(["compile", "--config", "configs/missing.py", "--topology", "v5e:2x2"]) == 2
    assert "configs/missing.py not found" in capsys.readouterr().err
    assert main(["compile", "--topology", "v5e:2x2"]) == 2
