"""Training: losses, the jitted train step (`train_step`), the loop with checkpoints and
preemption (`trainer`), Orbax (`checkpointing`), the device mesh (`parallel`), metric writers."""
