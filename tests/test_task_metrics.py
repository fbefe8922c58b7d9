"""The scores of a fine-tuned run's own columns (gzmorph.task_metrics), checked against definitions computed the
slow, obvious way (pairs of galaxies, loops), and the verdict that tells a user the model learnt nothing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gzmorph import task_metrics as tm
from gzmorph.tasks import Column, Task


def auc_by_pairs(score, positive) -> float:
    """P(a positive scores above a negative), ties a half: the definition, over every pair."""
    pos, neg = score[positive], score[~positive]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_is_the_pairwise_probability_with_ties_counted_half(seed):
    rng = np.random.default_rng(seed)
    score = rng.integers(0, 6, 40) / 5.0  # few distinct values: many ties
    positive = rng.random(40) < 0.4
    assert tm.roc_auc(score, positive) == pytest.approx(auc_by_pairs(score, positive))


def test_roc_auc_of_perfect_reversed_constant_and_one_sided_scores():
    positive = np.array([0, 0, 1, 1], bool)
    assert tm.roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), positive) == 1.0
    assert tm.roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), positive) == 0.0
    assert tm.roc_auc(np.full(4, 0.3), positive) == 0.5
    assert math.isnan(tm.roc_auc(np.array([0.1, 0.2]), np.array([True, True])))


@pytest.mark.parametrize("seed", range(3))
def test_the_area_under_the_roc_curve_is_the_auc(seed):
    rng = np.random.default_rng(seed)
    score, positive = rng.integers(0, 8, 50).astype(float), rng.random(50) < 0.5
    fpr, tpr = tm.roc_curve(score, positive)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(tm.roc_auc(score, positive))


def test_confusion_matrix_balanced_accuracy_and_log_loss():
    truth, predicted = np.array([0, 0, 0, 0, 1, 1, 2]), np.array([0, 0, 0, 1, 1, 0, 2])
    m = tm.confusion_matrix(truth, predicted, 3)
    assert m.tolist() == [[3, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert tm.balanced_accuracy(m) == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    prob = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])
    assert tm.log_loss(prob, np.array([0, 1])) == pytest.approx(-(np.log(0.5) + np.log(0.8)) / 2)


def binary(name="ring"):
    return Column(name, "classes", ("no", "yes"))


def test_a_classifier_is_scored_beside_the_majority_class():
    onehot = np.eye(2)[[0, 0, 0, 0, 0, 0, 1, 1]]
    prob = np.array([[.9, .1], [.8, .2], [.7, .3], [.6, .4], [.6, .4], [.3, .7], [.2, .8], [.45, .55]])
    r = tm.classes_report(binary(), prob, onehot, np.array([0.75, 0.25]))
    assert r["counts"] == {"no": 6, "yes": 2} and r["n"] == 8
    assert r["accuracy"] == pytest.approx(7 / 8) and r["balanced_accuracy"] == pytest.approx((5 / 6 + 1) / 2)
    assert r["auc"] == pytest.approx(11 / 12) and r["confusion_matrix"] == [[5, 1], [0, 2]]  # 0.55 < 0.7: one pair
    b = r["baseline"]  # always "no": 6 of 8 right, but it never finds a "yes"
    assert b["accuracy"] == pytest.approx(0.75) and b["balanced_accuracy"] == 0.5 and b["auc"] == 0.5
    assert b["log_loss"] == pytest.approx(-(6 * np.log(0.75) + 2 * np.log(0.25)) / 8)
    assert r["learnt"] and not r["warning"]
    assert r["roc"]["yes"]["tpr"][-1] == 1.0


def test_a_classifier_no_better_than_the_majority_is_flagged():
    onehot = np.eye(2)[[0, 0, 0, 0, 0, 0, 1, 1]]
    always_no = np.tile([0.8, 0.2], (8, 1))  # 75% accuracy, and nothing learnt
    r = tm.classes_report(binary(), always_no, onehot, np.array([0.75, 0.25]))
    assert r["accuracy"] == 0.75 and not r["learnt"]
    assert "balanced accuracy 0.500 is no better than always answering the majority class" in r["warning"]
    yes = np.array([0.4] * 5 + [0.7] + [0.6, 0.1])  # one "yes" found, but the scores rank worse than a coin
    ranked_backwards = np.stack([1 - yes, yes], axis=1)
    r = tm.classes_report(binary(), ranked_backwards, onehot, np.array([0.75, 0.25]))
    assert r["balanced_accuracy"] > 0.5 and r["auc"] <= tm.AUC_CHANCE and not r["learnt"]
    assert "ROC AUC" in r["warning"] and "chance" in r["warning"]


def test_one_class_among_the_scored_galaxies_cannot_tell_anything():
    r = tm.classes_report(binary(), np.array([[.9, .1], [.8, .2]]), np.eye(2)[[0, 0]], np.array([.5, .5]))
    assert not r["learnt"] and "only class 'no'" in r["warning"] and math.isnan(r["auc"])


def test_three_classes_take_the_macro_one_vs_rest_auc():
    col = Column("shape", "classes", ("bar", "disc", "odd"))
    truth = np.array([0, 0, 1, 1, 2, 2, 2])
    rng = np.random.default_rng(3)
    prob = rng.dirichlet(np.ones(3), size=7)
    r = tm.classes_report(col, prob, np.eye(3)[truth], np.array([0.2, 0.3, 0.5]))
    expected = np.mean([auc_by_pairs(prob[:, c], truth == c) for c in range(3)])
    assert r["auc"] == pytest.approx(expected) and set(r["roc"]) == {"bar", "disc", "odd"}
    assert r["baseline"]["name"].startswith("always 'odd'")


def test_numbers_are_scored_in_their_units_beside_the_train_mean():
    col = Column("size", "number", (), 50.0, 10.0)
    target = np.array([40.0, 50.0, 60.0, 70.0])
    r = tm.values_report(col, target + np.array([1.0, -1.0, 1.0, -1.0]), target, 50.0)
    assert r["rmse"] == pytest.approx(1.0) and r["mae"] == pytest.approx(1.0)
    spread = ((target - target.mean()) ** 2).sum()
    assert r["r2"] == pytest.approx(1 - 4 / spread) and r["learnt"]
    assert r["baseline"]["rmse"] == pytest.approx(np.sqrt(((target - 50) ** 2).mean()))
    flat = tm.values_report(col, np.full(4, 45.0), target, 50.0)  # a constant further off than the mean
    assert not flat["learnt"] and "no better than predicting the train mean" in flat["warning"]
    column = Column("frac", "fraction")  # the case: 0.233 where the mean scores 0.236
    target = np.array([0.0, 1.0] * 50)
    close = tm.values_report(column, 0.5 + (target - 0.5) * 0.01, target, 0.5)  # RMSE 0.495 against 0.5
    assert 0.98 * close["baseline"]["rmse"] < close["rmse"] < close["baseline"]["rmse"] and not close["learnt"]
    assert "within 2% of predicting the train mean" in close["warning"]


def test_a_task_report_unstandardises_numbers_and_reads_each_block():
    task = Task((binary("kind"), Column("size", "number", (), 50.0, 10.0), Column("f", "fraction")))
    pred = np.array([[0.2, 0.8, 1.0, 0.3], [0.7, 0.3, -1.0, 0.6], [0.6, 0.4, 0.0, 0.5]])
    targets = np.array([[0, 1, 1.0, 0.3], [1, 0, -1.0, 0.5], [0, 0, 0.5, 0.0]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 0]], bool)  # the third galaxy: size only
    r = tm.task_report(task, pred, targets, mask, np.array([0.5, 0.5, 0.0, 0.4]))
    assert r["kind"]["n"] == 2 and r["kind"]["accuracy"] == 1.0
    assert r["size"]["n"] == 3 and r["size"]["rmse"] == pytest.approx(np.sqrt(25 / 3))  # 5 units off, once
    assert r["size"]["baseline"]["name"] == "the train mean (50)"
    assert r["f"]["rmse"] == pytest.approx(np.sqrt(0.01 / 2))
    scores = tm.epoch_scores(r)
    assert set(scores) == {"valid_kind_accuracy", "valid_kind_balanced_accuracy", "valid_kind_auc",
                           "valid_kind_log_loss", "valid_size_rmse", "valid_size_mae", "valid_size_r2",
                           "valid_size_baseline_rmse", "valid_f_rmse", "valid_f_mae", "valid_f_r2",
                           "valid_f_baseline_rmse"}
    text = tm.format_report(r)
    assert "kind (classes, 2 galaxies): no 1, yes 1" in text and "confusion (rows: true" in text
    assert "size (number, 3 galaxies)" in text and "R²" in text


def test_a_column_nobody_labelled_is_said_and_the_json_is_strict():
    task = Task((binary("kind"), Column("f", "fraction")))
    r = tm.task_report(task, np.full((2, 3), 0.5), np.zeros((2, 3)), np.array([[1, 1, 0], [1, 1, 0]], bool),
                       np.array([0.5, 0.5, 0.5]))
    assert r["f"]["n"] == 0 and "nothing to measure" in tm.warnings(r)[-1]
    assert "valid_f_rmse" not in tm.epoch_scores(r) and "f: not labelled here" in tm.one_line(r)
    text = json.dumps(tm.json_ready(r))
    assert "NaN" not in text and json.loads(text)["kind"]["auc"] is None  # one class only: no AUC
