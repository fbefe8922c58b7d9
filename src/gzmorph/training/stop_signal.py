"""A polite stop: SIGTERM (what a batch scheduler sends before it kills a job, and what `kill` sends) asks the run
to finish its epoch, write a checkpoint and exit; `--resume` then continues exactly where it stopped.

Only between epochs: a checkpoint inside an epoch would have to record where the shuffled order and every random
generator stood, and a resumed run must be bitwise the uninterrupted one. On a GPU an epoch takes seconds; on two
CPU cores it can take a minute or more, longer than some schedulers wait (SLURM's KillWait is 30 s by default), so
there the last checkpoint is the previous one, at most ``--checkpoint-every`` seconds old.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

import torch

from . import distributed

log = logging.getLogger("gzmorph")


class StopRequest:
    def __init__(self) -> None:
        self.signal: int | None = None

    def agreed(self, cluster: distributed.Cluster, device: torch.device) -> bool:
        """Whether any process was asked to stop: all of them stop after the same epoch, or one would wait for
        the others in an all-reduce forever. (``device``: where the run's tensors are; NCCL reduces GPU tensors.)"""
        if not cluster.enabled:
            return self.signal is not None
        mine = torch.tensor([0.0 if self.signal is None else 1.0], device=device)
        return bool(distributed.all_sum(cluster, mine).item())


@contextmanager
def stop_on_sigterm() -> Iterator[StopRequest]:
    """SIGTERM sets the request (the first one; a second kills as usual) instead of killing the process."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # only the main thread may handle signals
        yield request
        return

    def handler(signum, frame):
        request.signal = signum
        log.warning("SIGTERM: finishing this epoch, then writing a checkpoint and stopping (send it again to kill "
                    "now)")
        signal.signal(signal.SIGTERM, previous)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)
