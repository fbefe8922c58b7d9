"""Images -> a run's pooled features (its representation of each galaxy), for similarity search, clustering and
anomaly lists: `gzmorph embed RUN IMAGES -o features`.

Three files, each one line to open:

    features.npy        (N, D) float16, one row per galaxy          numpy.load("features.npy", mmap_mode="r")
    features.csv        GalaxyID, file, then the run's answers      pandas.read_csv("features.csv")
    features.npy.json   the run, its weights' SHA-256, the preprocessing, precision, counts, skipped files

Streamed like ``predict`` (the one decoder, constant memory): rows go to temporary files as they come, and the
``.npy`` gets its header, with the final row count, when the job has finished. ``--shard I/N`` embeds one slice of
the image list; ``gzmorph merge`` joins the parts (``merge_features``).
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import runs
from ..data.layout import ID_COLUMN
from ..errors import BadData, BadImage
from ..fsio import atomic_write_json, check_output_file, replace_atomically, write_error
from ..training import distributed
from ..version import __version__
from ..data.inputs import collect_inputs
from .predict import ImageStream
from .shards import check_parts, parse_shard, shard_slice
from .calibration import calibration_for
from .intervals import check_interval_options, intervals
from .journal import Journal
from .tta import check_tta, embed_array, finish_answers, predict_answers

log = logging.getLogger("gzmorph")

DTYPE = np.float16  # half the disk of float32; cosine similarities move by ~1e-3 at most


def feature_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """(the .npy, its .csv, its .json) for ``-o out`` (with or without the .npy suffix)."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".npy" else out
    npy = stem.with_name(stem.name + ".npy")
    return npy, stem.with_name(stem.name + ".csv"), Path(f"{npy}.json")


@dataclass
class EmbedSummary:
    out: Path
    n: int
    dim: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.n / self.seconds if self.seconds else 0.0


def _write_npy(raw: Path, target: Path, n: int, dim: int) -> None:
    """``raw`` (n x dim DTYPE values, row after row) as a .npy file at ``target``, copied in blocks."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(DTYPE)),
                                                 "fortran_order": False, "shape": (n, dim)})
        with open(raw, "rb") as src:
            for block in iter(lambda: src.read(1 << 24), b""):
                f.write(block)
    replace_atomically(tmp, target)


def embed(run: str | Path | None, images: str | Path, out: str | Path = "features", *, which: str = "best",
          batch_size: int = 256, workers: int | None = None, device: str = "auto", precision: str = "auto",
          skip_bad: bool = False, shard: str | tuple[int, int] | None = None, progress: bool = True,
          recursive: bool = False, id_column: str | None = None, path_column: str | None = None,
          catalogue_images: str | Path | None = None, restart: bool = False, tta: int = 1,
          interval: float | None = None, calibration: str | Path | None = None) -> EmbedSummary:
    """Write the pooled features of every image in ``images`` (a folder, ``recursive``: with its subfolders; an
    image; a list file; or a catalogue CSV, as ``predict`` reads them) under ``run`` (default: the model inside
    gzmorph) to ``out``.npy / .csv / .npy.json.

    The features are those of the image as it is; the answers in the .csv average ``tta`` views, and with
    ``interval`` each gets its calibrated bounds (``<column>_lower``, ``<column>_upper``), as ``predict`` gives them.
    A job killed midway continues when run again (``journal.py``); ``restart`` discards its partial rows instead.
    """
    npy, table, meta = feature_paths(out)
    check_output_file(npy, "features.npy")
    check_tta(tta)
    check_interval_options(interval, calibration)
    shard = parse_shard(shard)
    run_name = runs.run_name(run)
    run = runs.run_folder(run)
    cluster = distributed.from_env()
    loaded = runs.load_model(run, which, distributed.pick_device(cluster, device), precision)
    if not hasattr(loaded.model, "features"):
        raise BadData(f"{run}: its model has no pooled features to embed")
    cal = calibration_for(run_name, loaded, tta, calibration) if interval is not None else None
    tta = cal.tta if cal is not None else tta  # --interval alone: the calibration's views
    inputs = collect_inputs(images, recursive=recursive, id_column=id_column, path_column=path_column,
                            images=catalogue_images, skip_bad=skip_bad)
    inputs.check_not_empty("embed")
    mine = inputs.take(shard_slice(len(inputs), *shard)) if shard else inputs
    paths = mine.paths
    stream = ImageStream(paths, loaded.prep, batch_size=batch_size,
                         workers=workers or min(distributed.cpu_share(cluster, None), 16), skip_bad=skip_bad,
                         listed_in=str(meta), progress=progress, desc="embedding",
                         overlap=loaded.policy.device.type != "cpu")
    names = runs.output_names(loaded.config)
    header = [ID_COLUMN, "file", *names]
    if cal is not None:
        header += [f"{n}_{side}" for side in ("lower", "upper") for n in names]
    dim = loaded.model.feature_dim
    started = time.perf_counter()
    job = {"inputs_sha256": inputs.digest(), "shard": list(shard) if shard else None, "n_inputs": len(mine),
           "weights_sha256": loaded.sha256, "precision": loaded.policy.name, "tta": tta, "interval": interval,
           "dim": dim, "calibration": cal.data if cal is not None else None}
    try:
        journal = Journal.start(npy, job, ["rows", "csv"], restart=restart)
    except OSError as e:
        raise write_error(npy, e) from None
    stream.resume(journal.done, journal.skipped)
    done_before = journal.rows
    try:
        with open(journal.files["rows"], "ab") as f, open(journal.files["csv"], "a", newline="") as c:
            rows = csv.writer(c, lineterminator="\n")
            if journal.offsets.get("csv", 0) == 0:
                rows.writerow(header)
            for good, pixels in stream:  # positions in ``paths`` of the images that decoded
                features, outputs = embed_array(loaded.model, pixels, batch_size, loaded.policy)
                f.write(features.astype(DTYPE).tobytes())
                if tta > 1 or cal is not None:  # the answers over the views (and their spread, for intervals)
                    answers = predict_answers(loaded, pixels, batch_size, tta, spread=cal is not None)
                    answers, sd = answers if cal is not None else (answers, None)
                else:
                    answers, sd = finish_answers(loaded.config, outputs), None
                bounds = np.concatenate(intervals(cal, answers, sd, interval), axis=1) if cal is not None else None
                rows.writerows([mine.ids[i], str(paths[i]), *(f"{v:.6f}" for v in row),
                                *(f"{v:.6f}" for v in (bounds[k] if bounds is not None else ()))]
                               for k, (i, row) in enumerate(zip(good, answers)))
                f.flush()
                c.flush()
                journal.record(stream.done, done_before + stream.n_good, stream.skipped)
    except BadImage as e:  # fixing it changes the inputs, so this job's rows cannot continue: nothing is kept
        journal.discard()
        raise BadData(str(e)) from None
    except OSError as e:  # out of space mid-job: the rows recorded so far are kept for when there is room
        raise write_error(npy, e) from None
    n = done_before + stream.n_good
    if n == 0 and paths:
        journal.discard()
        raise BadData(f"none of the {len(paths)} images could be read; nothing was embedded")
    try:
        journal.record(stream.done, n, stream.skipped, final=True)
        _write_npy(journal.files["rows"], npy, n, dim)
        replace_atomically(journal.files["csv"], table)
    except OSError as e:
        raise write_error(npy, e) from None
    journal.discard()
    skipped = inputs.skipped_in(shard) + list(journal.skipped)
    summary = EmbedSummary(npy, n, dim, skipped, time.perf_counter() - started)
    atomic_write_json(meta, {
        "features": npy.name, "table": table.name, "n": n, "dim": dim, "dtype": np.dtype(DTYPE).name,
        "run": run_name, "model": loaded.config.model, "weights": str(loaded.weights),
        "weights_sha256": loaded.sha256, "crop": loaded.prep.crop, "size": loaded.prep.size,
        "precision": loaded.policy.name, "outputs": names, "gzmorph_version": __version__, "tta": tta,
        "interval": interval, "calibration": cal.data if cal is not None else None,
        "n_skipped": len(skipped), "skipped": [{"path": p, "why": w} for p, w in skipped],
        "seconds": summary.seconds, "shard": list(shard) if shard else None, "n_inputs": len(paths),
        "n_inputs_all_shards": len(inputs), "inputs_sha256": inputs.digest(), "source": inputs.source})
    return summary


def merge_features(parts: Sequence[str | Path], out: str | Path) -> EmbedSummary:
    """Join the parts of ``embed --shard I/N`` (given as their .npy files, in any order) into one set, in shard
    order, after checking they are the complete set of one job. Streams: constant memory."""
    npy, table, meta = feature_paths(out)
    check_output_file(npy, "features.npy")
    infos = check_parts([feature_paths(p)[0] for p in parts], npy, "embed",
                        (("weights_sha256", "weights"), ("precision", "--precision settings"), ("tta", "--tta"),
                         ("interval", "--interval"), ("calibration", "calibrations")))
    n = sum(info["n"] for _, info in infos)
    dim = infos[0][1]["dim"]
    raw = npy.with_name(f".{npy.name}.rows-{os.getpid()}")
    csv_tmp = table.with_name(f".{table.name}.tmp-{os.getpid()}")
    try:
        with open(raw, "wb") as f, open(csv_tmp, "w", newline="") as c:
            for k, (part, info) in enumerate(infos):
                rows = np.load(part, mmap_mode="r")
                if rows.shape != (info["n"], dim):
                    raise BadData(f"{part}: holds {rows.shape} but its .json records ({info['n']}, {dim}); embed it "
                                  f"again")
                for start in range(0, len(rows), 65536):
                    f.write(np.ascontiguousarray(rows[start:start + 65536]).tobytes())
                with open(feature_paths(part)[1], newline="") as src:
                    header = src.readline()
                    if k == 0:
                        c.write(header)
                    c.writelines(src)
        _write_npy(raw, npy, n, dim)
        replace_atomically(csv_tmp, table)
    finally:
        raw.unlink(missing_ok=True)
        csv_tmp.unlink(missing_ok=True)
    first = infos[0][1]
    skipped = [(s["path"], s["why"]) for _, info in infos for s in info["skipped"]]
    atomic_write_json(meta, {**first, "features": npy.name, "table": table.name, "n": n, "shard": None,
                             "merged_from": [str(p) for p, _ in infos], "n_skipped": len(skipped),
                             "skipped": [{"path": p, "why": w} for p, w in skipped],
                             "seconds": max(info["seconds"] for _, info in infos),
                             "n_inputs": first["n_inputs_all_shards"]})
    return EmbedSummary(npy, n, dim, skipped, max(info["seconds"] for _, info in infos))
