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
