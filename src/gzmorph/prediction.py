"""Images -> predictions -> a Kaggle submission CSV, streamed so that millions of images need constant memory.

Worker processes decode chunks of files while the model runs on the previous chunk; rows are written as they come,
to a temporary file that replaces the target only when the whole job has finished.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from . import __version__, runs, tree
from .catalogue import ID_COLUMN
from .errors import GzmorphError
from .fsio import atomic_write, atomic_write_json
from .images import BadImage, Preprocess, decode, list_images
from .inference import pick_device, predict_array

log = logging.getLogger("gzmorph")

HEADER = [ID_COLUMN, *tree.COLUMNS]


def collect_inputs(source: str | Path) -> list[Path]:
    """A folder of images, a single image, or a text file listing image paths (one per line)."""
    source = Path(source)
    if source.is_dir():
        return list_images(source)
    if not source.exists():
        raise GzmorphError(f"{source}: no such folder or file")
    if source.suffix.lower() in (".txt", ".lst", ".list"):
        base = source.parent
        paths = [Path(line.strip()) for line in source.read_text().splitlines() if line.strip()]
        paths = [p if p.is_absolute() else base / p for p in paths]
        if not paths:
            raise GzmorphError(f"{source}: the file list is empty")
        return paths
    return [source]


def _decode_chunk(args: tuple[list[str], Preprocess]) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    paths, prep = args
    out = np.empty((len(paths), prep.size, prep.size, 3), np.uint8)
    good, bad = [], []
    for i, p in enumerate(paths):
        try:
            out[len(good)] = decode(p, prep)
            good.append(i)
        except BadImage as e:
            bad.append((i, str(e)))
    return out[: len(good)], good, bad


def _by_path(chunk: list[Path], decoded: tuple[np.ndarray, list[int], list[tuple[int, str]]]):
    pixels, good, bad = decoded
    return [chunk[i] for i in good], pixels, [(chunk[i], why) for i, why in bad]


def decoded_chunks(paths: Sequence[Path], prep: Preprocess, chunk: int, workers: int
                   ) -> Iterator[tuple[list[Path], np.ndarray, list[tuple[Path, str]]]]:
    """(good paths, pixels, [(bad path, why)]) per chunk of ``paths``, decoded ahead in ``workers`` processes.

    At most ``2 * workers`` chunks are decoded ahead of the consumer: enough to keep every worker busy while the
    model runs, and a fixed amount of memory however many millions of images there are (``Pool.imap`` would queue
    decoded chunks without bound whenever decoding outpaces the model).
    """
    starts = range(0, len(paths), chunk)
    if workers <= 1:
        for k in starts:
            c = list(paths[k:k + chunk])
            yield _by_path(c, _decode_chunk(([str(p) for p in c], prep)))
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = get_context(method).Pool(workers)
    pending: deque = deque()
    try:
        for k in starts:
            c = list(paths[k:k + chunk])
            pending.append((c, pool.apply_async(_decode_chunk, (([str(p) for p in c], prep),))))
            if len(pending) >= 2 * workers:
                c, result = pending.popleft()
                yield _by_path(c, result.get())
        while pending:
            c, result = pending.popleft()
            yield _by_path(c, result.get())
    finally:
        pool.terminate()


@dataclass
class PredictionSummary:
    out: Path
    n_predicted: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    model_sha256: str = ""

    @property
    def images_per_second(self) -> float:
        return self.n_predicted / self.seconds if self.seconds else 0.0


def galaxy_id(path: Path) -> str:
    return path.stem


def predict(run: str | Path, images: str | Path, out: str | Path = "submission.csv", *, which: str = "best",
            batch_size: int = 256, workers: int | None = None, device: str = "auto", skip_bad: bool = False,
            tta: int = 1, progress: bool = True) -> PredictionSummary:
    """Predict every image in ``images`` (folder, image or list file) with ``run``; write the Kaggle CSV ``out``.

    Unreadable images stop the job with the file named, or with ``skip_bad`` are left out, counted and listed in
    ``<out>.json`` beside the CSV (with the model file's SHA-256 and the gzmorph version).
    """
    out = Path(out)
    if not out.parent.exists():
        raise GzmorphError(f"{out.parent}: output folder does not exist")
    if not out.parent.is_dir():
        raise GzmorphError(f"{out.parent}: is not a folder; choose an output path inside a folder")
    dev = pick_device(device)
    loaded = runs.load_model(run, which, dev)
    paths = collect_inputs(images)
    workers = workers or min(len(os.sched_getaffinity(0)), 16)
    skipped: list[tuple[str, str]] = []
    n = 0
    started = time.perf_counter()
    from tqdm.auto import tqdm

    def write(tmp: Path) -> None:
        nonlocal n
        bar = tqdm(total=len(paths), unit="img", desc="predicting", disable=not progress or None, leave=False)
        with open(tmp, "w", newline="") as f:
            f.write(",".join(HEADER) + "\n")
            for good, pixels, bad in decoded_chunks(paths, loaded.prep, batch_size, workers):
                for p, why in bad:
                    if not skip_bad:
                        raise GzmorphError(f"{p}: {why}; fix or remove it, or pass --skip-bad to leave such "
                                           f"images out (they are listed in {out}.json)")
                    log.warning("skipping %s: %s", p, why)
                    skipped.append((str(p), why))
                if len(good):
                    pred = np.clip(predict_array(loaded.model, pixels, batch_size, dev, tta=tta), 0.0, 1.0)
                    rows = (galaxy_id(p) + "," + ",".join(f"{v:.6f}" for v in row) for p, row in zip(good, pred))
                    f.write("\n".join(rows) + "\n")
                    n += len(good)
                bar.update(len(good) + len(bad))
        bar.close()
        if n == 0:  # raised inside the write, so an earlier submission at `out` is left as it was
            raise GzmorphError(f"none of the {len(paths)} images could be read; nothing was predicted")

    atomic_write(out, write)
    summary = PredictionSummary(out, n, skipped, time.perf_counter() - started, loaded.sha256)
    atomic_write_json(Path(f"{out}.json"), {
        "csv": str(out), "run": str(run), "weights": str(loaded.weights), "weights_sha256": loaded.sha256,
        "gzmorph_version": __version__, "torch_version": torch.__version__, "n_predicted": n,
        "tta": tta, "n_skipped": len(skipped), "skipped": [{"path": p, "why": w} for p, w in skipped],
        "seconds": summary.seconds})
    return summary
