"""Fault injection on `lav2 train`: SIGKILL at 5 seeded points (between steps, during an async checkpoint write,
while the data iterators' state is saved), damaged checkpoints, `--resume-from`; every resume ends bit-identical
to one uninterrupted run. The counts go to `fault_counts.json` (read by `benchmarks/fault_report.py`)."""

import json
import os
import random
import shutil

import numpy as np
import pytest

from tests.train_utils import leaves, run_train, uninterrupted_run

pytestmark = pytest.mark.faults

TOTAL, EVERY = 12, 3
STEPS = (f"--config.total_steps={TOTAL}", f"--config.checkpoint.every_steps={EVERY}", "--config.checkpoint.keep=20",
         "--config.log.every_steps=1", "--config.log.tensorboard=False")
KILLS = 5
SEED = 15
RESUME_FROM_RUN = 3  # this run of the chain resumes with `--resume-from` an older step than the newest
FLAG = {"between": "kill_after_step", "async_write": "kill_during_save", "data_state": "kill_in_data_state"}
COUNTS: dict = {"faults_injected": 0, "resumes": 0, "resumes_bit_identical": 0, "damaged_checkpoints": 0,
                "named_errors": 0, "crashes": 0}


def kill_plan(seed: int = SEED, n: int = KILLS) -> list[tuple[str, int, float]]:
    """n (kind, step, delay) at strictly increasing steps, every kind at least once; checkpoint kinds fall on
    checkpoint steps. Each kill's step lies after the previous one, so a chain of resumes reaches all of them."""
    rng = random.Random(seed)
    while True:
        kinds = [rng.choice(sorted(FLAG)) for _ in range(n)]
        steps = [rng.choice(range(EVERY, TOTAL + 1, EVERY)) if k != "between" else rng.randrange(1, TOTAL + 1)
                 for k in kinds]
        if set(kinds) == set(FLAG) and len(set(steps)) == n:
            order = sorted(range(n), key=steps.__getitem__)
            return [(kinds[i], steps[i], round(rng.uniform(0.0, 0.1), 3)) for i in order]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return uninterrupted_run(tmp_path_factory, "reference", *STEPS)


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    path = os.environ.get("LAV2_FAULT_COUNTS")
    if path:
        with open(path, "w") as f:
            json.dump(COUNTS, f)


def complete_steps(work) -> list[int]:
    d = os.path.join(work, "checkpoints")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def same_checkpoint(work, reference, step) -> bool:
    """State (params, optimizer state, step, RNG) bit-identical and the same data-iterator states."""
    from lav2_jax.train.checkpointing import read_state

    a = leaves(read_state(os.path.join(work, "checkpoints"), step))
    b = leaves(read_state(os.path.join(reference, "checkpoints"), step))
    data = [json.load(open(os.path.join(w, "checkpoints", str(step), "data", "metadata"))) for w in (work, reference)]
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a) and data[0] == data[1]


def last_losses(work) -> dict:
    out = {}
    with open(os.path.join(work, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            out[r["step"]] = (r["loss/caption"], r["loss/instruction"])  # a resumed run logs its steps again
    return out


def quiet(stderr: str) -> bool:
    return "Traceback" not in stderr and "Exception ignored" not in stderr and "never retrieved" not in stderr


def damage(work, step, how) -> str:
    """Truncates every array file of checkpoint `step`'s state item to a third (an interrupted copy), or deletes
    the largest one; returns the largest one's path. Every file is truncated because which data file holds the
    arrays a restore reads depends on the write history (a resumed run's item may keep a file no array points to)."""
    root = os.path.join(work, "checkpoints", str(step), "state")
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if os.sep + "d" + os.sep in
             os.path.join(d, f)]
    target = max(files, key=os.path.getsize)
    if how == "truncate":
        for f in files:
            os.truncate(f, os.path.getsize(f) // 3)
    else:
        os.remove(target)
    COUNTS["faults_injected"] += 1
    COUNTS["damaged_checkpoints"] += 1
    return target


def test_sigkill_chain_then_damaged_checkpoints_resume_bit_identical(tmp_path, reference):
    """5 SIGKILLs, each resumed by the next run (one with `--resume-from` an older step); then the two newest
    checkpoints are damaged (one truncated, one with a deleted file) and the last run falls back past both, warns,
    and still ends bit-identical."""
    work = str(tmp_path)
    plan = kill_plan()
    assert {k for k, _, _ in plan} == set(FLAG) and len(plan) == KILLS
    for i, (kind, step, delay) in enumerate(plan):
        done = complete_steps(work)
        pick = ("--resume-from", str(done[-2])) if i == RESUME_FROM_RUN else ()  # an older step, newer ones aside
        out = run_train(work, *STEPS, *pick, f"--config.fault.{FLAG[kind]}={step}",
                        f"--config.fault.kill_delay_s={delay}")
        COUNTS["faults_injected"] += 1
        if pick:
            assert f"resumed from step {done[-2]}" in out.stdout + out.stderr, out.stdout + out.stderr
            assert os.listdir(os.path.join(work, "discarded_checkpoints")) == [str(done[-1])]
        COUNTS["crashes"] += out.returncode not in (-9, 0)
        assert out.returncode == -9, (kind, step, out.stderr[-3000:])
        done = complete_steps(work)
        assert max(done) <= step and (kind == "between" or step not in done), (kind, step, done)
        assert all(same_checkpoint(work, reference, s) for s in done), (kind, step, done)
        if i:  # this run resumed the previous one; everything it wrote matches the uninterrupted run
            COUNTS["resumes"] += 1
            COUNTS["resumes_bit_identical"] += 1
    before = complete_steps(work)
    assert len(before) >= 3, before
    damage(work, before[-1], "truncate")
    damage(work, before[-2], "delete")
    out = run_train(work, *STEPS)
    COUNTS["crashes"] += out.returncode != 0
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    for s in before[-2:]:
        assert f"checkpoint {os.path.join(work, 'checkpoints', str(s))}, item 'state', array " in text, text
        assert any(d.split(".")[0] == str(s) for d in os.listdir(os.path.join(work, "discarded_checkpoints")))
    COUNTS["named_errors"] += 2
    assert f"resumed from step {before[-3]}" in text, text
    assert quiet(out.stderr), out.stderr[-3000:]
    assert complete_steps(work)[-1] == TOTAL and same_checkpoint(work, reference, TOTAL)
    assert last_losses(work) == last_losses(reference)
    COUNTS["resumes"] += 1
    COUNTS["resumes_bit_identical"] += 1


def test_no_readable_checkpoint_is_a_named_error_never_step_0(tmp_path, reference):
    """Every step damaged: `Checkpointer.resume` raises naming the directory, and nothing is moved or trained."""
    from lav2_jax.checkpoint.items import CheckpointReadError
    from lav2_jax.train.checkpointing import Checkpointer, read_state

    work = str(tmp_path / "w")
    shutil.copytree(reference, work)
    target = read_state(os.path.join(reference, "checkpoints"), TOTAL)
    for s in complete_steps(work):
        damage(work, s, "truncate")
    import jax

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), target)
    ckpt = Checkpointer(os.path.join(work, "checkpoints"), EVERY, 20, use_async=False)
    warnings = []
    with pytest.raises(CheckpointReadError, match="no readable checkpoint"):
        ckpt.resume(abstract, warn=warnings.append)
    assert len(warnings) == len(complete_steps(work)) and all("item 'state', array " in w for w in warnings)
    with pytest.raises(CheckpointReadError, match=r"checkpoint .*/9, item 'state', array "):
        ckpt.resume(abstract, step=9)
    with pytest.raises(CheckpointReadError, match="no checkpoint at step 7"):
        ckpt.resume(abstract, step=7)
    ckpt.close()
    with pytest.raises(CheckpointReadError, match=r"checkpoint .*/12, item 'state', array "):
        read_state(os.path.join(work, "checkpoints"), TOTAL)  # `lav2 export trained` reads with it
    assert complete_steps(work) == complete_steps(reference)  # nothing moved aside when nothing could resume
    COUNTS["named_errors"] += len(warnings) + 3
