"""The one parallel decoder: a list of image files -> chunks of uint8 arrays, in order, decoded ahead in worker
processes. The image cache (``cache.py``) and streaming prediction (``inference/predict.py``) both read files through it.

At most ``ahead * workers`` chunks are decoded ahead of the consumer: enough to keep every worker busy while the
consumer works (a model, or writing the cache), and a fixed amount of memory however many millions of files there
are (``Pool.imap`` would queue decoded chunks without bound whenever decoding outpaces the consumer).
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import BadImage
from .images import Preprocess, decode


@dataclass
class Chunk:
    """Files ``start .. start + size - 1`` of the list: the pixels of those that decoded, and why the others did not."""

    start: int
    size: int
    pixels: np.ndarray  # (len(good), S, S, 3) uint8
    good: list[int]  # positions in the whole list of the files in ``pixels``, in order
    bad: list[tuple[int, str]]  # (position in the whole list, why it could not be decoded)


def _decode_chunk(task: tuple[int, list[str], Preprocess]) -> Chunk:
    start, paths, prep = task
    out = np.empty((len(paths), prep.size, prep.size, 3), np.uint8)
    good, bad = [], []
    for i, p in enumerate(paths):
        try:
            out[len(good)] = decode(p, prep)
            good.append(start + i)
        except BadImage as e:
            bad.append((start + i, str(e)))
    return Chunk(start, len(paths), out[: len(good)], good, bad)


def decode_chunks(paths: Sequence[str | Path], prep: Preprocess, *, chunk: int, workers: int,
                  ahead: int = 2, offset: int = 0) -> Iterator[Chunk]:
    """The chunks of ``chunk`` files of ``paths``, in order, decoded in ``workers`` processes (in this process when
    ``workers`` <= 1), at most ``ahead * workers`` chunks ahead of the consumer.

    ``offset``: ``paths`` are the list's files from this position on (a resumed job); chunks give positions in the
    whole list.

    ``ahead=0`` takes turns instead: ``workers`` chunks are decoded while the consumer waits, then handed over
    while the workers wait. That is what a consumer on the same CPU cores wants (a model's forward passes): decoding
    beside them would only steal cores from its threads, which then wait for each other at every layer."""
    tasks = ((offset + k, [str(p) for p in paths[k:k + chunk]], prep) for k in range(0, len(paths), chunk))
    if workers <= 1:
        yield from map(_decode_chunk, tasks)
        return
    # fork is fastest on Linux (workers inherit the imported modules); spawn elsewhere.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = get_context(method).Pool(workers)
    pending: deque = deque()
    try:
        for task in tasks:
            pending.append(pool.apply_async(_decode_chunk, (task,)))
            if len(pending) >= max(1, ahead) * workers:
                if ahead:
                    yield pending.popleft().get()
                else:  # the whole turn is ready before the consumer gets any of it
                    done = [r.get() for r in pending]
                    pending.clear()
                    yield from done
        while pending:
            yield pending.popleft().get()
    finally:
        pool.terminate()
