"""RMSE (the Kaggle metric) overall and per question."""

from __future__ import annotations

import numpy as np

from . import tree


def rmse(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Kaggle's score: root of the mean squared error over all (known) galaxy x answer cells."""
    err = (np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2
    if mask is None:
        return float(np.sqrt(err.mean()))
    n = mask.sum()
    return float(np.sqrt((err * mask).sum() / n)) if n else float("nan")


def rmse_per_question(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """RMSE over each question's answer columns, keyed "Q1".."Q11"."""
    out = {}
    for q in tree.QUESTIONS:
        m = None if mask is None else mask[:, q.slice]
        out[f"Q{q.number}"] = rmse(pred[:, q.slice], target[:, q.slice], m)
    return out


def report(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> dict:
    return {"rmse": rmse(pred, target, mask), "per_question": rmse_per_question(pred, target, mask)}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their mean rank); NaN with fewer than 3 pairs or a constant side."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3:
        return float("nan")

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        sums = np.bincount(inverse, weights=r)
        return (sums / counts)[inverse]

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def uncertainty_report(pred: np.ndarray, spread: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None,
                       tenth: float = 0.1) -> dict:
    """How well a per-answer spread (e.g. over test-time views) ranks the real errors: Spearman between spread and
    absolute error per answer and over all known cells, and the RMSE of the galaxies whose mean spread is in the
    lowest and the highest ``tenth`` (the most and least certain)."""
    mask = np.ones_like(pred, bool) if mask is None else np.asarray(mask, bool)
    err = np.abs(np.asarray(pred, np.float64) - target)
    per_answer = {c: spearman(spread[mask[:, i], i], err[mask[:, i], i]) for i, c in enumerate(tree.COLUMNS)}
    galaxy_spread = np.where(mask, spread, 0).sum(1) / np.maximum(mask.sum(1), 1)
    order = np.argsort(galaxy_spread, kind="stable")
    n = max(1, int(round(tenth * len(order))))
    sure, unsure = order[:n], order[-n:]
    return {"spearman_all": spearman(spread[mask], err[mask]), "spearman_per_answer": per_answer,
            "spearman_galaxy": spearman(galaxy_spread, np.sqrt((np.where(mask, err, 0) ** 2).sum(1)
                                                               / np.maximum(mask.sum(1), 1))),
            "rmse_most_certain_tenth": rmse(pred[sure], target[sure], mask[sure]),
            "rmse_least_certain_tenth": rmse(pred[unsure], target[unsure], mask[unsure]),
            "rmse_all": rmse(pred, target, mask), "tenth": n}
