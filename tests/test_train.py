"""Training, resuming, evaluating, predicting and plotting on the synthetic set (the same code paths as real data)."""

from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest
from safetensors.torch import load_file

import gzmorph
from gzmorph import runs, tree
from gzmorph.cli import main
from gzmorph.errors import GzmorphError


def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), model="seed-cnn", epochs=1, limit=48, batch_size=16, threads=2,
                workers=1)
    base.update(kw)
    return gzmorph.TrainConfig(**base)


def test_resume_is_bitwise_identical(synthetic_data, tmp_path):
    straight = gzmorph.train(_cfg(synthetic_data, tmp_path / "a", epochs=2, augment="report"), progress=False)
    half = gzmorph.train(_cfg(synthetic_data, tmp_path / "b", epochs=1, augment="report"), progress=False)
    gzmorph.train(gzmorph.TrainConfig(data="", out=str(half), epochs=2), resume=True, progress=False)
    wa, wb = load_file(straight / runs.LAST), load_file(half / runs.LAST)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] == wb[k]).all(), k
    assert runs.read_metrics(straight)[1]["valid_rmse"] == runs.read_metrics(half)[1]["valid_rmse"]
    assert len(runs.read_metrics(half)) == 2


def test_existing_run_needs_resume(synthetic_data, tmp_path):
    gzmorph.train(_cfg(synthetic_data, tmp_path / "r"), progress=False)
    with pytest.raises(GzmorphError, match="--resume"):
        gzmorph.train(_cfg(synthetic_data, tmp_path / "r"), progress=False)


def test_nan_loss_stops_with_message(synthetic_data, tmp_path, monkeypatch):
    import torch

    from gzmorph import training as train_module

    monkeypatch.setattr(train_module, "masked_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(GzmorphError, match="diverged"):
        gzmorph.train(_cfg(synthetic_data, tmp_path / "nan"), progress=False)
    assert not (tmp_path / "nan" / runs.LAST).exists()  # no broken model written


def test_model_files_never_unpickle(synthetic_data, tmp_path):
    run = gzmorph.train(_cfg(synthetic_data, tmp_path / "r"), progress=False)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (run / runs.BEST).write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(GzmorphError, match="not a safetensors file"):
        gzmorph.load_model(run)
    assert not marker.exists()


def test_cli_end_to_end(synthetic_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(synthetic_data), "--model", "seed-cnn", "--epochs", "2", "--limit", "64",
                 "--batch-size", "16", "--loss", "mse", "--head", "tree", "--out", str(run), "-q",
                 "--workers", "1"]) == 0
    metrics = runs.read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(np.isfinite(m[k]) for m in metrics for k in ("train_loss", "train_rmse", "valid_rmse"))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["loss"] == "mse" and cfg["train"]["head"] == "tree" and cfg["gzmorph_version"]

    assert main(["evaluate", str(run), "--data", str(synthetic_data), "--split", "valid", "-q"]) == 0
    result = json.loads((run / "eval-valid.json").read_text())
    assert set(result["per_question"]) == {f"Q{i}" for i in range(1, 12)}
    assert 0 < result["rmse"] < 1 and 0 < result["baseline"]["rmse"] < 1
    assert result["tree_violations"] == 0  # the tree head always satisfies the sums

    sub = tmp_path / "sub.csv"
    assert main(["predict", str(run), str(synthetic_data / "images_test_rev1"), "-o", str(sub), "-q"]) == 0
    rows = list(csv.reader(open(sub, newline="")))
    assert rows[0] == ["GalaxyID", *tree.COLUMNS] and len(rows) == 1 + 24
    meta = json.loads((tmp_path / "sub.csv.json").read_text())
    assert meta["weights_sha256"] == runs.file_sha256(run / runs.BEST) and meta["gzmorph_version"]

    assert main(["plot", str(run)]) == 0
    for name in ("learning_curves.png", "rmse_per_question_valid.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()


def test_predict_skip_bad_counts_and_lists(synthetic_data, tmp_path):
    run = gzmorph.train(_cfg(synthetic_data, tmp_path / "r"), progress=False)
    images = tmp_path / "imgs"
    images.mkdir()
    good = sorted((synthetic_data / "images_test_rev1").glob("*.jpg"))[:5]
    for p in good:
        (images / p.name).write_bytes(p.read_bytes())
    (images / "999999.jpg").write_bytes(good[0].read_bytes()[:300])  # truncated JPEG
    (images / "999998.jpg").write_bytes(b"")
    with pytest.raises(GzmorphError, match="skip-bad"):
        gzmorph.predict(run, images, tmp_path / "s.csv", progress=False, workers=1)
    assert not (tmp_path / "s.csv").exists()  # nothing half-written
    s = gzmorph.predict(run, images, tmp_path / "s.csv", progress=False, skip_bad=True, workers=2, batch_size=2)
    assert s.n_predicted == 5 and len(s.skipped) == 2
    meta = json.loads((tmp_path / "s.csv.json").read_text())
    assert meta["n_skipped"] == 2 and {p["path"].rsplit("/", 1)[1] for p in meta["skipped"]} == {"999999.jpg",
                                                                                                  "999998.jpg"}
    assert len(list(csv.reader(open(tmp_path / "s.csv")))) == 6


def test_api_names_stay_functions_after_every_module_is_imported():
    import importlib
    import pkgutil

    for mod in pkgutil.walk_packages(gzmorph.__path__, "gzmorph."):
        importlib.import_module(mod.name)
    for name in ("train", "evaluate", "predict", "plot", "load_model", "synth"):
        assert callable(getattr(gzmorph, name)), name
