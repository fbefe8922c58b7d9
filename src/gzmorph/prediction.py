"""Images -> predictions -> a Kaggle submission CSV, streamed so that millions of images need constant memory.

Worker processes decode chunks of files while the model runs on the previous chunk; rows are written as they come,
to a temporary file that replaces the target only when the whole job has finished.

Scale-out: ``--shard I/N`` predicts the I-th of N contiguous slices of the (sorted) image list, on any machine; the
N CSVs are joined by :func:`merge_shards`, which checks that they are the complete set for the same images and
weights. Under ``torchrun`` each process takes its rank's shard and rank 0 merges them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import re
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from . import __version__, distributed, runs, tree
from .catalogue import ID_COLUMN
from .errors import GzmorphError
from .fsio import atomic_write, atomic_write_json, check_output_file
from .images import BadImage, Preprocess, decode, image_stem, list_images
from .inference import check_tta, predict_array

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
    """The CSV's GalaxyID: the file name without its image suffix (both parts of ``.fits.gz``)."""
    return image_stem(path)


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"I/N"`` (0 <= I < N) -> (I, N)."""
    if shard is None or isinstance(shard, tuple):
        i, n = shard if shard else (0, 1)
    else:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if not m:
            raise GzmorphError(f"--shard {shard!r}: expected I/N, e.g. --shard 0/4 for the first of 4 shards")
        i, n = int(m.group(1)), int(m.group(2))
    if not 0 <= i < n:
        raise GzmorphError(f"--shard {i}/{n}: I must be 0 .. N-1 (shards are numbered from 0)")
    return None if shard is None else (i, n)


def shard_slice(n_items: int, i: int, n: int) -> slice:
    """The I-th of N contiguous, nearly equal slices: concatenating the shards in order gives the whole list."""
    return slice(i * n_items // n, (i + 1) * n_items // n)


def _inputs_digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{p}\n".encode())
    return h.hexdigest()


def predict(run: str | Path, images: str | Path, out: str | Path = "submission.csv", *, which: str = "best",
            batch_size: int = 256, workers: int | None = None, device: str = "auto", skip_bad: bool = False,
            tta: int = 1, shard: str | tuple[int, int] | None = None, precision: str = "auto",
            progress: bool = True) -> PredictionSummary:
    """Predict every image in ``images`` (folder, image or list file) with ``run``; write the Kaggle CSV ``out``.

    Unreadable images stop the job with the file named, or with ``skip_bad`` are left out, counted and listed in
    ``<out>.json`` beside the CSV (with the model file's SHA-256 and the gzmorph version). ``shard="I/N"`` predicts
    only the I-th of N slices of the image list (join the N CSVs with :func:`merge_shards`). Run by torchrun with
    several processes and no ``shard``, each process predicts its rank's shard and rank 0 writes ``out``.
    """
    out = check_output_file(out, "submission.csv")
    check_tta(tta)
    shard = parse_shard(shard)
    cluster = distributed.from_env()
    if shard is None and cluster.enabled:
        return _predict_with_torchrun(cluster, run, images, out, which=which, batch_size=batch_size,
                                      workers=workers, device=device, skip_bad=skip_bad, tta=tta, precision=precision,
                                      progress=progress)
    dev = distributed.pick_device(cluster, device)
    loaded = runs.load_model(run, which, dev, precision)
    all_paths = collect_inputs(images)
    paths = all_paths[shard_slice(len(all_paths), *shard)] if shard else all_paths
    if shard:
        log.info("shard %d/%d: %d of %d images", shard[0], shard[1], len(paths), len(all_paths))
    workers = workers or min(distributed.cpu_share(cluster, None), 16)  # the cores, split between a node's processes
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
                    pred = np.clip(predict_array(loaded.model, pixels, batch_size, loaded.policy, tta=tta), 0.0, 1.0)
                    rows = (galaxy_id(p) + "," + ",".join(f"{v:.6f}" for v in row) for p, row in zip(good, pred))
                    f.write("\n".join(rows) + "\n")
                    n += len(good)
                bar.update(len(good) + len(bad))
        bar.close()
        if n == 0 and paths:  # raised inside the write, so an earlier submission at `out` is left as it was
            raise GzmorphError(f"none of the {len(paths)} images could be read; nothing was predicted")

    if not paths:  # more shards than images: this shard is legitimately empty
        log.warning("shard %d/%d holds none of the %d images; writing a CSV with the header only", *shard,
                    len(all_paths))
    atomic_write(out, write)
    summary = PredictionSummary(out, n, skipped, time.perf_counter() - started, loaded.sha256)
    atomic_write_json(Path(f"{out}.json"), {
        "csv": str(out), "run": str(run), "weights": str(loaded.weights), "weights_sha256": loaded.sha256,
        "gzmorph_version": __version__, "torch_version": torch.__version__, "n_predicted": n,
        "tta": tta, "precision": loaded.policy.name, "runtime": loaded.policy.describe(), "n_skipped": len(skipped), "skipped": [{"path": p, "why": w} for p, w in skipped],
        "seconds": summary.seconds, "shard": list(shard) if shard else None, "n_inputs": len(paths),
        "n_inputs_all_shards": len(all_paths), "inputs_sha256": _inputs_digest(all_paths)})
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


def shard_part_path(out: Path, i: int, n: int) -> Path:
    return out.with_name(f"{out.stem}.shard-{i}-of-{n}{out.suffix}")


def merge_shards(parts: Sequence[str | Path], out: str | Path) -> PredictionSummary:
    """Join the CSVs of ``predict --shard I/N`` (any order given) into one submission, in shard order.

    Refused unless the parts are exactly shards 0..N-1 of the same image list, predicted with the same weights and
    TTA (each part's ``.json`` records these); nothing is written then. Streams: constant memory for any size.
    """
    out = check_output_file(out, "submission.csv")
    infos = []
    for p in map(Path, parts):
        meta = Path(f"{p}.json")
        if not p.is_file() or not meta.is_file():
            raise GzmorphError(f"{p}: {'no such file' if not p.is_file() else 'no ' + meta.name + ' beside it'}; "
                               f"merge takes the CSVs written by `gzmorph predict --shard I/N`, with their .json")
        try:
            info = json.loads(meta.read_text())
        except ValueError as e:
            raise GzmorphError(f"{meta}: not valid JSON ({e})") from None
        if not info.get("shard"):
            raise GzmorphError(f"{p} was not written with --shard I/N; there is nothing to merge it with")
        if p.resolve() == out.resolve():
            raise GzmorphError(f"{out} is one of the parts; write the merged CSV elsewhere")
        infos.append((p, info))
    n = {info["shard"][1] for _, info in infos}
    if len(n) != 1:
        raise GzmorphError(f"the parts come from splits into different numbers of shards: {sorted(n)}")
    n = n.pop()
    got = sorted(info["shard"][0] for _, info in infos)
    if got != list(range(n)):
        missing = sorted(set(range(n)) - set(got))
        dupes = sorted({i for i in got if got.count(i) > 1})
        raise GzmorphError(f"need each of the {n} shards exactly once: "
                           + (f"missing shard(s) {missing}" if missing else "") + ("; " if missing and dupes else "")
                           + (f"shard(s) {dupes} given twice" if dupes else ""))
    for key, what in (("inputs_sha256", "image lists"), ("weights_sha256", "weights"), ("tta", "--tta settings"),
                      ("precision", "--precision settings")):
        if len({str(info.get(key)) for _, info in infos}) != 1:
            raise GzmorphError(f"the shards were predicted from different {what}; predict all shards of one job "
                               f"with the same command")
    infos.sort(key=lambda pi: pi[1]["shard"][0])
    header = ",".join(HEADER)
    n_rows = 0

    def write(tmp: Path) -> None:
        nonlocal n_rows
        with open(tmp, "w", newline="") as dst:
            dst.write(header + "\n")
            for p, _ in infos:
                with open(p, newline="") as src:
                    if src.readline().rstrip("\r\n") != header:
                        raise GzmorphError(f"{p}: its header is not the Kaggle submission header")
                    for line in src:
                        if line.strip():
                            dst.write(line if line.endswith("\n") else line + "\n")
                            n_rows += 1
        expected = sum(info["n_predicted"] for _, info in infos)
        if n_rows != expected:  # a part edited or cut short after it was written; raised before `out` is replaced
            raise GzmorphError(f"the parts hold {n_rows} rows but their .json files record {expected}; "
                               f"re-predict them")

    atomic_write(out, write)
    skipped = [(s["path"], s["why"]) for _, info in infos for s in info["skipped"]]
    first = infos[0][1]
    atomic_write_json(Path(f"{out}.json"), {
        **{k: first[k] for k in ("run", "weights", "weights_sha256", "gzmorph_version", "torch_version", "tta",
                                   "precision", "runtime") if k in first},
        "csv": str(out), "n_predicted": n_rows, "n_skipped": len(skipped),
        "skipped": [{"path": p, "why": w} for p, w in skipped], "seconds": max(i["seconds"] for _, i in infos),
        "shard": None, "merged_from": [str(p) for p, _ in infos], "n_inputs": first["n_inputs_all_shards"],
        "n_inputs_all_shards": first["n_inputs_all_shards"], "inputs_sha256": first["inputs_sha256"]})
    return PredictionSummary(out, n_rows, skipped, max(i["seconds"] for _, i in infos), first["weights_sha256"])
