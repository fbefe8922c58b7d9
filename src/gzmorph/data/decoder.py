"""The one parallel decoder: a list of image files -> chunks of uint8 arrays, in order, decoded ahead in worker
processes. The image cache (``cache.py``) and streaming prediction (``inference/predict.py``) both read files through it.

At most ``ahead * workers`` chunks are decoded ahead of the consumer: enough to keep every worker busy while the
consumer works (a model, or writing the cache), and a fixed amount of memory however many millions of files there
are (``Pool.imap`` would queue decoded chunks without bound whenever decoding outpaces the consumer).

The pixels travel through shared memory, not through the pool's pipe: each chunk in flight owns one slot of a
shared ring that its worker decodes into, and the consumer copies it out (one memcpy) and frees the slot. Pickled
through the pipe, a 256-image chunk (3 MiB) cost the consumer's process far more: 94 chunks/s at most, against
3,355 through shared memory (a 2-core Zen 5, 2 workers, nothing decoded) -- a ceiling of 24k img/s that 16 decoding
cores feeding a GPU would hit. Where shared memory cannot be had (no fork, or a /dev/shm too small for the ring, as in
a default Docker container), chunks are pickled as before.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections import deque
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import BadImage
from .images import Preprocess, decode

log = logging.getLogger("gzmorph")
SHM_FOLDER = "/dev/shm"  # where Linux keeps POSIX shared memory; its free space bounds the ring


@dataclass
class Chunk:
    """Files ``start .. start + size - 1`` of the list: the pixels of those that decoded, and why the others did not."""

    start: int
    size: int
    pixels: np.ndarray  # (len(good), S, S, 3) uint8
    good: list[int]  # positions in the whole list of the files in ``pixels``, in order
    bad: list[tuple[int, str]]  # (position in the whole list, why it could not be decoded)


def _decode_into(out: np.ndarray, start: int, paths: list[str], prep: Preprocess) -> tuple[list[int], list]:
    """Decode ``paths`` into the first rows of ``out``, the good ones packed in order; returns (good, bad)."""
    good, bad = [], []
    for i, p in enumerate(paths):
        try:
            out[len(good)] = decode(p, prep)
            good.append(start + i)
        except BadImage as e:
            bad.append((start + i, str(e)))
    return good, bad


def _decode_chunk(task: tuple[int, list[str], Preprocess]) -> Chunk:
    start, paths, prep = task
    out = np.empty((len(paths), prep.size, prep.size, 3), np.uint8)
    good, bad = _decode_into(out, start, paths, prep)
    return Chunk(start, len(paths), out[: len(good)], good, bad)


# The ring of the pool being forked: set just before the fork (the workers inherit the mapping itself, so they
# never attach by name -- which on Python 3.11 would enrol them in the resource tracker that unlinks on their exit).
_RING: np.ndarray | None = None
_FORKING = threading.Lock()  # two threads starting pools at once must not hand each other's ring to their workers


def _decode_to_slot(task: tuple[int, list[str], Preprocess, int]) -> tuple[int, int, int, list[int], list]:
    start, paths, prep, slot = task
    if _RING is None:  # a worker forked after the ring was handed out (a pool replacing a dead worker)
        raise RuntimeError("a decoding worker without the shared ring")
    good, bad = _decode_into(_RING[slot], start, paths, prep)
    return start, len(paths), slot, good, bad


class _SharedRing:
    """``slots`` chunks of decoded pixels in one block of shared memory, and which of them are free."""

    def __init__(self, slots: int, shape: tuple[int, ...]):
        from multiprocessing import shared_memory

        self.memory = shared_memory.SharedMemory(create=True, size=slots * int(np.prod(shape)))
        try:
            # tmpfs hands out pages only when first written: reserve them all now, so that a /dev/shm filled by
            # other jobs since the check below is an error here (ENOSPC) and not a SIGBUS in a worker later -- a
            # worker killed so leaves its task unfinished, and the pool waits for it forever.
            if hasattr(os, "posix_fallocate"):  # Linux (macOS has none, nor /dev/shm as a tmpfs)
                os.posix_fallocate(self.memory._fd, 0, self.memory.size)
        except BaseException:
            self.memory.close()
            self.memory.unlink()
            raise
        self.array = np.ndarray((slots, *shape), np.uint8, buffer=self.memory.buf)
        self.free = list(range(slots))

    @staticmethod
    def open(slots: int, shape: tuple[int, ...]) -> "_SharedRing | None":
        """A ring, or None where it cannot safely be had: writing past a full /dev/shm kills the writer with SIGBUS
        instead of raising, so the ring must fit in half of what is free there."""
        need = slots * int(np.prod(shape))
        try:
            st = os.statvfs(SHM_FOLDER)
            if st.f_bavail * st.f_frsize < 2 * need:
                log.debug("decoding through pipes: %s has %d bytes free, the ring needs %d", SHM_FOLDER,
                          st.f_bavail * st.f_frsize, need)
                return None
            return _SharedRing(slots, shape)
        except (OSError, ImportError) as e:
            log.debug("decoding through pipes: no shared memory (%s)", e)
            return None

    def take(self, slot: int, n: int) -> np.ndarray:
        """A copy of the first ``n`` images of ``slot``, which is then free again."""
        out = self.array[slot, :n].copy()
        self.free.append(slot)
        return out

    def close(self) -> None:
        del self.array  # the memory cannot be closed while a numpy view of it exists
        try:
            self.memory.close()
        finally:
            self.memory.unlink()


def shared_memory_works(chunk: int, prep: Preprocess) -> bool:
    """Whether decode_chunks gets its shared-memory ring here for one chunk (a benchmark says which path it timed)."""
    ring = _SharedRing.open(1, (chunk, prep.size, prep.size, 3))
    if ring is None:
        return False
    ring.close()
    return True


def decode_chunks(paths: Sequence[str | Path], prep: Preprocess, *, chunk: int, workers: int,
                  ahead: int = 2, offset: int = 0, shared_memory: bool = True) -> Iterator[Chunk]:
    """The chunks of ``chunk`` files of ``paths``, in order, decoded in ``workers`` processes (in this process when
    ``workers`` <= 1), at most ``ahead * workers`` chunks ahead of the consumer.

    ``offset``: ``paths`` are the list's files from this position on (a resumed job); chunks give positions in the
    whole list.

    ``ahead=0`` takes turns instead: ``workers`` chunks are decoded while the consumer waits, then handed over
    while the workers wait. That is what a consumer on the same CPU cores wants (a model's forward passes): decoding
    beside them would only steal cores from its threads, which then wait for each other at every layer.

    ``shared_memory=False`` sends the pixels back pickled through the pool's pipes, as happens anyway where there is
    no room in /dev/shm: the benchmarks time both."""
    tasks = ((offset + k, [str(p) for p in paths[k:k + chunk]], prep) for k in range(0, len(paths), chunk))
    if workers <= 1:
        yield from map(_decode_chunk, tasks)
        return
    # fork is fastest on Linux (workers inherit the imported modules, and the shared ring); spawn elsewhere.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    slots = max(1, ahead) * workers  # one per chunk in flight, at most
    # no bigger than the job: a handful of images needs no ring of 32 full chunks
    rows = min(chunk, len(paths))
    ring = _SharedRing.open(min(slots, -(-len(paths) // chunk)), (rows, prep.size, prep.size, 3)) \
        if method == "fork" and shared_memory else None
    global _RING
    with _FORKING:
        _RING = None if ring is None else ring.array
        try:
            pool = get_context(method).Pool(workers)
        except BaseException:
            if ring is not None:
                ring.close()
            raise
        finally:
            _RING = None  # the workers have their own reference now; this process keeps only the ring's
    pending: deque = deque()

    def submit(task: tuple) -> None:
        if ring is None:
            pending.append(pool.apply_async(_decode_chunk, (task,)))
        else:
            pending.append(pool.apply_async(_decode_to_slot, ((*task, ring.free.pop()),)))

    def collect(result) -> Chunk:
        if ring is None:
            return result.get()
        start, size, slot, good, bad = result.get()
        return Chunk(start, size, ring.take(slot, len(good)), good, bad)

    try:
        for task in tasks:
            submit(task)
            if len(pending) >= slots:
                if ahead:
                    yield collect(pending.popleft())
                else:  # the whole turn is ready before the consumer gets any of it
                    done = [collect(r) for r in pending]
                    pending.clear()
                    yield from done
        while pending:
            yield collect(pending.popleft())
    finally:
        pool.terminate()
        if ring is not None:
            pool.join()  # no worker may still be writing into the ring when it goes
            ring.close()
