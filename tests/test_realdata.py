"""The real Kaggle data end to end: train 1 epoch on a few hundred galaxies, evaluate, predict the test images.

Runs whenever ../shared/data/galaxy-zoo exists, and always in CI (see conftest.py)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import gzmorph
from gzmorph import pretrained, tree
from gzmorph.data.catalogue import read_catalogue
from gzmorph.cli import main
from gzmorph.data.labelled import load_catalogue_splits
from gzmorph.data.layout import open_layout

pytestmark = pytest.mark.realdata


def test_real_catalogues_and_splits(real_data):
    layout = open_layout(real_data)
    full = read_catalogue(layout.solutions, require_all=True)
    assert len(full) == 7382 and full.mask.all()
    assert not tree.tree_violations(full.labels, full.mask).any()
    splits = load_catalogue_splits(layout, use_partial=True)
    assert (len(splits["valid"]), len(splits["test"])) == (723, 1004)
    assert len(splits["train"]) == 5655 + 4000  # partial galaxies join train only
    partial = splits["train"].subset(np.flatnonzero(~splits["train"].fully_labelled))
    assert len(partial) == 4000
    # The partial file has Class1, 2, 6, 7, 8 only: exactly 17 known answers per row.
    assert (partial.mask.sum(axis=1) == 17).all()


def test_real_train_evaluate_predict(real_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(real_data), "--model", "seed-cnn", "--epochs", "1", "--limit", "300",
                 "--out", str(run), "-q"]) == 0
    assert main(["evaluate", str(run), "--data", str(real_data), "--split", "test", "-q"]) == 0
    out = capsys.readouterr().out
    assert "on test (1004 galaxies)" in out
    sub = tmp_path / "submission.csv"
    assert main(["predict", str(run), str(real_data / "images_test_rev1"), "-o", str(sub), "-q"]) == 0
    with open(sub, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["GalaxyID", *tree.COLUMNS]
    images = sorted(p.stem for p in (real_data / "images_test_rev1").glob("*.jpg"))
    assert sorted(r[0] for r in rows[1:]) == images
    values = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert values.shape == (len(images), 37) and values.min() >= 0 and values.max() <= 1


def test_the_shipped_model_scores_on_the_test_split_what_its_card_says(real_data):
    """The card's headline figure is measured again, not taken on trust: the packaged file, on the real test split."""
    card = pretrained.card()
    result = gzmorph.evaluate("pretrained", real_data, "test", tta=1, write=False, progress=False)
    assert result["n_galaxies"] == card["test"]["n_galaxies"] == 1004
    # The card scored the run's float32 weights under this machine's precision policy; the file holds them in float16
    # and another CPU may run fp32: some 1e-5 apart, where another model would be 1e-3 or more.
    assert result["rmse"] == pytest.approx(card["test"]["tta1"]["rmse"], abs=5e-4)
