"""The training loop (paper §4.2 joint training; docs/design.md §6, §8).

`train(config, workdir)`:
  1. `jax.distributed` when several processes take part (`lav2_jax.train.multihost`), the `(data, fsdp, tensor)`
     mesh from `config.mesh`;
  2. model, frozen base and trainable state on their shardings (`lav2_jax.train.state`), the data iterators
     (pipeline data: its tokenizer is first checked against the model's vocabulary, `train.data.check_tokenizer`);
  3. resume from the newest readable checkpoint in `<workdir>/checkpoints` when there is one (state, RNG, data
     iterators), or from step `resume_from`; an unreadable newer step is reported and moved aside
     (`Checkpointer.resume`);
  4. loop: host batch → global arrays → jitted step; metrics are fetched one step late so the host prepares the
     next batch while the device works; every `log.every_steps` a line goes to metrics.jsonl / TensorBoard;
     checkpoints every `checkpoint.every_steps` and at the end (async);
  5. SIGTERM (TPU preemption): finish the current step, write a checkpoint, exit cleanly (`preempted` in the result);
  6. a non-finite loss or gradient stops the run with `NonFiniteError` naming step, group and the last good
     checkpoint (`nan_policy="stop"`), or skips that group's update and goes on (`"skip"`). The step itself never
     applies a non-finite update, so every checkpoint holds finite parameters. A data worker process that dies
     stops the run with `DataWorkerError` (step, the worker's exit, the checkpoint to resume from).

`config.fault` injects failures for the resume tests: `kill_after_step` SIGKILLs the process once that step and
every checkpoint started before it are complete; `kill_during_save` SIGKILLs it `kill_delay_s` after the async
checkpoint write of that step started; `kill_in_data_state` SIGKILLs it while the checkpoint of that step holds the
data iterators' state but nothing is written yet; `sigterm_after_step` sends the process a real SIGTERM.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Optional

import jax
import numpy as np

from lav2_jax.train import multihost
from lav2_jax.train import state as state_lib
from lav2_jax.train.checkpointing import Checkpointer
from lav2_jax.train.data import check_tokenizer, make_data, next_batch
from lav2_jax.train.logging import MetricsLogger, measure_matmul_peak, train_flops_per_token
from lav2_jax.train.mesh import global_batch, mesh_from_config
from lav2_jax.train.optimizer import TRAINABLE_GROUPS, group_learning_rates


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN/inf (the message names step, group and the last good checkpoint)."""


class _Preemption:
    """Records SIGTERM instead of dying; restores the previous handler on exit."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _host(metrics: dict) -> dict:
    out = {}
    for k, v in jax.device_get(metrics).items():
        v = np.asarray(v)
        out[k] = v.tolist() if v.ndim else float(v)
    return out


class _Loop:
    """State of one run between steps (kept small: the loop body is `train`)."""

    def __init__(self, config, workdir: str, setup, ckpt: Checkpointer, logger: MetricsLogger):
        self.config, self.workdir, self.setup, self.ckpt, self.logger = config, workdir, setup, ckpt, logger
        self.last_good: Optional[int] = ckpt.latest_step()
        self.last_metrics: dict = {}
        self.window_start, self.window_work, self.window_tokens = time.time(), 0.0, 0
        self.step_work: dict[int, tuple[int, float]] = {}
        peak = float(config.log.peak_flops)
        self.peak = measure_matmul_peak() * jax.device_count() if peak < 0 else peak * jax.device_count()

    def account(self, step: int, batch: dict) -> None:
        """Records the tokens (all positions, this process) and FLOPs (whole global batch) of `step`."""
        mc, tokens, work = self.setup.model.config, 0, 0.0
        for b in batch.values():
            B, T = b["tokens"].shape
            tokens += B * T * jax.process_count()
            work += B * T * jax.process_count() * train_flops_per_token(mc, T)
        self.step_work[step] = (tokens, work)

    def finish(self, step: int, metrics) -> None:
        """Host side of step `step`: NaN check, progress bar, periodic log line."""
        m = _host(metrics)
        self.last_metrics = m
        tokens, work = self.step_work.pop(step, (0, 0.0))
        self.window_tokens += tokens
        self.window_work += work
        for g in TRAINABLE_GROUPS:
            if m.get(f"finite/{g}", 1.0) < 1.0:
                where = f"last good checkpoint: step {self.last_good}" if self.last_good is not None \
                    else "no checkpoint written yet"
                text = (f"non-finite loss or gradient at step {step} in group {g!r} "
                        f"(losses {({k: v for k, v in m.items() if k.startswith('loss/')})}); {where} in "
                        f"{self.ckpt.directory}")
                if self.config.nan_policy == "skip":
                    self.logger.message(f"skipping: {text}")
                else:
                    raise NonFiniteError(text)
        losses = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("loss/")}
        self.logger.step(1, losses)
        every = int(self.config.log.every_steps)
        if step % every and step != int(self.config.total_steps) and step != 1:
            return
        dt = max(time.time() - self.window_start, 1e-9)
        m["tokens_per_s"] = self.window_tokens / dt
        if self.peak > 0:
            m["mfu"] = self.window_work / dt / self.peak
        gb = state_lib.group_batches(self.setup.streams, self.setup.global_batch)
        lrs = group_learning_rates({g: dict(self.config.optim[g]) for g in TRAINABLE_GROUPS},
                                   int(self.config.total_steps), gb, step - 1)
        m.update({f"lr/{g}": v for g, v in lrs.items()})
        self.logger.log(step, m)
        self.window_start, self.window_work, self.window_tokens = time.time(), 0.0, 0

    def resume_hint(self) -> str:
        """Where a rerun of the same command resumes (for errors that stop the run)."""
        if self.last_good is None:
            return "no checkpoint written yet"
        return f"rerun to resume from step {self.last_good} in {self.ckpt.directory}"

    def save(self, step: int, state, data, force: bool = False) -> None:
        meta = {"step": step, "base_checkpoint": self.config.model.get("base_checkpoint", ""),
                "config": self.config.to_dict(), "losses": {k: v for k, v in self.last_metrics.items()
                                                            if k.startswith("loss/")}}
        if self.ckpt.save(step, state, data.get_state(), meta, force=force):
            self.last_good = step


def _fault_hook(fault) -> Any:
    """`Checkpointer` failure injection from `config.fault` (SIGKILL inside a checkpoint save)."""
    during, in_data = int(fault.get("kill_during_save", -1)), int(fault.get("kill_in_data_state", -1))
    delay = float(fault.get("kill_delay_s", 0.0))

    def hook(stage: str, step: int) -> None:
        if (stage == "async_write" and step == during) or (stage == "data_state" and step == in_data):
            time.sleep(delay)
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def train(config, workdir: str, resume_from: Optional[int] = None) -> dict[str, Any]:
    """Runs (or resumes) the configured training in `workdir`; returns a summary dict.

    `resume_from`: restore that checkpoint step (newer ones are moved aside) instead of the newest readable one.
    """
    multihost.initialize(config.get("distributed"))
    mesh = mesh_from_config(config.mesh)
    check_tokenizer(config, state_lib.model_from_config(config.model))  # before any weight is loaded
    setup, state = state_lib.build(config, mesh)
    data = make_data(config, setup)
    fault = config.get("fault", {})
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), int(config.checkpoint.every_steps),
                        int(config.checkpoint.keep), bool(config.checkpoint.use_async), _fault_hook(fault))
    start, restored, data_state, _ = ckpt.resume(state_lib.abstract_state(setup, state), resume_from,
                                                 warn=lambda text: print(f"lav2 train: {text}", flush=True))
    if start:
        state = restored
        data.set_state(data_state)
    total = int(config.total_steps)
    logger = MetricsLogger(workdir, total, start, enabled=multihost.is_main(),
                           tensorboard=bool(config.log.tensorboard), progress=bool(config.log.progress))
    loop = _Loop(config, workdir, setup, ckpt, logger)
    logger.message(f"lav2 train: {setup.counts} parameters; mesh {dict(mesh.shape)}; "
                   + (f"resumed from step {start}" if start else "starting at step 0"))
    preempted = False
    try:
        with _Preemption() as preemption:
            pending = None
            step = start
            while step < total:
                host_batch = next_batch(data, step + 1, loop.resume_hint())
                loop.account(step + 1, host_batch)
                state, metrics = setup.train_step(state, setup.frozen, global_batch(host_batch, mesh))
                step += 1
                if pending is not None:
                    loop.finish(*pending)
                pending = (step, metrics)
                if ckpt.should_save(step) or step == total:
                    loop.finish(*pending)
                    pending = None
                    loop.save(step, state, data, force=step == total)  # the final step whatever the interval
                if step == int(fault.get("kill_after_step", -1)):
                    jax.block_until_ready(state)
                    ckpt.wait()
                    os.kill(os.getpid(), signal.SIGKILL)
                if step == int(fault.get("sigterm_after_step", -1)):
                    os.kill(os.getpid(), signal.SIGTERM)
                if multihost.any_process(preemption.requested) and step < total:
                    if pending is not None:
                        loop.finish(*pending)
                        pending = None
                    loop.save(step, state, data, force=True)
                    logger.message(f"SIGTERM: checkpoint written at step {step}; exiting")
                    preempted = True
                    break
            if pending is not None:
                loop.finish(*pending)
    finally:
        ckpt.close()
        logger.close()
    return {"step": step, "preempted": preempted, "metrics": loop.last_metrics, "state": state,
            "checkpoint_dir": ckpt.directory}
