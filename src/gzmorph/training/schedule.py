"""The learning-rate schedule: a pure function of the optimizer step, so a resumed run follows the same schedule with
no scheduler state to save."""

from __future__ import annotations

import math

from ..config import TrainConfig


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate at optimizer step ``step`` (0-based): a pure function of the step, so a resumed run follows
    the same schedule with no scheduler state to save."""
    if cfg.schedule == "constant":
        return cfg.lr
    total = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
