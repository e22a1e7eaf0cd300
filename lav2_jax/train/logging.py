"""Training logs: a tqdm bar, TensorBoard events (tensorboardX) and `<workdir>/metrics.jsonl`.

Each logged step writes one JSON line: `step`, per-stream `loss/<stream>`, per-group `lr/<group>` and
`grad_norm/<group>`, `gate/adapter` and `gate/visual` (mean |tanh(gate)| per layer: the gates open from 0 as training
proceeds, paper §4.1), `tokens_per_s`, `mfu` (when a peak is known) and `time`. Only process 0 logs.

MFU counts the work of a trained token as 4·N_matmul + 12·L·T·d FLOPs (docs/design.md §9): forward and activation
gradient of every matmul weight (frozen weights need no weight gradient) plus attention scores and values.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm


def matmul_params(config) -> int:
    """Weights of the LLaMA matmuls per forward token: attention and FFN of every layer plus the output head."""
    d, hd = config.dim, config.head_dim
    attn = d * (config.n_heads * hd) * 2 + d * (config.kv_heads * hd) * 2
    ffn = 3 * d * config.hidden_dim
    return config.n_layers * (attn + ffn) + d * config.vocab_size


def train_flops_per_token(config, seq_len: int) -> float:
    """≈ 4·N_matmul + 12·L·T·d (docs/design.md §9)."""
    return 4.0 * matmul_params(config) + 12.0 * config.n_layers * seq_len * config.dim


def measure_matmul_peak(n: int = 2048, dtype: str = "float32", iters: int = 5) -> float:
    """FLOP/s of an n×n×n matmul on the default device (median of `iters` after a warm-up): the MFU reference."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2.0 * n ** 3 / float(np.median(times))


class MetricsLogger:
    """Progress bar + TensorBoard + JSONL; a no-op on processes other than 0 (`enabled=False`)."""

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0, enabled: bool = True,
                 tensorboard: bool = True, progress: bool = True):
        self.enabled = enabled
        self.writer = self.bar = self.jsonl = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        if tensorboard:
            from tensorboardX import SummaryWriter  # lazy: it imports protobuf; runs without tensorboard skip it

            self.writer = SummaryWriter(os.path.join(workdir, "tb"))
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def step(self, n: int = 1, postfix: Optional[Mapping[str, float]] = None) -> None:
        """Advances the bar (ETA comes from tqdm's rate) and shows per-stream losses and tokens/s."""
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "time": time.time()}
        for k, v in metrics.items():
            record[k] = v if isinstance(v, list) else float(v)
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for k, v in record.items():
                if k in ("step", "time"):
                    continue
                if isinstance(v, list):
                    for i, x in enumerate(v):
                        self.writer.add_scalar(f"{k}/layer_{i:02d}", x, step)
                else:
                    self.writer.add_scalar(k, v, step)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()
