"""The demo's training run (`lav2 demo`): paper joint training (§4.2) of the tiny model on the demo's data.

`lav2 demo --workdir demo_out` writes the data, the tokenizer and the frozen base (language prior + vision tower)
under `demo_out/`, then trains with exactly this config through `lav2 train`'s code path. After a demo, the same
run by hand:

  lav2 train --config configs/demo.py --workdir demo_out/train2

Caption batches update only the caption group (connector, early visual gates), instruction batches (visual
questions with their images mixed with text-only instructions) only the instruction group (adapter prompts and
their gates, biases, scales, norms). The paths below assume the workdir `demo_out`; `lav2 demo` overrides them
for another `--workdir`.
"""

from lav2_jax.train.defaults import base_config, group


def get_config():
    c = base_config()
    c.model.update(preset="tiny", adapter="paper", vision="tiny", tiny_adapter=True,
                   base_checkpoint="demo_out/base")
    c.param_recipe, c.recipe = "paper-joint", "joint"
    c.total_steps = 300
    # Measured on the demo's task (held-out caption colour after 300 steps): caption lr 3e-2 stayed at chance;
    # 1e-2 with caption batches of 16 gave 0.74, of 32 1.00.
    c.batch.update(caption=32, instruction=16)
    c.optim.caption = group(1e-2, 0.0, warmup_steps=10, scale_lr_by_batch=False)
    c.optim.instruction = group(1e-2, 0.0, warmup_steps=10, scale_lr_by_batch=False)
    c.loss.vocab_chunk = 0
    c.data.update(source="pipeline", tokenizer="demo_out/tokenizer/tokenizer.model", channel_order="rgb",
                  worker_count=0)
    c.data.caption.update(path="demo_out/data/caption", max_len=48)
    c.data.instruction.update(path="demo_out/data/instruction", max_len=48)
    c.checkpoint.update(every_steps=100000, keep=1)
    c.log.update(every_steps=5, peak_flops=0.0)
    return c
