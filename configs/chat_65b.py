"""The released 65B chat model's recipe shape (docs/design.md §3.1, §6): LLaMA-65B with input-side scale + bias on every
linear and trainable norms, trained on conversation / instruction data (no prompts, no vision).

  lav2 train --config configs/chat_65b.py --workdir gs://BUCKET/run --config.model.base_checkpoint=/ckpt/llama-65b \
      --config.data.tokenizer=/ckpt/llama-65b/tokenizer --config.data.instruction.path=/data/sharegpt \
      --config.distributed.auto=True

The chat model's own hyper-parameters are not published: the values below are the finetune stage's
(blr 1e-3, wd 0.02) — adjust them. 65B needs a pod: frozen weights FSDP-sharded over every chip (bf16, ~130 GB),
`remat_policy=full`, tensor parallelism available through `mesh.tensor`.
"""

from lav2_jax.train.defaults import group, pod_config


def get_config():
    c = pod_config("llama1-65b", "chat65b", "", "chat65b", "finetune", 10000, every_steps=500)
    c.batch.instruction = 64
    c.optim.instruction = group(1e-3, 0.02, warmup_steps=500)
    c.data.instruction.max_len = 512
    c.checkpoint.keep = 2
    c.distributed.auto = True
    c.data.packing = True  # several samples per row, attention and loss kept per sample (lav2_jax.data.packing)
    return c
