"""Every field a training config has, with defaults (`configs/*.py` start from `base_config()` and change a few).

Fields:
  model.preset / adapter / vision    presets (`lav2_jax.core.presets`); `tiny_adapter` shrinks the adapter to the model
  model.base_checkpoint              path for `lav2_jax.checkpoint.load_pretrained` ('' = random base from preset)
  model.remat_policy, weight_dtype, dtype   overrides ('' = the preset's)
  model.attention                    xla | flash (Pallas TPU splash kernel) | blocked (causal query blocks, CPU
                                     training); '' = the preset's, xla
  model.scan_layers                  True | False: layers as one `nn.scan` (stacked) or a Python loop; unset = the
                                     preset's (True). False needs a random base (no base_checkpoint)
  model.seed, model.output_scale     random base only (see `lav2_jax.train.state`)
  param_recipe                       column of the group table (`lav2_jax.core.param_groups.RECIPES`)
  recipe                             joint | pretrain | finetune | full (`lav2_jax.train.step.RECIPES`)
  total_steps, seed                  optimizer steps of the run; RNG seed of the train state
  batch.<stream>                     global batch rows per step of each stream
  optim.<group>                      base_lr, scale_lr_by_batch (lr = blr·batch/256), warmup_steps, weight_decay,
                                     b1, b2, eps, min_lr
  optim.accum_steps, optim.clip_norm gradient accumulation micro-batches; per-stream global-norm clip (0 = off)
  loss.vocab_chunk                   vocabulary columns per loss chunk (0 = whole vocabulary at once)
  loss.position_chunk                positions per row per loss chunk: > 0 runs the head at loss positions only,
                                     skipping chunks without one (a dynamic-count loop, `train.loss`); 0 = every
                                     position (default: a static program, whose FLOPs `lav2 compile` counts)
  data.source                        synthetic | pipeline (`lav2_jax.train.data`), and their settings
  data.channel_order                 rgb | bgr; '' = the base checkpoint's (`train.data.channel_order`), else rgb
  data.packing, data.<stream>.max_segments   pipeline: several samples per row (`lav2_jax.data.packing`)
  mesh.data / fsdp / tensor          mesh shape (-1 = fill)
  checkpoint.every_steps, keep, use_async
  log.every_steps, tensorboard, progress, peak_flops (per device FLOP/s for MFU; -1 = measure; 0 = no MFU)
  nan_policy                         stop | skip
  distributed.coordinator_address, num_processes, process_id, auto   (`lav2_jax.train.multihost`)
  fault.kill_after_step, sigterm_after_step, kill_during_save, kill_in_data_state, kill_delay_s
                                     failure injection for the resume and fault tests (-1 = off; `train.trainer`)
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def group(base_lr: float, weight_decay: float, warmup_steps: int = 0, scale_lr_by_batch: bool = True
          ) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(base_lr=base_lr, scale_lr_by_batch=scale_lr_by_batch,
                                          warmup_steps=warmup_steps, weight_decay=weight_decay, b1=0.9, b2=0.95,
                                          eps=1e-8, min_lr=0.0))


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(
        preset="llama1-7b", adapter="paper", vision="vit-l-14", tiny_adapter=False, base_checkpoint="",
        remat_policy="", weight_dtype="", dtype="", attention="", scan_layers=config_dict.placeholder(bool), seed=0,
        output_scale=1.0))
    c.param_recipe = "paper-joint"
    c.recipe = "joint"
    c.total_steps = 1000
    c.seed = 0
    c.batch = ml_collections.ConfigDict(dict(caption=32, instruction=32, train=32))
    c.optim = ml_collections.ConfigDict(dict(caption=group(1e-4, 0.05), instruction=group(1e-3, 0.02),
                                             accum_steps=1, clip_norm=0.0))
    c.loss = ml_collections.ConfigDict(dict(vocab_chunk=8000, position_chunk=0))
    c.data = ml_collections.ConfigDict(dict(
        source="synthetic", seed=0, seq_len=128, num_examples=0, answer_vocab=0, tokenizer="",
        channel_order="", worker_count=0, packing=False,
        caption=ml_collections.ConfigDict(dict(path="", max_len=96, max_segments=4)),
        instruction=ml_collections.ConfigDict(dict(path="", max_len=512)),
        train=ml_collections.ConfigDict(dict(path="", max_len=512))))
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=500, keep=3, use_async=True))
    c.log = ml_collections.ConfigDict(dict(every_steps=10, tensorboard=True, progress=True, peak_flops=0.0))
    c.nan_policy = "stop"
    c.distributed = ml_collections.ConfigDict(dict(coordinator_address="", num_processes=0, process_id=-1,
                                                   auto=False))
    c.fault = ml_collections.ConfigDict(dict(kill_after_step=-1, sigterm_after_step=-1, kill_during_save=-1,
                                             kill_in_data_state=-1, kill_delay_s=0.0))
    return c


def pod_config(preset: str, adapter: str, vision: str, param_recipe: str, recipe: str, total_steps: int,
               every_steps: int = 1000) -> ml_collections.ConfigDict:
    """The shared shape of the real-model configs: bf16 frozen base (from `--config.model.base_checkpoint`), full
    remat, grain pipelines with 4 workers, FSDP over every device, checkpoints every `every_steps`."""
    c = base_config()
    c.model.update(preset=preset, adapter=adapter, vision=vision, weight_dtype="bfloat16", dtype="bfloat16",
                   remat_policy="full")
    c.param_recipe, c.recipe, c.total_steps = param_recipe, recipe, total_steps
    c.data.update(source="pipeline", worker_count=4)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.checkpoint.update(every_steps=every_steps, keep=3)
    return c
