"""Admission and batching in front of a model that runs in one thread at a time: what lets `gzmorph serve` answer a
crowd (every upload gets its answer, or 503 with Retry-After at once) and answer it faster (queued uploads share
forward passes)."""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager

import numpy as np

from ..errors import BadArgument

# Uploads admitted at once. Each holds its body (up to serve's MAX_UPLOAD_BYTES) until answered, so this bounds
# memory, and the wait of the last one admitted is this many images' worth of model time (about a second for gznet
# on 2 cores).
QUEUE_LIMIT = 32
BATCH_LIMIT = 16  # waiting uploads run through the model in one forward pass, at most this many


class Busy(Exception):
    """Every admission slot is taken: the answer is 503, to be tried again after ``retry_after`` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(retry_after)
        self.retry_after = retry_after


class _Job:
    __slots__ = ("pixels", "values", "error", "done")

    def __init__(self, pixels: np.ndarray):
        self.pixels, self.values, self.error, self.done = pixels, None, None, False


class InferenceQueue:
    """Admission and batching in front of a model that must run in one thread at a time.

    :meth:`admit` lets at most ``limit`` requests in at once and refuses the next at once (:class:`Busy`), so a
    crowd is told to come back rather than piling up threads and bodies. :meth:`run` queues one image; whichever
    waiting thread gets the model next runs every queued image (oldest first, up to ``batch_limit``) in one call of
    ``forward`` and hands each its row: no extra thread to start or stop, and a crowd costs fewer, larger passes.
    """

    def __init__(self, forward, model_lock: threading.Lock, limit: int = QUEUE_LIMIT, batch_limit: int = BATCH_LIMIT):
        if limit < 1 or batch_limit < 1:
            raise BadArgument(f"the queue limit and the batch limit must be at least 1, got {limit} and {batch_limit}")
        self.forward, self.model_lock, self.limit, self.batch_limit = forward, model_lock, limit, batch_limit
        self.admitted = 0
        self.seconds_per_image = 1.0  # a guess until the first batch is timed; only used for Retry-After
        self._lock = threading.Lock()
        self._waiting: list[_Job] = []

    @contextmanager
    def admit(self):
        with self._lock:
            if self.admitted >= self.limit:
                raise Busy(self.retry_after())
            self.admitted += 1
        try:
            yield
        finally:
            with self._lock:
                self.admitted -= 1

    def waiting(self) -> int:
        """Images queued for the model and not yet taken into a batch."""
        with self._lock:
            return len(self._waiting)

    def retry_after(self) -> int:
        """Whole seconds until the queue has most likely drained: what it holds at the measured speed."""
        return min(60, max(1, math.ceil(self.admitted * self.seconds_per_image)))

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """The model's row for one (S, S, 3) uint8 image, computed in a batch with whatever else is waiting."""
        job = _Job(pixels)
        with self._lock:
            self._waiting.append(job)
        while not job.done:
            with self.model_lock:
                if job.done:  # another thread ran it while this one waited for the model
                    break
                with self._lock:
                    batch = self._waiting[: self.batch_limit]
                    del self._waiting[: self.batch_limit]
                self._run_batch(batch)
        if job.error is not None:
            raise job.error
        return job.values

    def _run_batch(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            values = self.forward(np.stack([job.pixels for job in batch]))
            for job, row in zip(batch, values):
                job.values = row
        except Exception as e:  # noqa: BLE001 - every request in the batch answers 500; the server lives on
            for job in batch:
                job.error = e
        finally:
            for job in batch:
                job.done = True
        self.seconds_per_image = 0.7 * self.seconds_per_image + 0.3 * (time.perf_counter() - started) / len(batch)
