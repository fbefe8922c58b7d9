"""Calibrated answer intervals: the conformal maths on synthetic data, clipping to the tree, level checks, the
calibration file (round trip, refusals), calibrating a run end to end, and the calibration the packaged model ships."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gzmorph import runs, tree
from gzmorph.errors import BadArgument, BadData, BadRun
from gzmorph.inference.calibration import (CALIBRATION, calibrate_run, calibration_for, check_calibration,
                                           load_calibration, save_calibration)
from gzmorph.inference.intervals import (cap_level, check_level, clip_to_tree, conformal_quantile,
                                         fit_calibration, intervals)
from helpers import cli_fails, make_fake_run, tree_labels, write_catalogue, write_kaggle_folder

SHA = "ab" * 32


def heteroscedastic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions, spreads and labels where each error is the spread times a standard normal: the spread is an
    exact difficulty score, and every galaxy is exchangeable with every other."""
    rng = np.random.default_rng(seed)
    labels = tree_labels(n, seed)
    spread = 0.01 * np.exp(rng.normal(0.0, 1.0, labels.shape))
    values = labels + spread * rng.standard_normal(labels.shape)
    return values, spread, labels


def in_interval(lower, upper, labels):
    return (labels >= lower) & (labels <= upper)


# --------------------------------------------------------------------------------------------------------------
# The conformal quantile and its coverage
# --------------------------------------------------------------------------------------------------------------

def test_conformal_quantile_is_the_finite_sample_rank():
    scores = np.arange(1.0, 10.0)  # n = 9
    assert conformal_quantile(scores, 0.5) == 5.0  # ceil(10 * 0.5) = 5
    assert conformal_quantile(scores, 0.8) == 8.0  # ceil(10 * 0.8) = 8, not the 7.4 of a plain quantile
    assert conformal_quantile(scores, 0.9) == 9.0
    assert conformal_quantile(scores, 0.95) == float("inf")  # ceil(9.5) = 10 > 9: no finite guarantee


@pytest.mark.parametrize("level", [0.5, 0.8, 0.9, 0.95])
def test_coverage_on_exchangeable_data_is_close_to_the_level(level):
    values, spread, labels = heteroscedastic(600, seed=1)
    cal = fit_calibration(values, spread, labels, tta=8, weights_sha256=SHA)
    new_values, new_spread, new_labels = heteroscedastic(4000, seed=2)
    hit = in_interval(*intervals(cal, new_values, new_spread, level), new_labels)
    assert abs(hit.mean() - level) < 0.02, hit.mean()
    for q in (1, 6):  # the roots: nothing but [0, 1] clips them, so each answer is covered on its own
        answers = hit[:, tree.question(q).slice].mean(axis=0)
        assert np.all(np.abs(answers - level) < 0.05), answers


def test_a_spread_that_ranks_the_errors_gives_narrower_intervals_than_a_constant_width():
    values, spread, labels = heteroscedastic(600, seed=3)
    cal = fit_calibration(values, spread, labels, tta=8, weights_sha256=SHA)
    new_values, new_spread, new_labels = heteroscedastic(3000, seed=4)
    lower, upper = intervals(cal, new_values, new_spread, 0.9)
    # The constant-width interval of the same coverage, per answer, tuned on the new galaxies themselves.
    coverage = in_interval(lower, upper, new_labels).mean(axis=0)
    h = np.array([np.quantile(np.abs(new_labels - new_values)[:, j], coverage[j]) for j in range(tree.N_OUTPUTS)])
    const_lower, const_upper = clip_to_tree(new_values - h, new_values + h)
    assert (upper - lower).mean() < 0.8 * (const_upper - const_lower).mean()


def test_a_spread_that_ranks_nothing_falls_back_to_a_constant_width():
    rng = np.random.default_rng(5)
    labels = tree_labels(500, 5)
    values = labels + 0.02 * rng.standard_normal(labels.shape)
    spread = 0.01 * np.exp(rng.normal(0.0, 1.0, labels.shape))  # unrelated to the errors
    cal = fit_calibration(values, spread, labels, tta=8, weights_sha256=SHA)
    # eps far above the spread: the interval hardly depends on it
    assert np.median(cal.eps / np.median(spread, axis=0)) >= 8


def test_too_few_galaxies_for_a_level_give_the_whole_allowed_range():
    values, spread, labels = heteroscedastic(12, seed=6)
    cal = fit_calibration(values, spread, labels, tta=8, weights_sha256=SHA)
    lower, upper = intervals(cal, values, spread, 0.95)  # ceil(13 * 0.95) = 13 > 12
    assert np.all(lower == 0)
    q1 = tree.question(1).slice
    assert np.all(upper[:, q1] == 1)


# --------------------------------------------------------------------------------------------------------------
# Clipping to the tree
# --------------------------------------------------------------------------------------------------------------

def test_intervals_stay_inside_zero_and_the_parents_surer_upper_bound():
    values, spread, labels = heteroscedastic(300, seed=7)
    cal = fit_calibration(values, spread, labels, tta=8, weights_sha256=SHA)
    lower, upper = intervals(cal, values, spread * 20, 0.9)  # wide enough that clipping bites
    assert np.all(lower >= 0) and np.all(upper <= 1) and np.all(lower <= upper)
    assert cap_level(0.9) == pytest.approx(0.99)
    parent_upper = intervals(cal, values, spread * 20, cap_level(0.9))[1]
    capped = 0
    for q, parent in zip(tree.QUESTIONS, tree.PARENT_INDEX):
        if parent >= 0:
            assert np.all(upper[:, q.slice] <= parent_upper[:, [parent]])
            capped += np.isclose(upper[:, q.slice], parent_upper[:, [parent]]).sum()
    assert capped > 0
    assert (upper[:, tree.question(1).slice] == 1).any()  # the roots are clipped at 1, nothing lower


def test_clip_to_tree_caps_children_at_the_given_parent_values():
    values = tree_labels(50, 8)
    lower, upper = clip_to_tree(values - 0.5, values + 0.5, values)
    assert np.allclose(lower, np.clip(values - 0.5, 0, None))  # a tree-consistent child never exceeds its parent
    for q, parent in zip(tree.QUESTIONS, tree.PARENT_INDEX):
        expected = np.minimum(1.0, values[:, q.slice] + 0.5)
        if parent >= 0:
            expected = np.minimum(expected, values[:, [parent]])
        assert np.allclose(upper[:, q.slice], expected)


@pytest.mark.parametrize("level", [0.5, 0.9])
def test_capping_by_a_surer_parent_bound_keeps_coverage_that_the_predicted_parent_loses(level):
    values, spread, labels = heteroscedastic(600, seed=1)
    cal = fit_calibration(values, spread, labels, tta=8, weights_sha256=SHA)
    new_values, new_spread, new_labels = heteroscedastic(4000, seed=2)
    honest = in_interval(*intervals(cal, new_values, new_spread, level), new_labels).mean()
    to_value = in_interval(*intervals(cal, new_values, new_spread, level, cap="parent_value"), new_labels).mean()
    assert honest > level - 0.01
    assert to_value < honest - 0.02  # the predicted parent is below the true one half the time
    with pytest.raises(BadArgument, match="parent_upper"):
        intervals(cal, new_values, new_spread, level, cap="sibling")


# --------------------------------------------------------------------------------------------------------------
# Levels and arrays
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("level", [1.5, 1.0, 0.0, -0.1, float("nan"), "ninety", None])
def test_a_level_outside_zero_and_one_is_one_clear_error(level):
    with pytest.raises(BadArgument, match="between 0 and 1"):
        check_level(level)


def test_intervals_check_the_level_and_the_arrays():
    values, spread, labels = heteroscedastic(50, seed=9)
    cal = fit_calibration(values, spread, labels, tta=8, weights_sha256=SHA)
    with pytest.raises(BadArgument, match="1.5"):
        intervals(cal, values, spread, 1.5)
    with pytest.raises(BadData, match="37"):
        intervals(cal, values[:, :17], spread[:, :17], 0.9)
    with pytest.raises(BadData, match="too few"):
        fit_calibration(values[:5], spread[:5], labels[:5], tta=8, weights_sha256=SHA)
    with pytest.raises(BadArgument, match="--tta"):
        fit_calibration(values, spread, labels, tta=1, weights_sha256=SHA)


# --------------------------------------------------------------------------------------------------------------
# The calibration file
# --------------------------------------------------------------------------------------------------------------

def test_save_and_load_round_trip_never_narrows_an_interval(tmp_path):
    values, spread, labels = heteroscedastic(200, seed=10)
    cal = fit_calibration(values, spread, labels, tta=8, weights_sha256=SHA, data={"split": "valid"})
    path = save_calibration(tmp_path, cal)
    assert path == tmp_path / CALIBRATION
    back = load_calibration(tmp_path)
    assert (back.tta, back.weights_sha256, back.data, back.n_galaxies) == (8, SHA, {"split": "valid"}, 200)
    for level in (0.3, 0.5, 0.9, 0.99):
        q, q_back = cal.quantiles(level), back.quantiles(level)
        assert np.all(q_back >= q) and np.allclose(q_back, q, rtol=1e-3)
    lower, upper = intervals(cal, values, spread, 0.9)
    lower_back, upper_back = intervals(back, values, spread, 0.9)
    assert np.all(upper_back >= upper) and np.allclose(upper_back, upper, atol=1e-3)
    # (These synthetic predictions are not tree-consistent: where a child's prediction lies above its parent's cap
    # the interval collapses onto the cap, and a wider cap moves both bounds up.)
    open_cells = lower < upper
    assert np.all(lower_back[open_cells] <= lower[open_cells]) and np.allclose(lower_back, lower, atol=1e-3)


def test_a_missing_or_damaged_calibration_is_refused_clearly(tmp_path):
    with pytest.raises(BadRun, match="not calibrated"):
        load_calibration(tmp_path)
    (tmp_path / CALIBRATION).write_text('{"format": "gzmorph-calibration/1", "tta": 8}')
    with pytest.raises(BadRun, match="unreadable calibration"):
        load_calibration(tmp_path)


def test_a_calibration_of_other_weights_or_views_is_refused():
    values, spread, labels = heteroscedastic(50, seed=11)
    cal = fit_calibration(values, spread, labels, tta=8, weights_sha256=SHA)
    check_calibration(cal, SHA, 8)  # the same weights and views: accepted
    with pytest.raises(BadRun, match="recalibrate"):
        check_calibration(cal, "cd" * 32, 8)
    with pytest.raises(BadArgument, match="--tta 8"):
        check_calibration(cal, SHA, 4)


# --------------------------------------------------------------------------------------------------------------
# Calibrating a run (an untrained but loadable one: the maths does not care how good the model is)
# --------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    data = write_kaggle_folder(root / "data", n=60, seed=12, image_size=96)  # 12 valid galaxies
    run = make_fake_run(root / "run", data=str(data.root))
    cal = calibrate_run(run, data.root, tta=2, progress=False, workers=1)
    return run, data, cal


def test_calibrate_run_writes_a_calibration_predict_can_use(calibrated):
    run, data, cal = calibrated
    assert cal.n_galaxies == len(data.ids_of("valid")) and cal.tta == 2
    assert cal.data["split"] == "valid" and cal.data["n_galaxies"] == cal.n_galaxies
    loaded = runs.load_model(run)
    assert cal.weights_sha256 == loaded.sha256
    back = calibration_for(run, loaded, 2)
    assert np.allclose(back.quantiles(0.9), cal.quantiles(0.9), rtol=1e-3)
    with pytest.raises(BadArgument, match="--tta 2"):
        calibration_for(run, loaded, 8)


def test_calibrate_run_on_a_users_file(calibrated, tmp_path):
    run, data, _ = calibrated
    ids = data.ids_of("test")
    labels = data.labels[[list(data.ids).index(i) for i in ids]]
    csv = write_catalogue(tmp_path / "mine.csv", ids, labels)
    cal = calibrate_run(run, labels=csv, images=data.training_images, tta=2, progress=False, workers=1,
                        write=False)
    assert cal.n_galaxies == len(ids) and cal.data["labels"] == str(csv)


def test_bad_calibration_input_is_one_line_and_overwrites_nothing(calibrated, tmp_path, capsys):
    run, data, _ = calibrated
    before = (run / CALIBRATION).read_bytes()
    partial = write_catalogue(tmp_path / "partial.csv", data.ids[:20], data.labels[:20], tree.columns_of([1, 2, 6]))
    cli_fails(capsys, ["calibrate", run, "--labels", partial, "--images", data.training_images, "--tta", "2"],
              "missing column(s)", "37")
    cli_fails(capsys, ["calibrate", run, "--data", data.root, "--tta", "1"], "--tta")
    cli_fails(capsys, ["calibrate", run, "--data", data.root, "--labels", partial, "--images", data.root],
              "not both")
    assert (run / CALIBRATION).read_bytes() == before


def test_calibrate_refuses_the_training_split(calibrated):
    run, data, _ = calibrated
    with pytest.raises(BadArgument, match="held-out"):
        calibrate_run(run, data.root, split="train", tta=2, progress=False)


# --------------------------------------------------------------------------------------------------------------
# The model inside gzmorph ships its calibration
# --------------------------------------------------------------------------------------------------------------

def test_the_packaged_model_ships_a_calibration_of_its_own_weights():
    from gzmorph import pretrained

    shipped = json.loads(pretrained.CALIBRATION.read_text())
    assert shipped["weights_sha256"] == pretrained.card()["sha256"] and shipped["tta"] == 8
    assert shipped["data"]["split"] == "valid" and shipped["n_galaxies"] >= 700
    assert pretrained.CALIBRATION.stat().st_size < 300_000
    cal = load_calibration("pretrained")  # read where it ships
    assert cal.weights_sha256 == shipped["weights_sha256"]
    q = cal.quantiles(0.9)
    assert np.all(np.isfinite(q)) and np.all(q > 0)


def test_a_users_calibration_of_the_packaged_model_goes_where_they_are(tmp_path, monkeypatch):
    from gzmorph import pretrained
    from gzmorph.inference.calibration import calibration_path

    monkeypatch.chdir(tmp_path)
    shipped = pretrained.CALIBRATION.read_bytes()
    values, spread, labels = heteroscedastic(30, seed=13)
    mine = fit_calibration(values, spread, labels, tta=4, weights_sha256=pretrained.card()["sha256"])
    written = save_calibration("pretrained", mine)
    assert written == Path(pretrained.NAME) / CALIBRATION and written.is_file()
    assert pretrained.CALIBRATION.read_bytes() == shipped  # the package's own file is never replaced
    assert calibration_path("pretrained") == pretrained.CALIBRATION
    assert load_calibration("pretrained").tta == 8 and load_calibration("pretrained", written).tta == 4
    assert not list((pretrained.run_folder()).glob("calibration*"))  # nothing written into the cache


def test_the_shipped_calibration_holds_on_real_test_galaxies(real_data):
    """The shipped calibration against the shipped weights on 300 test galaxies it never saw (the full 1,004 are
    measured by benchmarks/uncertainty.py): at 0.9 the coverage must be near 0.9, and a calibration that belonged to
    other weights or views would miss by far more than this sampling allows (about +-2 points)."""
    from gzmorph.inference.evaluate import predict_split

    done = predict_split("pretrained", real_data, "test", tta=8, spread=True, limit=300, progress=False, workers=1)
    cal = calibration_for("pretrained", done.loaded, 8)
    cat = done.labelled.catalogue
    for level in (0.5, 0.9):
        hit = in_interval(*intervals(cal, done.pred, done.spread, level), cat.labels)
        assert abs(hit.mean() - level) < 0.04, (level, hit.mean())


def test_the_card_records_the_shipped_calibration():
    from gzmorph import pretrained, run_layout

    entry = pretrained.card()["calibration"]
    assert entry["file"] == pretrained.CALIBRATION.name
    assert entry["sha256"] == run_layout.file_sha256(pretrained.CALIBRATION)  # the card is not stale
    assert entry["tta"] == json.loads(pretrained.CALIBRATION.read_text())["tta"]
    assert abs(entry["test_coverage"]["0.9"]["all"] - 0.9) < 0.03
