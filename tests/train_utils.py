"""Helpers for the training tests: the tiny joint config, in-process setups, and `lav2 train` subprocesses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, "configs", "tiny_joint.py")
# Subprocesses share a persistent compilation cache: only the first run of a program pays for XLA.
CACHE_DIR = os.path.join(tempfile.gettempdir(), "lav2_train_test_jax_cache")


def tiny_config(*overrides: str):
    from lav2_jax.cli.train import load_config

    config = load_config(TINY_CONFIG, list(overrides))
    config.unlock()
    config.log.progress = False
    return config


def subprocess_env(devices: int = 1, **extra) -> dict:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=CACHE_DIR, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", PYTHONPATH=ROOT)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def train_cmd(workdir: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "lav2_jax.cli.main", "train", "--config", TINY_CONFIG, "--workdir", workdir,
            "--config.log.progress=False", *overrides]


def run_train(workdir: str, *overrides: str, devices: int = 1, timeout: int = 300,
              **env) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(workdir, *overrides), env=subprocess_env(devices, **env), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def final_params(workdir: str, step=None) -> dict:
    from lav2_jax.train.checkpointing import read_state

    return read_state(os.path.join(workdir, "checkpoints"), step)["params"]


def leaves(tree) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def max_abs_diff(a, b) -> float:
    la, lb = leaves(a), leaves(b)
    assert la.keys() == lb.keys()
    return max(float(np.max(np.abs(la[k] - lb[k]))) for k in la)


def read_losses(workdir: str, key: str) -> list[float]:
    import json

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)[key] for line in f]


def uninterrupted_run(tmp_path_factory, name: str, *overrides: str) -> str:
    """Workdir of one complete `lav2 train` run (the reference the resume and fault tests compare against)."""
    work = str(tmp_path_factory.mktemp(name))
    out = run_train(work, *overrides)
    assert out.returncode == 0, out.stderr[-3000:]
    return work
