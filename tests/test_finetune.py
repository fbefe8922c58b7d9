"""Fine-tuning on the user's own labels (`gzmorph finetune`), `train --init`, and the model inside gzmorph."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import gzmorph
from gzmorph import pretrained, runs
from gzmorph.cli import main
from gzmorph.errors import BadData
from gzmorph.tasks import infer_task, read_labels
from helpers import cli_fails, make_fake_run, write_csv, write_kaggle_folder

FAST = ["--workers", 1, "--threads", 1, "-q"]


def gz(argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_kaggle_folder(tmp_path_factory.mktemp("ft") / "data", n=30, seed=9, test_images=4)


def write_labels(path, ids, *, kinds=("ring", "plain"), with_size=True, split=None):
    header = ["GalaxyID", "kind"] + (["size"] if with_size else []) + (["split"] if split else [])
    rows = []
    for k, gid in enumerate(ids):
        row = [int(gid), "" if k == 3 else kinds[k % len(kinds)]]  # one unknown cell
        row += [f"{10 + 3 * k:.1f}"] if with_size else []
        row += [split[k]] if split else []
        rows.append(row)
    return write_csv(path, header, rows)


def finetune_args(tmp_path, folder, labels, init, *extra):
    return ["finetune", "--labels", labels, "--images", folder.training_images, "--init", init, "--out",
            tmp_path / "ft", "--epochs", 2, "--batch-size", 8, "--cache-dir", tmp_path / "cache", *FAST, *extra]


def test_column_kinds_are_read_from_the_cells(tmp_path):
    path = write_csv(tmp_path / "l.csv", ["GalaxyID", "kind", "frac", "z", "split"],
                     [[1, "a", 0.5, 3.0, "train"], [2, "b", 1, -2.5, "valid"], [3, "a", "", "NA", "train"],
                      [4, "b", 0, 7.0, "train"]])
    task = infer_task(path)
    assert [(c.name, c.kind) for c in task.columns] == [("kind", "classes"), ("frac", "fraction"), ("z", "number")]
    assert task.output_names == ["kind=a", "kind=b", "frac", "z"]
    labels = read_labels(path, task)
    assert labels.mask.tolist()[2] == [True, True, False, False]  # empty and NA cells are unknown
    assert labels.targets[0, :2].tolist() == [1.0, 0.0] and list(labels.split) == ["train", "valid", "train", "train"]
    z = task.columns[2]
    assert labels.targets[3, 3] == pytest.approx((7.0 - z.mean) / z.std)


@pytest.mark.parametrize("header, rows, needle", [
    (["GalaxyID"], [[1], [2]], "no label column"),
    (["GalaxyID", "kind"], [[1, ""], [2, ""]], "every cell is empty"),
    (["GalaxyID", "kind"], [[1, "a"], [2, "a"], [3, "b"]], "class 'b' has one example"),
    (["GalaxyID", "kind"], [[1, "a"], [2, "a"]], "a single class"),
    (["ID", "kind"], [[1, "a"]], "no 'GalaxyID' column"),
])
def test_bad_label_files_are_one_clear_error(tmp_path, header, rows, needle):
    with pytest.raises(BadData, match=needle):
        infer_task(write_csv(tmp_path / "l.csv", header, rows))


def test_finetune_end_to_end_writes_the_users_columns(tmp_path, capsys, folder):
    init = make_fake_run(tmp_path / "init", "gznet")
    labels = write_labels(tmp_path / "labels.csv", folder.ids)
    assert gz(finetune_args(tmp_path, folder, labels, init)) == 0
    run = tmp_path / "ft"
    cfg = runs.read_config(run)
    assert cfg.model == "gznet" and cfg.task["columns"][0]["classes"] == ["plain", "ring"]
    assert [r["epoch"] for r in runs.read_metrics(run)] == [1, 2]
    out = tmp_path / "pred.csv"
    assert gz(["predict", run, folder.training_images, "-o", out, "--workers", 1, "-q"]) == 0
    rows = list(csv.DictReader(open(out, newline="")))
    assert list(rows[0]) == ["GalaxyID", "kind=plain", "kind=ring", "size"] and len(rows) == len(folder.ids)
    for r in rows:
        assert float(r["kind=plain"]) + float(r["kind=ring"]) == pytest.approx(1.0, abs=2e-6)
        assert 0 < float(r["size"]) < 200  # back in the column's own units (it holds 10 .. 97)
    cli_fails(capsys, ["evaluate", run, "--data", folder.root, "-q"], "fine-tuned", "gzmorph predict")


def test_the_head_alone_learns_first(tmp_path, folder):
    init = make_fake_run(tmp_path / "init", "gznet", seed=4)
    labels = write_labels(tmp_path / "labels.csv", folder.ids)
    assert gz(finetune_args(tmp_path, folder, labels, init, "--head-epochs", 2, "--ema", 0)) == 0
    before, after = load_file(init / runs.BEST), load_file(tmp_path / "ft" / runs.LAST)
    backbone = [k for k in after if k.startswith("backbone.")]
    assert backbone and all(torch.equal(after[k], before[k]) for k in backbone)  # BatchNorm statistics too
    assert not torch.equal(after["head.linear.bias"], torch.zeros_like(after["head.linear.bias"]))


def test_finetune_resumes_bitwise(tmp_path, folder):
    """Stopped after its head-only epoch and resumed, a fine-tuning run ends as the uninterrupted one (a constant
    schedule: a cosine one depends on the planned length, which is what --epochs changes here)."""
    init = make_fake_run(tmp_path / "init", "seed-cnn")
    labels = write_labels(tmp_path / "labels.csv", folder.ids)
    straight = tmp_path / "straight"
    steady = ["--schedule", "constant", "--head-epochs", 1]
    assert gz([*finetune_args(tmp_path, folder, labels, init, *steady), "--out", straight]) == 0
    half = tmp_path / "half"
    assert gz([*finetune_args(tmp_path, folder, labels, init, *steady, "--epochs", 1), "--out", half]) == 0
    cfg = json.loads((half / runs.CONFIG).read_text())["train"]
    assert cfg["epochs"] == 1
    assert gz(["finetune", "--resume", half, "--epochs", 2, "-q"]) == 0
    a, b = load_file(straight / runs.LAST), load_file(half / runs.LAST)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_bad_input_is_one_clear_error(tmp_path, capsys, folder):
    init = make_fake_run(tmp_path / "init", "gznet")
    labels = write_labels(tmp_path / "labels.csv", [*folder.ids[:20], 999999])
    cli_fails(capsys, finetune_args(tmp_path, folder, labels, init), "have no image", "--skip-bad")
    assert not (tmp_path / "ft" / runs.CHECKPOINT).exists()
    labels = write_labels(tmp_path / "labels.csv", folder.ids)
    cli_fails(capsys, finetune_args(tmp_path, folder, labels, tmp_path / "nowhere"), "not a gzmorph run folder")
    cli_fails(capsys, finetune_args(tmp_path, folder, labels, init, "--column", "colour"), "no column 'colour'")
    cli_fails(capsys, ["finetune", "--labels", labels, "--out", tmp_path / "x"], "--images")


def test_train_init_starts_from_the_other_runs_weights(tmp_path, folder):
    init = make_fake_run(tmp_path / "init", "seed-cnn", seed=5)
    assert gz(["train", "--data", folder.root, "--init", init, "--out", tmp_path / "run", "--epochs", 1, "--lr",
               "1e-12", "--ema", 0, "--batch-size", 8, *FAST]) == 0
    before, after = load_file(init / runs.BEST), load_file(tmp_path / "run" / runs.LAST)
    weights = [k for k in after if k.endswith("weight") and "bn" not in k]
    assert all(torch.allclose(after[k], before[k], atol=1e-8) for k in weights)
    assert runs.read_config(tmp_path / "run").model == "seed-cnn"


# ------------------------------------------------------------------------------------------------------------------
# The model inside gzmorph
# ------------------------------------------------------------------------------------------------------------------

@pytest.fixture
def packaged(tmp_path, monkeypatch, folder):
    """A package folder of its own, made by `pretrained.package` from a short run (the shipped file is tested in
    test_the_shipped_model_matches_its_card)."""
    monkeypatch.setattr(pretrained, "WEIGHTS", tmp_path / "pkg" / "m.safetensors")
    monkeypatch.setattr(pretrained, "CARD", tmp_path / "pkg" / "m.json")
    (tmp_path / "pkg").mkdir()
    run = gzmorph.train(gzmorph.TrainConfig(data=str(folder.root), out=str(tmp_path / "src"), model="seed-cnn",
                                            epochs=1, batch_size=8, threads=1, workers=1, train_on_valid=True),
                        progress=False)
    return pretrained.package(run, folder.root, train_seconds=1.0, machine={}, command="test")


def test_a_packaged_model_is_used_where_no_run_is_given(tmp_path, packaged, folder):
    assert packaged["bytes"] < 2 * 532_331 * 2  # float16
    assert set(packaged["test"]) >= {"tta1", "tta8", "baseline"}
    out = tmp_path / "p.csv"
    assert gz(["predict", folder.test_images, "-o", out, "--workers", 1, "-q"]) == 0
    assert len(out.read_text().splitlines()) == 1 + len(folder.test_ids)
    loaded = gzmorph.load_model()
    assert loaded.config.model == "seed-cnn" and loaded.sha256 == runs.file_sha256(loaded.weights)
    assert json.loads(open(f"{out}.json").read())["run"] == str(runs.run_folder(None))


def test_a_damaged_packaged_file_is_refused(packaged, capsys, folder):
    data = bytearray(pretrained.WEIGHTS.read_bytes())
    data[-1] ^= 1
    pretrained.WEIGHTS.write_bytes(bytes(data))
    cli_fails(capsys, ["predict", folder.test_images, "-o", "x.csv", "-q"], "SHA-256", "reinstall")


def test_the_shipped_model_matches_its_card():
    info = pretrained.card()
    assert runs.file_sha256(pretrained.WEIGHTS) == info["sha256"]
    assert pretrained.WEIGHTS.stat().st_size <= 20 * 2**20
    assert info["test"]["tta8"]["rmse"] < info["test"]["baseline"]["rmse"]
    loaded = gzmorph.load_model("pretrained", precision="fp32")
    tensors = load_file(pretrained.WEIGHTS)
    assert all(t.dtype in (torch.float16, torch.int64) for t in tensors.values())
    assert np.isfinite(next(iter(loaded.model.parameters())).detach().numpy()).all()
