"""mPLUG-Owl stage 2 (instruction tuning; docs/design.md §5.4) with the released script's hyper-parameters
(`scripts/train_it.sh`): LoRA r 8, alpha 32 (scale 4), dropout 0.05 on the LLM's q/v projections (`wq`, `wv`),
vision model and abstractor frozen; lr 2e-5, 50 warm-up steps, 3 epochs = 4,236 iterations at global batch 256
(micro-batch 4: `accum_steps` 4 gives 4 rows per chip on 16 chips), weight decay 1e-4, AdamW (0.9, 0.999), eps 1e-8, clip 1.0,
max length 2048, bf16, full remat. Text-only (Alpaca, Vicuna, Baize) and LLaVA data are mixed in one stream.

  lav2 convert mplug-owl --hf-dir /ckpt/mplug-owl-llama-7b-pt --out /ckpt/owl-pt
  lav2 train --config configs/owl_stage2_7b.py --workdir DIR --config.model.base_checkpoint=/ckpt/owl-pt \
      --config.data.tokenizer=/ckpt/owl-pt/tokenizer --config.data.train.path=/data/owl_it

The paper's variant (LoRA and the abstractor, 2k steps): `--config.param_recipe=owl-stage2-abstractor
--config.total_steps=2000`; other LoRA targets: `--config.model.lora.targets="('wq','wk','wv','wo')"`.
Schedule: 50 warm-up steps, then the release's linear decay to 0 (the HF Trainer default; its min-lr 1e-6 is never
passed to the Trainer).
"""

from lav2_jax.train.defaults import group, pod_config
from lav2_jax.systems.owl.train_config import add_owl_fields


def get_config():
    c = pod_config("llama1-7b", "none", "vit-l-14", "owl-stage2", "full", 4236)
    add_owl_fields(c, lora_rank=8, lora_alpha=32.0, lora_dropout=0.05, lora_targets=("wq", "wv"))
    c.batch.train = 256
    for g in ("caption", "instruction"):  # caption: the abstractor in owl-stage2-abstractor
        c.optim[g] = group(2e-5, 1e-4, warmup_steps=50, scale_lr_by_batch=False)
        c.optim[g].b2 = 0.999
        c.optim[g].decay = "linear"
    c.optim.clip_norm = 1.0
    c.optim.accum_steps = 4  # on 16 chips: 4 rows of 2048 per chip and micro-batch, the release's micro-batch 4
    c.data.train.max_len = 2048
    return c
