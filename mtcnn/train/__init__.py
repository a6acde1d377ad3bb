"""Training one net on a prepared store: the loop, losses, optimizers, batches and logging."""
