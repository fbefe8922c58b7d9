"""Scores of a trained run on a labelled split: RMSE over the 37 outputs and per question, beside the train-mean
baseline on the same galaxies (a model that does not beat it has not learned anything)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import runs, tree
from .data import load_labelled
from .fsio import atomic_write_json
from .metrics import report
from .inference import check_tta, pick_device, predict_array

log = logging.getLogger("gzmorph")


def evaluate(run: str | Path, data: str | Path, split: str = "test", *, which: str = "best",
             limit: int | None = None, batch_size: int = 256, device: str = "auto", skip_bad: bool = False,
             tta: int = 1, precision: str = "auto",
             cache_dir: str | None = None, workers: int | None = None, write: bool = True,
             progress: bool = True) -> dict:
    """Evaluate ``run`` on ``split`` of the Kaggle-layout folder ``data``; writes RUN/eval-<split>.json."""
    check_tta(tta)
    run = Path(run)
    loaded = runs.load_model(run, which, pick_device(device), precision)
    cfg = loaded.config
    labelled = load_labelled(data, loaded.prep, (split,), use_partial=False, valid_fraction=cfg.valid_fraction,
                             seed=cfg.seed, limit=limit, skip_bad=skip_bad, cache_dir=cache_dir, workers=workers,
                             progress=progress)[split]
    cat = labelled.catalogue
    started = time.perf_counter()
    pred = predict_array(loaded.model, labelled.pixels, batch_size, loaded.policy, tta=tta)
    seconds = time.perf_counter() - started
    baseline = np.broadcast_to(runs.read_train_mean(run), pred.shape)
    result = {
        "run": str(run), "model": cfg.model, "weights": loaded.weights.name, "weights_sha256": loaded.sha256,
        "data": str(data), "split": split, "n_galaxies": int(len(cat)), "tta": tta,
        "runtime": loaded.policy.describe(),
        **report(pred, cat.labels, cat.mask),
        "baseline": {"name": "train-mean", **report(baseline, cat.labels, cat.mask)},
        "tree_violations": int(tree.tree_violations(pred, tolerance=1e-3).any(axis=1).sum()),
        "predict_seconds": seconds,
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
    return "\n".join(lines)
