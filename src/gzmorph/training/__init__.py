"""Arrays -> a trained run: the training loop and what it is made of (learning-rate schedule, weight average,
augmentation, masked loss, data parallelism under torchrun)."""
