"""Scores of a trained run on a labelled split: RMSE over the 37 outputs and per question, beside the train-mean
baseline on the same galaxies (a model that does not beat it has not learned anything)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import runs, tree
from ..data.labelled import LabelledImages, load_labelled
from ..errors import BadArgument
from ..fsio import atomic_write_json
from ..metrics import report, uncertainty_report
from ..precision import pick_device
from .tta import check_tta, predict_answers

log = logging.getLogger("gzmorph")


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
        raise BadArgument(f"{run} is fine-tuned on {cfg.labels}'s own columns; evaluate scores the 37 Galaxy Zoo "
                          f"answers of a Kaggle-layout folder. Predict its columns with `gzmorph predict {run} IMAGES`")
    labelled = load_labelled(data, loaded.prep, (split,), use_partial=False, valid_fraction=cfg.valid_fraction,
                             seed=cfg.seed, limit=limit, skip_bad=skip_bad, cache_dir=cache_dir, workers=workers,
                             progress=progress)[split]
    started = time.perf_counter()
    out = predict_answers(loaded, labelled.pixels, batch_size, tta, spread=spread)
    pred, sd = out if spread else (out, None)
    return SplitPrediction(loaded, labelled, pred, time.perf_counter() - started, sd)


def evaluate(run: str | Path, data: str | Path, split: str = "test", *, which: str = "best",
             limit: int | None = None, batch_size: int = 256, device: str = "auto", skip_bad: bool = False,
             tta: int = 1, precision: str = "auto", cache_dir: str | None = None, workers: int | None = None,
             write: bool = True, progress: bool = True, spread: bool = False) -> dict:
    """Evaluate ``run`` on ``split`` of the Kaggle-layout folder ``data``; writes RUN/eval-<split>.json. With
    ``spread`` (and ``tta`` > 1), also how well each answer's spread over the views ranks its real error."""
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
        atomic_write_json(run / f"eval-{split}.json", result)
    return result


def format_report(result: dict) -> str:
    tta = f", TTA over {result['tta']} views" if result.get("tta", 1) > 1 else ""
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
