"""Scores of a trained run on a labelled split: RMSE over the 37 outputs and per question, beside the train-mean
baseline on the same galaxies (a model that does not beat it has not learned anything); for a fine-tuned run, its
own columns scored on a label file (``gzmorph.task_metrics``).

The JSON goes into the run folder, except for the model inside gzmorph: its run folder is unpacked in the cache,
which is gzmorph's and where nobody looks, so its results go to ``./gznet-gz2`` (or ``--out``)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import runs, task_metrics, tree
from ..data.catalogue import Catalogue
from ..data.labelled import LabelledImages, attach_images, load_labelled
from ..data.layout import ImageFolder
from ..errors import BadArgument, BadData
from ..fsio import atomic_write_json
from ..metrics import report, uncertainty_report
from ..precision import pick_device
from .tta import check_tta, predict_answers, predict_array

log = logging.getLogger("gzmorph")


def is_packaged(run: Path) -> bool:
    """Whether ``run`` is the model inside gzmorph, unpacked (``gzmorph.pretrained`` marks its config.json)."""
    try:
        return bool(json.loads((run / runs.CONFIG).read_text()).get("pretrained"))
    except (OSError, ValueError, AttributeError):
        return False


def results_folder(run: Path, out: str | Path | None = None) -> Path:
    """Where evaluate and plot write what they make of ``run``: ``out`` when given; else the run folder, or for the
    packaged model a folder named after it in the current directory (created)."""
    from .. import pretrained

    if not out and not is_packaged(run):
        return run
    folder = Path(out) if out else Path(pretrained.NAME)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class SplitPrediction:
    """A run's answers for every galaxy of one labelled split, with what they came from."""

    loaded: runs.LoadedModel
    labelled: LabelledImages
    pred: np.ndarray  # (N, 37) in the catalogue's row order
    seconds: float  # the model's time (decoding excluded)
    spread: np.ndarray | None = None  # (N, 37) each answer's spread over the TTA views, when asked for


def predict_split(run: str | Path, data: str | Path, split: str, *, which: str = "best", limit: int | None = None,
                  batch_size: int = 256, device: str = "auto", precision: str = "auto", skip_bad: bool = False,
                  tta: int = 1, cache_dir: str | Path | None = None, workers: int | None = None,
                  progress: bool = True, spread: bool = False) -> SplitPrediction:
    """Load ``run`` and predict every galaxy of ``split`` of the Kaggle-layout folder ``data`` (what evaluation and
    the galleries share). The split comes from the run's own seed and valid fraction, so it is the one it trained
    against."""
    check_tta(tta)
    loaded = runs.load_model(run, which, pick_device(device), precision)
    cfg = loaded.config
    if cfg.task:
        raise BadArgument(_needs_labels(run, cfg))
    labelled = load_labelled(data, loaded.prep, (split,), use_partial=False, valid_fraction=cfg.valid_fraction,
                             seed=cfg.seed, limit=limit, skip_bad=skip_bad, cache_dir=cache_dir, workers=workers,
                             progress=progress)[split]
    started = time.perf_counter()
    out = predict_answers(loaded, labelled.pixels, batch_size, tta, spread=spread)
    pred, sd = out if spread else (out, None)
    return SplitPrediction(loaded, labelled, pred, time.perf_counter() - started, sd)


def _needs_labels(run, cfg) -> str:
    columns = ", ".join(c["name"] for c in cfg.task["columns"])
    return (f"{run} is fine-tuned on its own columns ({columns}), not the 37 Galaxy Zoo answers of a Kaggle-layout "
            f"folder: score it with `gzmorph evaluate {run} --labels FILE.csv --images DIR` (a CSV of GalaxyID + "
            f"{columns}, like the one it was fine-tuned on, and the folder of its images)")


def evaluate(run: str | Path, data: str | Path, split: str = "test", *, which: str = "best",
             limit: int | None = None, batch_size: int = 256, device: str = "auto", skip_bad: bool = False,
             tta: int = 1, precision: str = "auto", cache_dir: str | None = None, workers: int | None = None,
             write: bool = True, progress: bool = True, spread: bool = False,
             out_dir: str | Path | None = None) -> dict:
    """Evaluate ``run`` on ``split`` of the Kaggle-layout folder ``data``; writes eval-<split>.json into
    :func:`results_folder` (the run folder, ``out_dir``, or ./gznet-gz2 for the packaged model), its path in the
    result's ``written``. With ``spread`` (and ``tta`` > 1), also how well each answer's spread over the views
    ranks its real error."""
    if spread and tta < 2:
        raise BadArgument("--spread is the spread over the TTA views: give --tta 8 (or 2, 4, 16, 32)")
    run = runs.run_folder(run)
    done = predict_split(run, data, split, which=which, limit=limit, batch_size=batch_size, device=device,
                         precision=precision, skip_bad=skip_bad, tta=tta, cache_dir=cache_dir, workers=workers,
                         progress=progress, spread=spread)
    loaded, cat, pred, seconds = done.loaded, done.labelled.catalogue, done.pred, done.seconds
    cfg = loaded.config
    baseline = np.broadcast_to(runs.read_train_mean(run), pred.shape)
    result = {
        "run": str(run), "model": cfg.model, "weights": loaded.weights.name, "weights_sha256": loaded.sha256,
        "data": str(data), "split": split, "n_galaxies": int(len(cat)), "tta": tta,
        "runtime": loaded.policy.describe(),
        **report(pred, cat.labels, cat.mask),
        "baseline": {"name": "train-mean", **report(baseline, cat.labels, cat.mask)},
        "tree_violations": int(tree.tree_violations(pred, tolerance=1e-3).any(axis=1).sum()),
        "predict_seconds": seconds,
        **({"uncertainty": uncertainty_report(pred, done.spread, cat.labels, cat.mask)} if spread else {}),
    }
    if write:
        path = results_folder(run, out_dir) / f"eval-{split}.json"
        atomic_write_json(path, result)
        result["written"] = str(path)
    return result


def evaluate_labels(run: str | Path, labels: str | Path, images: str | Path, *, which: str = "best",
                    batch_size: int = 256, device: str = "auto", skip_bad: bool = False, tta: int = 1,
                    precision: str = "auto", cache_dir: str | None = None, workers: int | None = None,
                    write: bool = True, progress: bool = True, out_dir: str | Path | None = None) -> dict:
    """Score a fine-tuned ``run`` on a label file of its columns (every row, whatever a split column says) whose
    images lie in ``images``: per column, the scores of ``gzmorph.task_metrics`` beside its baseline (from the
    run's train mean). Writes eval-labels-<file stem>.json into :func:`results_folder`."""
    from ..tasks import read_labels

    check_tta(tta)
    run = runs.run_folder(run)
    loaded = runs.load_model(run, which, pick_device(device), precision)
    task = runs.task_of(loaded.config)
    if task is None:
        raise BadArgument(f"{run} answers the 37 Galaxy Zoo questions, not the columns of a label file: evaluate it "
                          f"with --data DIR (a Kaggle-layout folder), without --labels")
    folder = ImageFolder(images)
    if not folder.path.is_dir():
        raise BadData(f"{folder.path}: not a folder of images")
    read = read_labels(labels, task)
    labelled = attach_images(folder, Catalogue(read.ids, read.targets, read.mask, read.source), loaded.prep,
                             skip_bad=skip_bad, split="labelled", cache_dir=cache_dir, workers=workers,
                             progress=progress)
    started = time.perf_counter()
    pred = predict_array(loaded.model, labelled.pixels, batch_size, loaded.policy, tta=tta)
    seconds = time.perf_counter() - started
    cat = labelled.catalogue
    report = task_metrics.task_report(task, pred, cat.labels, cat.mask, runs.read_train_mean(run))
    result = {"run": str(run), "model": loaded.config.model, "weights": loaded.weights.name,
              "weights_sha256": loaded.sha256, "labels": str(labels), "images": str(images),
              "split": Path(labels).stem, "n_galaxies": int(len(cat)), "tta": tta,
              "runtime": loaded.policy.describe(), "predict_seconds": seconds, "columns": report}
    if write:
        path = results_folder(run, out_dir) / f"eval-labels-{Path(labels).stem}.json"
        atomic_write_json(path, task_metrics.json_ready(result))
        result["written"] = str(path)
    return result


def format_report(result: dict) -> str:
    tta = f", TTA over {result['tta']} views" if result.get("tta", 1) > 1 else ""
    if "columns" in result:  # a fine-tuned run's own columns
        head = f"{result['model']} on {result['labels']} ({result['n_galaxies']} galaxies{tta})"
        return head + "\n" + task_metrics.format_report(result["columns"])
    lines = [f"{result['model']} on {result['split']} ({result['n_galaxies']} galaxies{tta})",
             f"{'':6s} {'model':>8s} {'mean':>8s}  question",
             f"{'all':6s} {result['rmse']:8.4f} {result['baseline']['rmse']:8.4f}  RMSE over all 37 answers"]
    for q in tree.QUESTIONS:
        key = f"Q{q.number}"
        lines.append(f"{key:6s} {result['per_question'][key]:8.4f} {result['baseline']['per_question'][key]:8.4f}"
                     f"  {q.text}")
    if "uncertainty" in result:
        u = result["uncertainty"]
        lines.append(f"spread over the views vs |error|: Spearman {u['spearman_all']:.3f} over all known answers, "
                     f"{u['spearman_galaxy']:.3f} per galaxy; RMSE of the most certain tenth "
                     f"{u['rmse_most_certain_tenth']:.4f}, of the least certain tenth {u['rmse_least_certain_tenth']:.4f}")
    return "\n".join(lines)
