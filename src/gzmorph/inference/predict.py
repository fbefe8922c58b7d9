"""Images -> predictions -> a Kaggle submission CSV, streamed so that millions of images need constant memory.

Images are decoded by the one parallel decoder (``data/decoder.py``) while the model runs on the previous chunk;
rows are written as they come, to a temporary file that replaces the target only when the whole job has finished.
Sharding and merging for many machines is ``shards.py``; under ``torchrun`` each process takes its rank's shard and
rank 0 merges them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .. import runs
from ..data.batches import DeviceFeed
from ..data.decoder import decode_chunks
from ..data.images import Preprocess, image_stem
from ..data.inputs import collect_inputs
from ..errors import BadArgument, BadData, BadImage
from ..fsio import atomic_write, atomic_write_json, check_output_file, replace_atomically, write_error
from ..training import distributed
from ..version import __version__
from .answer_table import answer_columns, describe, pick_columns
from .calibration import calibration_for
from .intervals import check_interval_options, intervals
from .journal import Journal
from .shards import PredictionSummary, merge_shards, parse_shard, shard_part_path, shard_slice
from .table_writer import TableWriter, check_fits_text, output_format
from .tta import check_tta, queue_answers

log = logging.getLogger("gzmorph")


def spread_path(out: Path) -> Path:
    """Where ``predict --spread`` writes each answer's spread over the views: ``sub.csv`` -> ``sub.spread.csv``."""
    return out.with_name(f"{out.stem}.spread{out.suffix or '.csv'}")


def galaxy_id(path: Path) -> str:
    """The output's GalaxyID: the file name without its image suffix (both parts of ``.fits.gz``)."""
    return image_stem(path)


class ImageStream:
    """The decodable images of ``paths`` in batches of (their positions in ``paths``, uint8 pixels), in order, through
    the one decoder. Positions, not paths: a catalogue may list one file on two rows, each with its own id.

    An image that cannot be decoded stops the job with its name, or with ``skip_bad`` is logged and listed in
    ``skipped`` (and the caller records it in its ``.json``, named by ``listed_in``)."""

    def __init__(self, paths: Sequence[Path], prep: Preprocess, *, batch_size: int, workers: int, skip_bad: bool,
                 listed_in: str, progress: bool = True, desc: str = "predicting", overlap: bool = False,
                 skip_flag: str = "--skip-bad"):
        self.paths, self.prep, self.batch_size, self.workers = list(paths), prep, batch_size, workers
        self.skip_bad, self.listed_in, self.progress, self.desc = skip_bad, listed_in, progress, desc
        self.skip_flag = skip_flag  # how the caller's user asks to skip: a flag, or the API's skip_bad=True
        # Decode beside the model only where the model runs elsewhere (a GPU); on the CPU they take turns.
        self.ahead = 2 if overlap else 0
        self.skipped: list[tuple[str, str]] = []
        self.n_good = 0  # images decoded by this stream (not counting those a resumed job had done before)
        self.start = self.done = 0  # the images before ``done`` are finished: written, or skipped

    def resume(self, done: int, skipped: list[tuple[str, str]]) -> None:
        """Start after the first ``done`` images, which an earlier run finished (skipping ``skipped``). ``done`` is
        a multiple of the batch size (or the end), so the chunks keep the boundaries of an uninterrupted run."""
        self.start = self.done = done
        self.skipped = list(skipped)

    def __iter__(self) -> Iterator[tuple[list[int], np.ndarray]]:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(self.paths), initial=self.start, unit="img", desc=self.desc,
                   disable=not self.progress or None, leave=False)
        try:
            for c in decode_chunks(self.paths[self.start:], self.prep, chunk=self.batch_size, workers=self.workers,
                                   ahead=self.ahead, offset=self.start):
                self.done = c.start + c.size
                for i, why in c.bad:
                    if not self.skip_bad:
                        raise BadImage(f"{self.paths[i]}: {why}; fix or remove it, or pass {self.skip_flag} to leave such "
                                       f"images out (they are listed in {self.listed_in})")
                    log.warning("skipping %s: %s", self.paths[i], why)
                    self.skipped.append((str(self.paths[i]), why))
                if c.good:
                    self.n_good += len(c.good)
                    yield c.good, c.pixels
                bar.update(c.size)
        finally:
            bar.close()

def predict(run: str | Path | None, images: str | Path, out: str | Path = "submission.csv", *, which: str = "best",
            batch_size: int = 256, workers: int | None = None, device: str = "auto", skip_bad: bool = False,
            tta: int = 1, shard: str | tuple[int, int] | None = None, precision: str = "auto",
            spread: bool = False, progress: bool = True, columns: str = "auto", recursive: bool = False,
            id_column: str | None = None, path_column: str | None = None,
            catalogue_images: str | Path | None = None, restart: bool = False,
            interval: float | None = None, calibration: str | Path | None = None) -> PredictionSummary:
    """Predict every image of ``images`` with ``run`` (default: the model inside gzmorph) into the table ``out``.

    ``images``: a folder (``recursive``: with its subfolders), one image, a .txt list of image paths, or a catalogue
    CSV (``id_column``, and ``path_column`` or ``catalogue_images``; see ``gzmorph.data.inputs``) whose other columns
    are kept. ``out``'s suffix picks the format (.csv, .parquet, .fits); ``columns`` picks Kaggle's 37 Class columns
    or the named table (``auto``: Kaggle for a CSV of images, named otherwise; see ``answer_table``).

    Unreadable images stop the job with the file named, or with ``skip_bad`` are left out, counted and listed in
    ``<out>.json`` beside the table (with the model file's SHA-256 and the gzmorph version). ``shard="I/N"`` predicts
    only the I-th of N slices of the image list (join the N files with :func:`merge_shards`). Run by torchrun with
    several processes and no ``shard``, each process predicts its rank's shard and rank 0 writes ``out``. With
    ``spread`` (and ``tta`` > 1), each answer's spread over the views: in the named table as columns, beside a Kaggle
    CSV as ``<out stem>.spread.csv`` (the same columns, leaving the submission as Kaggle reads it). With
    ``interval`` (a level in (0, 1)), each answer's calibrated interval goes into the named table (see
    ``intervals.py``; the run, or the file ``calibration``, must be calibrated for its weights and ``tta``).

    A CSV job killed midway (SIGKILL, out of memory, a lost node) keeps the rows it wrote: the same call continues
    where it stopped, and the finished file is the same as an uninterrupted run's; a call for another job finds the
    partial one and is refused unless ``restart`` (see ``journal.py``).
    """
    suffix = output_format(out)  # before check_output_file makes a missing folder for a file it would refuse
    out = check_output_file(out, "submission.csv")
    check_tta(tta)
    if spread and tta < 2:
        raise BadArgument("--spread is the spread over the TTA views: give --tta 8 (or 2, 4, 16, 32)")
    check_interval_options(interval, calibration)
    shard = parse_shard(shard)
    cluster = distributed.from_env()
    if shard is None and cluster.enabled:
        return _predict_with_torchrun(cluster, run, images, out, which=which, batch_size=batch_size,
                                      workers=workers, device=device, skip_bad=skip_bad, tta=tta, precision=precision,
                                      spread=spread, progress=progress, columns=columns, recursive=recursive,
                                      id_column=id_column, path_column=path_column,
                                      catalogue_images=catalogue_images, restart=restart, interval=interval,
                                      calibration=calibration)
    inputs = collect_inputs(images, recursive=recursive, id_column=id_column, path_column=path_column,
                            images=catalogue_images, skip_bad=skip_bad)
    inputs.check_not_empty("predict")
    columns = pick_columns(columns, suffix=suffix, catalogue=inputs.extra is not None, interval=interval)
    if suffix == ".fits":
        extra_cols = [] if inputs.extra is None or columns == "kaggle" else list(inputs.extra.columns)
        check_fits_text(extra_cols, [(inputs.id_column, inputs.ids),
                                     *((c, inputs.extra[c]) for c in extra_cols)])
    dev = distributed.pick_device(cluster, device)
    run_name = runs.run_name(run)
    run = runs.run_folder(run)
    loaded = runs.load_model(run, which, dev, precision)
    task = runs.task_of(loaded.config)
    calibration = calibration_for(run_name, loaded, tta, calibration) if interval is not None else None
    tta = calibration.tta if calibration is not None else tta  # --interval alone: the calibration's views
    mine = inputs.take(shard_slice(len(inputs), *shard)) if shard else inputs
    if shard:
        log.info("shard %d/%d: %d of %d images", shard[0], shard[1], len(mine), len(inputs))
    workers = workers or min(distributed.cpu_share(cluster, None), 16)  # the cores, split between a node's processes
    stream = ImageStream(mine.paths, loaded.prep, batch_size=batch_size, workers=workers, skip_bad=skip_bad,
                         listed_in=f"{out}.json", progress=progress, overlap=dev.type != "cpu")
    separate_spread = spread and columns == "kaggle" and suffix == ".csv" and task is None
    spread_out = spread_path(out) if separate_spread else None
    started = time.perf_counter()

    def frame(rows: list[int], values: np.ndarray, sd: np.ndarray | None):
        if columns == "kaggle":  # Kaggle's header exactly
            extra = None
        elif mine.extra is None:  # a folder or list: which file each row came from (subfolders, other names)
            extra = {"file": [str(mine.paths[r]) for r in rows]}
        else:  # a catalogue: its own columns, its image column among them
            extra = mine.extra.iloc[rows]
        lower, upper = intervals(calibration, values, sd, interval) if calibration else (None, None)
        return answer_columns(values, [mine.ids[r] for r in rows], columns=columns, id_column=mine.id_column,
                            extra=extra, task=task, output_names=runs.output_names(loaded.config),
                            spread=sd if spread and not separate_spread else None, lower=lower, upper=upper)

    need_spread = spread or calibration is not None  # an interval is scaled by the spread over the views

    feed = DeviceFeed(loaded.policy.device, loaded.policy.channels_last)  # pinned buffers on a GPU, kept

    def predict_into(table: TableWriter, extra: TableWriter | None, after_chunk=lambda mark: None) -> None:
        """One chunk behind: each chunk's model work is queued before the previous chunk's answers are read and
        written, so a GPU computes while the host formats rows (on a CPU the order changes nothing). ``mark``:
        where the stream stood when a chunk came, what the journal records once that chunk is written."""
        def write(rows, answers, mark) -> None:
            got = answers()
            values, sd = got if need_spread else (got, None)
            table.write(frame(rows, values, sd))
            if extra:
                extra.write(answer_columns(sd, [mine.ids[r] for r in rows], columns="kaggle"))
            after_chunk(mark)

        pending = None
        for rows, pixels in stream:
            queued = queue_answers(loaded, pixels, batch_size, tta, spread=need_spread, feed=feed)
            if pending:
                write(*pending)
            pending = (rows, queued, (stream.done, stream.n_good, len(stream.skipped)))
        if pending:
            write(*pending)
        empty = np.zeros((0, len(runs.output_names(loaded.config))), np.float32)
        table.write_header_only(frame([], empty, empty if need_spread else None))
        if extra:
            extra.write_header_only(answer_columns(empty, [], columns="kaggle"))

    def nothing_read() -> BadData:
        return BadData(f"none of the {len(mine)} images could be read; nothing was predicted")

    if not mine.paths:  # more shards than images: this shard is legitimately empty
        log.warning("shard %d/%d holds none of the %d images; writing a table with the header only", *shard,
                    len(inputs))
    if suffix == ".csv":  # rows append to a journalled partial file: a killed job resumes (journal.py)
        # What makes the job this job; not the batch size, which moves only the last bits of some numbers.
        job = {"inputs_sha256": inputs.digest(), "shard": list(shard) if shard else None, "n_inputs": len(mine),
               "weights_sha256": loaded.sha256, "tta": tta, "precision": loaded.policy.name, "columns": columns,
               "spread": spread, "interval": interval, "format": suffix,
               "calibration": calibration.data if calibration else None}
        try:
            journal = Journal.start(out, job, ["rows", "spread"] if separate_spread else ["rows"], restart=restart)
        except OSError as e:
            raise write_error(out, e) from None
        stream.resume(journal.done, journal.skipped)
        table = TableWriter(journal.files["rows"], suffix, describe, append=True)
        extra = TableWriter(journal.files["spread"], ".csv", append=True) if separate_spread else None
        done_before = journal.rows

        def after_chunk(mark) -> None:
            done, n_good, n_skipped = mark
            for w in filter(None, (table, extra)):
                w.flush()
            journal.record(done, done_before + n_good, stream.skipped[:n_skipped])

        try:
            predict_into(table, extra, after_chunk)
        except BadImage as e:  # fixing it changes the inputs, so this job's rows cannot continue: nothing is kept
            journal.discard()
            raise BadData(str(e)) from None
        except OSError as e:  # out of space mid-job: the rows recorded so far are kept for when there is room
            raise write_error(out, e) from None
        finally:
            for w in filter(None, (table, extra)):
                w.close()
        if done_before + stream.n_good == 0 and mine.paths:
            journal.discard()
            raise nothing_read()
        try:
            journal.record(stream.done, done_before + stream.n_good, stream.skipped, final=True)
            if separate_spread:
                replace_atomically(journal.files["spread"], spread_out)
            replace_atomically(journal.files["rows"], out)
        except OSError as e:
            raise write_error(out, e) from None
        journal.discard()
        n_rows, stream_skipped, n_resumed = journal.rows, journal.skipped, done_before
    else:  # Parquet and FITS are written whole: a temporary file that replaces the target when complete
        def write(tmp: Path) -> None:
            table = TableWriter(tmp, suffix, describe)
            try:
                predict_into(table, None)
            finally:
                table.close()
            if stream.n_good == 0 and mine.paths:  # raised inside the write, so an earlier output is kept
                raise nothing_read()

        try:
            atomic_write(out, write)
        except BadImage as e:  # an unreadable image without --skip-bad: the job stops, the old output is kept
            raise BadData(str(e)) from None
        n_rows, stream_skipped, n_resumed = stream.n_good, stream.skipped, 0
    skipped = inputs.skipped_in(shard) + list(stream_skipped)
    summary = PredictionSummary(out, n_rows, skipped, time.perf_counter() - started, loaded.sha256, n_resumed)
    atomic_write_json(Path(f"{out}.json"), {
        "table": str(out), "format": suffix, "columns": columns, "run": run_name, "weights": str(loaded.weights),
        "weights_sha256": loaded.sha256, "gzmorph_version": __version__, "torch_version": torch.__version__,
        "n_predicted": n_rows, "tta": tta, "interval": interval, "spread": spread,
        "calibration": calibration.data if calibration else None, "spread_csv": str(spread_out) if spread_out else None,
        "precision": loaded.policy.name, "runtime": loaded.policy.describe(),
        "n_skipped": len(skipped), "skipped": [{"path": p, "why": w} for p, w in skipped],
        "seconds": summary.seconds, "shard": list(shard) if shard else None, "n_inputs": len(mine),
        "n_inputs_all_shards": len(inputs), "inputs_sha256": inputs.digest(), "source": inputs.source})
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


