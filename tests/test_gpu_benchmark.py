"""benchmarks/gpu.py runs once, on a borrowed GPU with minutes to spare: here it runs on the CPU with --quick, on a
tiny folder shaped like the sample that travels to the GPU (141 px JPEGs), so that it cannot fail there on a typo.
The compile stage is left out (inductor takes a minute on the CPU); it catches its own failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_kaggle_folder

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(tmp_path: Path, data: Path, *extra: str) -> dict:
    results = tmp_path / "results"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--quick", "--device", "cpu", "--data",
                    str(data), "--results", str(results), *extra], check=True, capture_output=True, text=True)
    (out,) = results.glob("gpu-*.json")
    return json.loads(out.read_text())


def test_every_stage_runs_and_reports(tmp_path):
    data = write_kaggle_folder(tmp_path / "data", n=60, seed=3, partial_rows=8, image_size=141).root
    r = _run(tmp_path, data, "--stages", "model", "train", "predict", "batch64")
    stages = r["stages"]
    assert set(stages) == {"model", "train", "predict", "batch64"}
    steps = stages["model"]["train_steps"]
    assert {(s["batch_size"], s["augment"]) for s in steps} == {(64, False), (64, True)}  # the CPU recipe's batch
    assert all(s["img_per_s"] > 0 for s in steps) and stages["model"]["forward"]["img_per_s"] > 0
    train = stages["train"]
    # the train split (36 full + 8 partial galaxies) cut to --quick's limit of 24
    assert train["train_images"] == 24 and train["epochs"] == 2
    assert train["epoch_seconds"] >= train["train_seconds"] > 0 and 0 <= train["non_training_share"] < 1
    assert set(train["test"]) == {"tta1", "tta8"} and all(0 < v < 1 for v in train["test"].values())
    predict = stages["predict"]
    assert predict["images"] == 300 and predict["image_side"] == 424
    assert predict["predict"]["img_per_s"] > 0 and predict["embed"]["img_per_s"] > 0
    assert predict["gpu_jpeg_decode"] == {"skipped": "not a CUDA device"}
    assert predict["ring_opened"] is True  # the decode floor went through shared memory, as predict does
    batch64 = stages["batch64"]
    assert (batch64["batch_size"], batch64["lr"], batch64["warmup_epochs"]) == (64, 2e-3, 1)
    # batch 64 is the CPU recipe itself here, so the "large-batch" run and it are the same training: same scores
    assert train["batch_size"] == 64 and train["epochs"] == batch64["epochs"]
    assert batch64["recipe_minus_batch64"] == {"tta1": 0.0, "tta8": 0.0}


def test_stages_that_do_not_fit_the_time_are_skipped(tmp_path):
    data = write_kaggle_folder(tmp_path / "data", n=12, seed=4, image_size=141).root
    r = _run(tmp_path, data, "--minutes", "0", "--stages", "model", "compile")
    assert set(r["stages"]) == {"model", "compile"}
    assert all("skipped" in s for s in r["stages"].values())


def test_a_failing_stage_is_recorded_and_the_next_one_still_runs(tmp_path):
    r = _run(tmp_path, tmp_path / "no-such-folder", "--stages", "train", "model")
    train, model = r["stages"]["train"], r["stages"]["model"]
    assert "no-such-folder" in train["failed"] and train["where"]
    assert model["forward"]["img_per_s"] > 0
