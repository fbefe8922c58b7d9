"""How well a fine-tuned run answers the user's own columns (``gzmorph.tasks``), each beside the answer a model
that learnt nothing would give: what tells a user whether fine-tuning learnt anything.

* ``classes``: accuracy, balanced accuracy (the mean recall over the classes, so a rare class counts as much as a
  common one), ROC AUC (binary: of the second class; more classes: the macro mean of one-vs-rest), log loss and the
  confusion matrix; the baseline always answers the train split's majority class with the train split's class
  shares as probabilities.
* ``fraction`` / ``number``: RMSE, MAE and R² in the column's own units; the baseline predicts the train mean.

A column is flagged (``learnt`` False, with a one-line ``warning``) when the model does no better than its baseline:
balanced accuracy no higher than the majority class's, or ROC AUC at most ``AUC_CHANCE``; RMSE no lower than
``RMSE_MARGIN`` times the mean's.

numpy only (no scikit-learn): ROC AUC is the rank (Mann-Whitney) formula, tied scores given their mean rank.
"""

from __future__ import annotations

import math

import numpy as np

from .tasks import Column, Task

AUC_CHANCE = 0.52  # an AUC this close to 0.5 is a coin toss on a validation split of a few dozen galaxies
RMSE_MARGIN = 0.98  # an RMSE within 2% of the mean's (0.233 against 0.236) is the mean's, give or take the noise
EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] in the log loss, as the training loss does


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """The probability that a random positive scores above a random negative (ties count a half); NaN when either
    side is empty."""
    score, positive = np.asarray(score, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _ranks(score)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(score: np.ndarray, positive: np.ndarray) -> tuple[list[float], list[float]]:
    """(false positive rates, true positive rates) from the highest threshold down, one point per distinct score
    (so tied scores make one diagonal step, as the AUC counts them); empty lists when either side is empty."""
    score, positive = np.asarray(score, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return [], []
    order = np.argsort(-score, kind="stable")
    s, p = score[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp, fp = np.cumsum(p)[last_of_tie], np.cumsum(~p)[last_of_tie]
    return [0.0, *(fp / n_neg).tolist()], [0.0, *(tp / n_pos).tolist()]


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row = the true class, column = the predicted one."""
    out = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(out, (np.asarray(truth, np.int64), np.asarray(predicted, np.int64)), 1)
    return out


def balanced_accuracy(matrix: np.ndarray) -> float:
    """The mean recall over the classes present in the truth."""
    support = matrix.sum(axis=1)
    present = support > 0
    return float((np.diag(matrix)[present] / support[present]).mean()) if present.any() else float("nan")


def log_loss(prob: np.ndarray, truth: np.ndarray) -> float:
    """Mean cross-entropy of the true class's probability."""
    p = np.clip(np.asarray(prob, np.float64)[np.arange(len(truth)), truth], EPS, 1 - EPS)
    return float(-np.log(p).mean()) if len(p) else float("nan")


def classes_report(column: Column, prob: np.ndarray, onehot: np.ndarray, train_share: np.ndarray) -> dict:
    """Scores of one classes column on its known galaxies: ``prob`` and ``onehot`` are (N, k), ``train_share`` the
    train split's share of each class (what the baseline answers)."""
    k, names = column.width, list(column.classes)
    truth, predicted = onehot.argmax(1), prob.argmax(1)
    matrix = confusion_matrix(truth, predicted, k)
    if k == 2:  # the second class's probability ranks the galaxies; the first's would give the same AUC
        auc = roc_auc(prob[:, 1], truth == 1)
    else:
        per_class = [roc_auc(prob[:, c], truth == c) for c in range(k)]
        auc = float(np.nanmean(per_class)) if not all(math.isnan(a) for a in per_class) else float("nan")
    majority = int(np.argmax(train_share))
    base_matrix = confusion_matrix(truth, np.full(len(truth), majority), k)
    share = np.clip(np.asarray(train_share, np.float64), EPS, None)
    report = {
        "kind": "classes", "n": int(len(truth)), "classes": names,
        "counts": dict(zip(names, map(int, np.bincount(truth, minlength=k)))),
        "accuracy": float((truth == predicted).mean()) if len(truth) else float("nan"),
        "balanced_accuracy": balanced_accuracy(matrix),
        "auc": auc, "auc_kind": f"ROC AUC of {names[1]!r}" if k == 2 else "macro one-vs-rest ROC AUC",
        "log_loss": log_loss(prob, truth),
        "confusion_matrix": matrix.tolist(),
        "baseline": {"name": f"always {names[majority]!r} (the train majority), train shares as probabilities",
                     "accuracy": float((truth == majority).mean()) if len(truth) else float("nan"),
                     "balanced_accuracy": balanced_accuracy(base_matrix), "auc": 0.5,
                     "log_loss": log_loss(np.broadcast_to(share / share.sum(), prob.shape), truth)},
        "roc": {c: dict(zip(("fpr", "tpr"), roc_curve(prob[:, i], truth == i)))
                for i, c in enumerate(names) if k > 2 or i == 1},
    }
    report["learnt"], report["warning"] = _classes_verdict(column.name, report)
    return report


def _classes_verdict(name: str, r: dict) -> tuple[bool, str]:
    base = r["baseline"]
    present = [c for c, n in r["counts"].items() if n]
    if len(present) < 2:  # every score of a one-class sample is 0 or 1 whatever the model does
        return False, (f"{name}: the galaxies scored hold only class {present[0] if present else None!r}, so "
                       f"whether the model tells the classes apart cannot be measured; score it on galaxies of "
                       f"every class (a split column decides which are held out)")
    if r["balanced_accuracy"] <= base["balanced_accuracy"] + 1e-9:
        return False, (f"{name}: balanced accuracy {r['balanced_accuracy']:.3f} is no better than always answering "
                       f"the majority class ({base['balanced_accuracy']:.3f}): the model has not learnt this column")
    if not math.isnan(r["auc"]) and r["auc"] <= AUC_CHANCE:
        return False, (f"{name}: ROC AUC {r['auc']:.3f} is no better than chance (0.5): the model does not rank "
                       f"these galaxies by their class")
    return True, ""


def values_report(column: Column, pred: np.ndarray, target: np.ndarray, train_mean: float) -> dict:
    """Scores of one fraction or number column on its known galaxies, in the column's own units."""
    err, base_err = pred - target, train_mean - target
    spread = float(((target - target.mean()) ** 2).sum()) if len(target) else 0.0

    def scores(e: np.ndarray) -> dict:
        sq = float((e ** 2).sum())
        return {"rmse": float(np.sqrt((e ** 2).mean())) if len(e) else float("nan"),
                "mae": float(np.abs(e).mean()) if len(e) else float("nan"),
                "r2": 1 - sq / spread if spread > 0 else float("nan")}

    report = {"kind": column.kind, "n": int(len(target)), **scores(err),
              "baseline": {"name": f"the train mean ({train_mean:.4g})", **scores(base_err)}}
    rmse, base = report["rmse"], report["baseline"]["rmse"]
    report["learnt"] = bool(rmse < RMSE_MARGIN * base)
    report["warning"] = "" if report["learnt"] else (
        f"{column.name}: RMSE {rmse:.4g} is no better than predicting the train mean ({base:.4g}): the model has "
        f"not learnt this column" if not rmse < base else
        f"{column.name}: RMSE {rmse:.4g} is within {1 - RMSE_MARGIN:.0%} of predicting the train mean ({base:.4g}): "
        f"the model has learnt next to nothing of this column")
    return report


def task_report(task: Task, pred: np.ndarray, targets: np.ndarray, mask: np.ndarray, train_mean: np.ndarray) -> dict:
    """Every column's scores, keyed by its name. All arrays are (N, task.width) in the model's own space, as the
    loop trains on them (class probabilities / one-hot, fractions, standardised numbers); ``train_mean`` is the
    train split's per-output mean (``train_mean.json``): class shares, mean fraction, mean standardised number."""
    pred, targets = np.asarray(pred, np.float64), np.asarray(targets, np.float64)
    train_mean = np.asarray(train_mean, np.float64)
    out = {}
    for col, sl in zip(task.columns, task.slices()):
        known = np.asarray(mask[:, sl.start], bool)
        if not known.any():  # nothing to score: said once, and left out of the numbers
            out[col.name] = {"kind": col.kind, "n": 0, "learnt": False,
                             "warning": f"{col.name}: no galaxy scored has this column labelled; nothing to measure"}
        elif col.kind == "classes":
            out[col.name] = classes_report(col, pred[known, sl], targets[known, sl], train_mean[sl])
        else:
            scale, shift = (col.std, col.mean) if col.kind == "number" else (1.0, 0.0)
            out[col.name] = values_report(col, pred[known, sl.start] * scale + shift,
                                          targets[known, sl.start] * scale + shift,
                                          float(train_mean[sl.start] * scale + shift))
    return out


def json_ready(obj):
    """``obj`` with every NaN (a score that cannot be computed, e.g. R² of a constant column) as None: strict JSON,
    which other tools (jq, browsers) read."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def warnings(report: dict) -> list[str]:
    """One line per column the model has not learnt."""
    return [r["warning"] for r in report.values() if not r["learnt"]]


def epoch_scores(report: dict) -> dict[str, float]:
    """The numbers of a report that go in metrics.csv each epoch, as ``valid_<column>_<score>``."""
    keys = {"classes": ("accuracy", "balanced_accuracy", "auc", "log_loss")}
    out = {}
    for name, r in report.items():
        if not r["n"]:
            continue
        for key in keys.get(r["kind"], ("rmse", "mae", "r2")):
            out[f"valid_{name}_{key}"] = r[key]
        if r["kind"] != "classes":
            out[f"valid_{name}_baseline_rmse"] = r["baseline"]["rmse"]
    return out


def one_line(report: dict) -> str:
    """A short summary per column, for the log line of an epoch."""
    parts = []
    for name, r in report.items():
        if not r["n"]:
            parts.append(f"{name}: not labelled here")
        elif r["kind"] == "classes":
            parts.append(f"{name}: accuracy {r['accuracy']:.3f}, balanced {r['balanced_accuracy']:.3f}, "
                         f"AUC {r['auc']:.3f}")
        else:
            parts.append(f"{name}: RMSE {r['rmse']:.4g} (mean {r['baseline']['rmse']:.4g}), R² {r['r2']:.3f}")
    return "; ".join(parts)


def format_report(report: dict) -> str:
    """The full report, one block per column, with each score beside its baseline and the confusion matrix."""
    lines = []
    for name, r in report.items():
        if not r["n"]:
            lines.append(f"{name} ({r['kind']}): WARNING: {r['warning']}")
            continue
        b = r["baseline"]
        lines.append(f"{name} ({r['kind']}, {r['n']} galaxies)" +
                     (": " + ", ".join(f"{c} {n}" for c, n in r["counts"].items()) if r["kind"] == "classes" else ""))
        lines.append(f"  {'':18s} {'model':>8s} {'baseline':>9s}   baseline = {b['name']}")
        keys = (("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"),
                ("ROC AUC" if len(r["classes"]) == 2 else "macro OvR ROC AUC", "auc"),
                ("log loss", "log_loss")) if r["kind"] == "classes" else \
            (("RMSE", "rmse"), ("MAE", "mae"), ("R²", "r2"))
        for label, key in keys:
            lines.append(f"  {label[:18]:18s} {r[key]:8.4f} {b[key]:9.4f}")
        if r["kind"] == "classes":
            width = max(8, *(len(c) for c in r["classes"]))
            lines.append("  confusion (rows: true, columns: predicted)")
            lines.append("  " + " " * width + "".join(f" {c:>{width}s}" for c in r["classes"]))
            for c, row in zip(r["classes"], r["confusion_matrix"]):
                lines.append(f"  {c:>{width}s}" + "".join(f" {n:>{width}d}" for n in row))
        if r["warning"]:
            lines.append(f"  WARNING: {r['warning']}")
    return "\n".join(lines)
