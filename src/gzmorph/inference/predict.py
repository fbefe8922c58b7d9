"""Images -> predictions -> a Kaggle submission CSV, streamed so that millions of images need constant memory.

Images are decoded by the one parallel decoder (``data/decoder.py``) while the model runs on the previous chunk;
rows are written as they come, to a temporary file that replaces the target only when the whole job has finished.
Sharding and merging for many machines is ``shards.py``; under ``torchrun`` each process takes its rank's shard and
rank 0 merges them.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .. import runs
from ..data.decoder import decode_chunks
from ..data.images import Preprocess, image_stem, list_images
from ..data.layout import ID_COLUMN, SUBMISSION_HEADER
from ..errors import BadArgument, BadData, BadImage
from ..fsio import atomic_write, atomic_write_json, check_output_file
from ..training import distributed
from ..version import __version__
from .shards import inputs_digest, merge_shards, parse_shard, shard_part_path, shard_slice
from .tta import check_tta, predict_answers

log = logging.getLogger("gzmorph")


def collect_inputs(source: str | Path) -> list[Path]:
    """A folder of images, a single image, or a text file listing image paths (one per line). Two files that
    would give the same GalaxyID (``1.jpg`` and ``1.png``) are an error: the output would hold that id twice."""
    source = Path(source)
    if source.is_dir():
        paths = list_images(source)
    elif not source.exists():
        raise BadData(f"{source}: no such folder or file")
    elif source.suffix.lower() in (".txt", ".lst", ".list"):
        base = source.parent
        paths = [Path(line.strip()) for line in source.read_text().splitlines() if line.strip()]
        paths = [p if p.is_absolute() else base / p for p in paths]
        if not paths:
            raise BadData(f"{source}: the file list is empty")
    else:
        return [source]
    seen: dict[str, Path] = {}
    for p in paths:
        gid = galaxy_id(p)
        if gid in seen:
            raise BadData(f"{source}: two files claim GalaxyID {gid}: {seen[gid]} and {p}; keep one of them")
        seen[gid] = p
    return paths


def spread_path(out: Path) -> Path:
    """Where ``predict --spread`` writes each answer's spread over the views: ``sub.csv`` -> ``sub.spread.csv``."""
    return out.with_name(f"{out.stem}.spread{out.suffix or '.csv'}")


def galaxy_id(path: Path) -> str:
    """The output's GalaxyID: the file name without its image suffix (both parts of ``.fits.gz``)."""
    return image_stem(path)


class ImageStream:
    """The decodable images of ``paths`` in batches of (paths, uint8 pixels), in order, through the one decoder.

    An image that cannot be decoded stops the job with its name, or with ``skip_bad`` is logged and listed in
    ``skipped`` (and the caller records it in its ``.json``, named by ``listed_in``)."""

    def __init__(self, paths: Sequence[Path], prep: Preprocess, *, batch_size: int, workers: int, skip_bad: bool,
                 listed_in: str, progress: bool = True, desc: str = "predicting", overlap: bool = False):
        self.paths, self.prep, self.batch_size, self.workers = list(paths), prep, batch_size, workers
        self.skip_bad, self.listed_in, self.progress, self.desc = skip_bad, listed_in, progress, desc
        # Decode beside the model only where the model runs elsewhere (a GPU); on the CPU they take turns.
        self.ahead = 2 if overlap else 0
        self.skipped: list[tuple[str, str]] = []
        self.n_good = 0

    def __iter__(self) -> Iterator[tuple[list[Path], np.ndarray]]:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(self.paths), unit="img", desc=self.desc, disable=not self.progress or None,
                   leave=False)
        try:
            for c in decode_chunks(self.paths, self.prep, chunk=self.batch_size, workers=self.workers,
                                   ahead=self.ahead):
                for i, why in c.bad:
                    if not self.skip_bad:
                        raise BadImage(f"{self.paths[i]}: {why}; fix or remove it, or pass --skip-bad to leave such "
                                       f"images out (they are listed in {self.listed_in})")
                    log.warning("skipping %s: %s", self.paths[i], why)
                    self.skipped.append((str(self.paths[i]), why))
                if c.good:
                    self.n_good += len(c.good)
                    yield [self.paths[i] for i in c.good], c.pixels
                bar.update(c.size)
        finally:
            bar.close()

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


def predict(run: str | Path, images: str | Path, out: str | Path = "submission.csv", *, which: str = "best",
            batch_size: int = 256, workers: int | None = None, device: str = "auto", skip_bad: bool = False,
            tta: int = 1, shard: str | tuple[int, int] | None = None, precision: str = "auto",
            spread: bool = False, progress: bool = True) -> PredictionSummary:
    """Predict every image in ``images`` (folder, image or list file) with ``run``; write the Kaggle CSV ``out``.

    Unreadable images stop the job with the file named, or with ``skip_bad`` are left out, counted and listed in
    ``<out>.json`` beside the CSV (with the model file's SHA-256 and the gzmorph version). ``shard="I/N"`` predicts
    only the I-th of N slices of the image list (join the N CSVs with :func:`merge_shards`). Run by torchrun with
    several processes and no ``shard``, each process predicts its rank's shard and rank 0 writes ``out``. With
    ``spread`` (and ``tta`` > 1), each answer's spread over the views goes to ``<out stem>.spread.csv`` beside it,
    the same columns, leaving the submission as Kaggle reads it.
    """
    out = check_output_file(out, "submission.csv")
    check_tta(tta)
    if spread and tta < 2:
        raise BadArgument("--spread is the spread over the TTA views: give --tta 8 (or 2, 4, 16, 32)")
    spread_out = spread_path(out) if spread else None
    shard = parse_shard(shard)
    cluster = distributed.from_env()
    if shard is None and cluster.enabled:
        return _predict_with_torchrun(cluster, run, images, out, which=which, batch_size=batch_size,
                                      workers=workers, device=device, skip_bad=skip_bad, tta=tta, precision=precision,
                                      spread=spread, progress=progress)
    dev = distributed.pick_device(cluster, device)
    run = runs.run_folder(run)
    loaded = runs.load_model(run, which, dev, precision)
    all_paths = collect_inputs(images)
    paths = all_paths[shard_slice(len(all_paths), *shard)] if shard else all_paths
    if shard:
        log.info("shard %d/%d: %d of %d images", shard[0], shard[1], len(paths), len(all_paths))
    workers = workers or min(distributed.cpu_share(cluster, None), 16)  # the cores, split between a node's processes
    # The Kaggle submission header, or for a fine-tuned run GalaxyID + its task's outputs.
    header = (ID_COLUMN, *runs.output_names(loaded.config)) if loaded.config.task else SUBMISSION_HEADER
    stream = ImageStream(paths, loaded.prep, batch_size=batch_size, workers=workers, skip_bad=skip_bad,
                         listed_in=f"{out}.json", progress=progress, overlap=dev.type != "cpu")
    started = time.perf_counter()

    def rows(ids: list[str], values: np.ndarray) -> str:
        return "\n".join(i + "," + ",".join(f"{v:.6f}" for v in row) for i, row in zip(ids, values)) + "\n"

    def write(tmp: Path) -> None:
        extra = open(f"{tmp}.spread", "w", newline="") if spread else None
        try:
            with open(tmp, "w", newline="") as f:
                for target in filter(None, (f, extra)):
                    target.write(",".join(header) + "\n")
                for good, pixels in stream:
                    ids = [galaxy_id(p) for p in good]
                    answers = predict_answers(loaded, pixels, batch_size, tta, spread=spread)
                    f.write(rows(ids, answers[0] if spread else answers))
                    if extra:
                        extra.write(rows(ids, answers[1]))
        finally:
            if extra:
                extra.close()
        if stream.n_good == 0 and paths:  # raised inside the write, so an earlier submission at `out` is kept
            raise BadData(f"none of the {len(paths)} images could be read; nothing was predicted")
        if spread:  # in place once the submission is complete; replaced with it by atomic_write just after
            os.replace(f"{tmp}.spread", spread_out)

    if not paths:  # more shards than images: this shard is legitimately empty
        log.warning("shard %d/%d holds none of the %d images; writing a CSV with the header only", *shard,
                    len(all_paths))
    try:
        atomic_write(out, write)
    except BadImage as e:  # an unreadable image without --skip-bad: the job stops, the old CSV is kept
        raise BadData(str(e)) from None
    finally:
        Path(f"{out.with_name(f'.{out.name}.tmp-{os.getpid()}')}.spread").unlink(missing_ok=True)
    skipped = stream.skipped
    summary = PredictionSummary(out, stream.n_good, skipped, time.perf_counter() - started, loaded.sha256)
    atomic_write_json(Path(f"{out}.json"), {
        "csv": str(out), "run": str(run), "weights": str(loaded.weights), "weights_sha256": loaded.sha256,
        "gzmorph_version": __version__, "torch_version": torch.__version__, "n_predicted": stream.n_good,
        "tta": tta, "spread_csv": str(spread_out) if spread else None, "precision": loaded.policy.name, "runtime": loaded.policy.describe(),
        "n_skipped": len(skipped), "skipped": [{"path": p, "why": w} for p, w in skipped],
        "seconds": summary.seconds, "shard": list(shard) if shard else None, "n_inputs": len(paths),
        "n_inputs_all_shards": len(all_paths), "inputs_sha256": inputs_digest(all_paths)})
    return summary


def _predict_with_torchrun(cluster: distributed.Cluster, run, images, out: Path, **kw) -> PredictionSummary:
    """One process of ``torchrun --nproc-per-node N -m gzmorph predict``: predict this rank's shard into a part
    file beside ``out``; rank 0 waits for every part, merges them into ``out`` and removes the parts."""
    part = shard_part_path(out, cluster.rank, cluster.world)
    # gloo is enough for a barrier whatever the device; no tensors are exchanged.
    with distributed.process_group(cluster, torch.device("cpu")):
        try:
            mine = predict(run, images, part, shard=(cluster.rank, cluster.world), **kw)
        finally:
            distributed.barrier(cluster)  # a failed rank still reaches the barrier, so rank 0 never waits forever
        parts = [shard_part_path(out, r, cluster.world) for r in range(cluster.world)]
        if not cluster.is_main:
            return mine
        summary = merge_shards(parts, out)
        for p in parts:
            Path(f"{p}.json").unlink()
            p.unlink()
        return summary


