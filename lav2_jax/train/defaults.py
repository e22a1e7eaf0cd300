"""Every field a training config has, with defaults (`configs/*.py` start from `base_config()` and change a few).

One entry a line below: a field, or several sharing the first one's section, then what it means (`<stream>` is
each data stream, `<group>` each optimizer group). The docs' configuration reference is generated from these
entries, and its test checks that they cover every field.

Fields:
  model.preset                       model preset (`lav2_jax.core.presets`: llama1-7b … llama3-70b, bench-s/m, tiny)
  model.adapter                      adapter preset of a LLaMA-Adapter V2 run (paper, release-bias, lora, …)
  model.vision                       vision tower preset (vit-l-14, vit-l-14-336, vit-b-16, tiny, …)
  model.tiny_adapter                 True: shrink the adapter to the model (`presets.tiny_adapter`; tests, demo)
  model.base_checkpoint              path for `lav2_jax.checkpoint.load_pretrained` ('' = random base from preset)
  model.remat_policy                 none | full | dots | dots_no_batch | save_qkv_out | save_attn_ffn_out;
                                     '' = the preset's
  model.weight_dtype                 storage dtype of the frozen weights (bfloat16 | float32); '' = the preset's
  model.dtype                        activation (compute) dtype; '' = the preset's
  model.attention                    xla | flash (Pallas TPU splash kernel) | blocked (causal query blocks, CPU
                                     training); '' = the preset's, xla
  model.scan_layers                  True | False: layers as one `nn.scan` (stacked) or a Python loop; unset = the
                                     preset's (True). False needs a random base (no base_checkpoint)
  model.seed, model.output_scale     random base only: its init seed, and the factor on the output head's init
                                     (see `lav2_jax.train.state`)
  model.system                       optional: the system (`lav2_jax.systems`) whose model the run trains; absent
                                     = lav2 (LLaMA-Adapter V2, `model.adapter`); a system's config helper sets it
  param_recipe                       a system's parameter-group recipe (`lav2_jax.core.registry.recipes`)
  recipe                             joint | pretrain | finetune | full (`lav2_jax.train.step.RECIPES`)
  total_steps, seed                  optimizer steps of the run; RNG seed of the train state
  batch.<stream>                     global batch rows per step of each stream
  optim.<group>.base_lr              the group's peak learning rate (before `scale_lr_by_batch`)
  optim.<group>.scale_lr_by_batch    True: lr = base_lr · global batch / 256
  optim.<group>.warmup_steps         linear warm-up steps, then the decay to min_lr at total_steps
  optim.<group>.weight_decay         AdamW weight decay (never on biases, scales, gates or 1-D leaves)
  optim.<group>.b1, b2, eps          AdamW moment decay rates and epsilon
  optim.<group>.min_lr               learning rate at the end of the decay
  optim.<group>.decay                optional: cosine (absent: the release's half-cycle cosine) | linear
  optim.accum_steps                  gradient accumulation micro-batches (the update equals one full batch's)
  optim.clip_norm                    per-stream global-norm gradient clip (0 = off)
  loss.vocab_chunk                   vocabulary columns per loss chunk (0 = whole vocabulary at once)
  loss.position_chunk                positions per row per loss chunk: > 0 runs the head at loss positions only,
                                     skipping chunks without one (a dynamic-count loop, `train.loss`); 0 = every
                                     position (default: a static program, whose FLOPs `lav2 compile` counts)
  data.source                        synthetic | pipeline (`lav2_jax.train.data`)
  data.seed                          seed of the synthetic data and of the pipeline's shuffle
  data.seq_len                       synthetic: tokens per row
  data.num_examples                  synthetic: cycle through this many examples (0 = a fresh example every index)
  data.answer_vocab                  synthetic: answers drawn from the first N words only (0 = the whole vocabulary)
  data.tokenizer                     pipeline: tokenizer path (sentencepiece model or Hugging Face directory)
  data.channel_order                 rgb | bgr; '' = the base checkpoint's (`train.data.channel_order`), else rgb
  data.worker_count                  pipeline: grain worker processes per host (0 = in the main process)
  data.packing, data.<stream>.max_segments   pipeline: several samples per row (`lav2_jax.data.packing`); at most
                                     max_segments samples (image slots) per row
  data.<stream>.path                 pipeline: the stream's dataset directory (`lav2 data build --out`)
  data.<stream>.max_len              pipeline: tokens per row of the stream
  data.template                      optional: the prompt template of a system's conversation data (LLaVA: plain
                                     | vicuna_v1 | llava_v1 | v0; mPLUG-Owl: '', its one format)
  data.image_aspect                  optional: pad (square pad in the mean colour) | square (resize)
  data.group_by_modality_length      optional: each global batch all samples with an image or all text-only
                                     (`lav2_jax.data.modality_groups`)
  data.augment                       optional: the release's random resized crop + horizontal flip in training
  data.max_images                    optional: image slots per sample (several `<image>` markers need more than 1)
  mesh.data / fsdp / tensor          mesh shape (-1 = fill)
  checkpoint.every_steps             steps between checkpoints (the last step is always saved)
  checkpoint.keep                    checkpoints kept (older ones are deleted)
  checkpoint.use_async               write checkpoints in the background while training goes on
  log.every_steps                    steps between metrics lines (metrics.jsonl, TensorBoard)
  log.tensorboard, log.progress      write TensorBoard events (`<workdir>/tb`); show a tqdm bar
  log.peak_flops                     per-device FLOP/s for MFU (-1 = measure; 0 = no MFU)
  nan_policy                         stop | skip: on a non-finite loss, stop (exit 3) or skip that group's update
  distributed.coordinator_address, num_processes, process_id, auto   `jax.distributed.initialize` arguments
                                     (`lav2_jax.train.multihost`; auto: from the environment)
  fault.kill_after_step, sigterm_after_step, kill_during_save, kill_in_data_state, kill_delay_s
                                     failure injection for the resume and fault tests (-1 = off; `train.trainer`)
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from lav2_jax.core.optim_group import group

__all__ = ["base_config", "group", "pod_config"]


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
