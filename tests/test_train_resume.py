"""Killed runs resume to the uninterrupted result (orbax checkpoints, SIGKILL, SIGTERM)."""

import os

import jax
import numpy as np
import pytest

from tests.train_utils import final_params, leaves, read_losses, run_train, uninterrupted_run

STEPS = ("--config.total_steps=12", "--config.checkpoint.every_steps=4", "--config.log.every_steps=1")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return uninterrupted_run(tmp_path_factory, "uninterrupted", *STEPS)


def assert_same_run(work, reference):
    a, b = leaves(final_params(work, 12)), leaves(final_params(reference, 12))
    for k in b:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bit-identical on CPU
    # the resumed run logs the steps after its checkpoint again: compare the last occurrence of each step
    for key in ("loss/caption", "loss/instruction"):
        assert read_losses(work, key)[-4:] == read_losses(reference, key)[-4:]


def test_sigkill_between_checkpoints_then_resume(tmp_path, uninterrupted):
    work = str(tmp_path)
    killed = run_train(work, *STEPS, "--config.fault.kill_after_step=10")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["4", "8"]
    resumed = run_train(work, *STEPS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 8" in resumed.stdout + resumed.stderr
    assert_same_run(work, uninterrupted)


def test_sigterm_writes_checkpoint_and_exits_then_resume(tmp_path, uninterrupted):
    work = str(tmp_path)
    stopped = run_train(work, *STEPS, "--config.fault.sigterm_after_step=6")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "preempted at step 6" in stopped.stdout
    assert "6" in os.listdir(os.path.join(work, "checkpoints"))
    resumed = run_train(work, *STEPS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 6" in resumed.stdout + resumed.stderr
    assert_same_run(work, uninterrupted)


def test_checkpoint_holds_state_not_frozen_base(uninterrupted):
    from lav2_jax.train.checkpointing import read_state

    state = read_state(os.path.join(uninterrupted, "checkpoints"))
    assert set(state) == {"step", "params", "opt_state", "rng"} and int(state["step"]) == 12
    assert "tok_embeddings" not in state["params"] and "clip" not in state["params"]
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda x: np.isfinite(x).all(), state["params"]))
