"""One optimizer group's settings as a training config holds them (`config.optim.<group>`).

`group(base_lr, weight_decay, warmup_steps, scale_lr_by_batch)` → ConfigDict with base_lr, scale_lr_by_batch
(lr = base_lr · global batch / 256 when True), warmup_steps, weight_decay, AdamW b1 0.9 / b2 0.95 / eps 1e-8, and
min_lr 0 (the end of the cosine). `lav2_jax.train.optimizer` builds the optax transformation from it; training
configs (`lav2_jax.train.defaults`, `configs/*.py`) and systems' config helpers build their groups with it.
"""

from __future__ import annotations

import ml_collections


def group(base_lr: float, weight_decay: float, warmup_steps: int = 0, scale_lr_by_batch: bool = True
          ) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(base_lr=base_lr, scale_lr_by_batch=scale_lr_by_batch,
                                          warmup_steps=warmup_steps, weight_decay=weight_decay, b1=0.9, b2=0.95,
                                          eps=1e-8, min_lr=0.0))
