"""Paper joint training (§4.2, docs/design.md §6) on LLaMA-7B: caption data → connector + early visual gates,
instruction data → adapter prompts and gates, norms, biases and scales; both updates in every step.

  lav2 train --config configs/joint_7b.py --workdir DIR --config.model.base_checkpoint=/ckpt/llama-7b \
      --config.data.tokenizer=/ckpt/llama-7b/tokenizer --config.data.caption.path=/data/coco_caption \
      --config.data.instruction.path=/data/alpaca

The paper does not publish every hyper-parameter of its joint run: the per-group values below follow the released
two stages (docs/design.md §3.3.4: caption like pretrain, instruction like finetune). Warm-up is in steps here (the release
counts epochs): adjust it to your data.
"""

from lav2_jax.train.defaults import group, pod_config


def get_config():
    c = pod_config("llama1-7b", "paper", "vit-l-14", "paper-joint", "joint", 20000)
    c.batch.update(caption=32, instruction=32)
    c.optim.caption = group(1e-4, 0.05, warmup_steps=1000)
    c.optim.instruction = group(1e-3, 0.02, warmup_steps=1000)
    c.data.caption.max_len, c.data.instruction.max_len = 96, 512
    c.log.every_steps = 20
    c.data.packing = True  # several samples per row, attention and loss kept per sample (lav2_jax.data.packing)
    # Save the projection matmuls' outputs (recompute only elementwise work, attention scores and the loss head) and
    # run the batch as 4 micro-batches: AOT-compiled for v5e-8 at batch 64 + 64 this needs 5.57 GiB per chip (34.8 %)
    # at 1.034x the analytic FLOPs, against 6.27 GiB (39.2 %) and 1.490x with full remat in one batch; at this
    # config's 32 + 32 rows, 4.10 GiB (25.6 %) at 1.034x (benchmarks/RESULTS.md, "TPU sizing").
    c.model.remat_policy = "dots_no_batch"
    c.optim.accum_steps = 4
    return c
