"""The training engine: `lav2_jax.train.trainer.train(config, workdir)`; one concept per module —
optimizer, loss, step, state, checkpointing, mesh, multihost, data, synthetic, logging, defaults."""
