"""Sharded and multi-process training agree with one device / one process (docs/design.md §8)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.train_utils import ROOT, final_params, free_port, max_abs_diff, read_losses, subprocess_env, train_cmd

STEPS = 6

SHARDED_SCRIPT = r"""
import json, sys, jax, numpy as np
from lav2_jax.core.sharding import make_mesh
from lav2_jax.train import state as state_lib
from lav2_jax.train.data import make_data
from lav2_jax.train.mesh import global_batch
from tests.train_utils import tiny_config, max_abs_diff

def run(mesh, steps):
    config = tiny_config()
    setup, state = state_lib.build(config, mesh)
    data = make_data(config, setup)
    losses = []
    for _ in range(steps):
        state, m = setup.train_step(state, setup.frozen, global_batch(next(data), mesh))
        losses.append([float(m["loss/caption"]), float(m["loss/instruction"])])
    sharded = sorted({str(x.sharding.spec) for x in jax.tree_util.tree_leaves(setup.frozen)})
    return losses, jax.device_get(state["params"]), sharded

assert jax.device_count() == 8
l1, p1, _ = run(make_mesh(1, 1, 1, jax.devices()[:1]), int(sys.argv[1]))
l8, p8, specs = run(make_mesh(2, 2, 2), int(sys.argv[1]))
print(json.dumps({"losses_1": l1, "losses_8": l8, "param_diff": max_abs_diff(p1, p8), "specs": specs}))
"""


def test_mesh_2x2x2_matches_one_device():
    """data×fsdp×tensor = 2×2×2 on 8 host devices vs 1 device, 6 joint steps of the tiny model.

    Sharding only changes the order of float32 reductions (batch sums over data/fsdp, contractions over tensor):
    losses agree to ~1e-6 relative (asserted 1e-5). Parameters: AdamW's update m/(√v+ε) is scale-free, so for a
    leaf whose gradient is itself near rounding level (e.g. the connector's qkv bias while the visual gate is still
    almost closed) a reduction-order difference changes the update by O(lr) rather than O(lr·1e-7). With the tiny
    config's lr 0.1 the largest possible movement in 6 steps is 0.6; measured max |Δparam| 3.8e-5 (leaves ~0.2-3),
    asserted ≤ 1e-4, i.e. < 2e-4 of the movement — a real sharding bug (a wrong reduction, a missing all-reduce)
    shows up as O(1e-2) or more.
    """
    out = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(STEPS)], env=subprocess_env(8), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(res["losses_8"], res["losses_1"], rtol=1e-5)
    assert res["param_diff"] <= 1e-4, res["param_diff"]
    assert any("fsdp" in s for s in res["specs"]) and any("tensor" in s for s in res["specs"]), res["specs"]


@pytest.mark.multiprocess
def test_two_processes_match_one_process(tmp_path):
    """Two processes (1 CPU device each, gloo collectives, jax.distributed on a free localhost port) train the tiny
    config with mesh data=2, each feeding its half of the global batch; one process with 2 devices and the same mesh
    runs the same program: losses and final parameters (read from the orbax checkpoints both wrote) agree."""
    common = (f"--config.total_steps={STEPS}", "--config.checkpoint.every_steps=3", "--config.mesh.data=2",
              "--config.mesh.fsdp=1", "--config.log.every_steps=1")
    multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
    port = free_port()
    procs = [subprocess.Popen(train_cmd(multi, *common), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=subprocess_env(1, LAV2_COORDINATOR=f"localhost:{port}",
                                                            LAV2_NUM_PROCESSES=2, LAV2_PROCESS_ID=i))
             for i in range(2)]
    ref = subprocess.run(train_cmd(single, *common), env=subprocess_env(2), cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-3000:]
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "mesh {'data': 2" in outs[0] and "lav2 train: {" not in outs[1]  # only process 0 logs
    assert not os.path.exists(os.path.join(multi, "metrics.jsonl.1"))
    for key in ("loss/caption", "loss/instruction"):
        np.testing.assert_allclose(read_losses(multi, key), read_losses(single, key), rtol=1e-6)
    assert max_abs_diff(final_params(multi), final_params(single)) <= 1e-6
