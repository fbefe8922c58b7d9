"""``--minutes``: a run's length picked from its first epoch's time, so that "a 15-minute run" is 15 minutes on the
CPU that runs it. The same default recipe is 56 gznet epochs in ~13 minutes on a Zen 5's 2 cores and ~35 on a Zen
4's (38 s an epoch): a fixed epoch count cannot be a time budget on machines whose kind changes under it.

The count is decided once, after the first epoch, and saved in the run's config: ``--resume`` keeps it, and
``--epochs N`` with the count it logged repeats the run bit for bit. Only the first epoch's learning rates must not
depend on the count, which holds when the warm-up lasts at least that epoch (every built-in recipe warms up for one
or more) or the rate is constant."""

from __future__ import annotations

import math

from ..config import TrainConfig
from ..errors import BadArgument


def check_request(cfg: TrainConfig) -> None:
    """Refuse a new run that asks for both a budget and a count (the recipe not yet resolved)."""
    if cfg.minutes is not None and cfg.epochs is not None:
        raise BadArgument("give --epochs or --minutes, not both: --minutes picks the epoch count itself")


def check_budget(cfg: TrainConfig) -> None:
    """Refuse a budget the loop cannot honour (the recipe resolved)."""
    if cfg.minutes is None:
        return
    if not (cfg.minutes > 0 and math.isfinite(cfg.minutes)):
        raise BadArgument(f"--minutes must be a positive number of minutes, got {cfg.minutes}")
    if cfg.schedule != "constant" and cfg.warmup_epochs < 1:
        raise BadArgument(f"--minutes picks the epoch count after the first epoch, so that epoch's learning rate must "
                          f"not depend on it: give --warmup-epochs 1 or more (it is {cfg.warmup_epochs:g}), or "
                          f"--schedule constant")


def fewest_epochs(cfg: TrainConfig) -> int:
    """The shortest run a budget may pick: past the warm-up (the first epoch ran warm-up rates that a decay is meant
    to follow, and a count inside the warm-up would have shortened it) and past fine-tuning's head-only epochs (a run
    of those alone would never train the backbone). Also the count a --minutes run starts with, so its first epoch's
    rates are those of any count it may pick."""
    return max(math.ceil(cfg.warmup_epochs), cfg.head_epochs or 0) + 1


def epochs_for(minutes: float, first_epoch_seconds: float, fewest: int) -> int:
    """Epochs that fit ``minutes`` at the first epoch's pace (its validation included: every epoch validates), and
    never fewer than ``fewest``."""
    fit = math.floor(minutes * 60 / max(first_epoch_seconds, 1e-9))
    return max(fit, fewest)
