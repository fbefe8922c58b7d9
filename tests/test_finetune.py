"""Fine-tuning on the user's own labels (`gzmorph finetune`), `train --init`, and the model inside gzmorph."""

from __future__ import annotations

import csv
import json
import logging
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import gzmorph
from gzmorph import pretrained, runs
from gzmorph.pretrained.package import package
from gzmorph.cli import main
from gzmorph.errors import BadData
from gzmorph.data.splits import random_split
from gzmorph.tasks import Column, Task, infer_task, read_labels
from helpers import cli_fails, make_fake_run, write_csv, write_kaggle_folder

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]

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


def test_predicted_classes_names_the_most_probable_class_of_each_column():
    task = Task((Column("kind", "classes", ("plain", "ring")), Column("size", "number", (), 50.0, 10.0),
                 Column("shape", "classes", ("bar", "disc", "odd"))))
    values = np.array([[0.9, 0.1, 42.0, 0.2, 0.5, 0.3],
                       [0.3, 0.7, 61.0, 0.1, 0.1, 0.8]])
    assert task.predicted_classes(values) == {"kind": ["plain", "ring"], "shape": ["disc", "odd"]}
    with pytest.raises(ValueError, match="6"):
        task.predicted_classes(values[:, :5])


def test_the_loss_is_named_by_the_task():
    kind, frac = Column("kind", "classes", ("a", "b")), Column("f", "fraction")
    assert Task((kind,)).loss_name() == "cross-entropy"
    assert Task((kind, frac)).loss_name("bce") == "cross-entropy + bce"
    assert Task((frac, Column("z", "number"))).loss_name("mse") == "mse"


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
    # (predict may add columns after these, e.g. the predicted class)
    assert list(rows[0])[:4] == ["GalaxyID", "kind=plain", "kind=ring", "size"] and len(rows) == len(folder.ids)
    for r in rows:
        assert float(r["kind=plain"]) + float(r["kind=ring"]) == pytest.approx(1.0, abs=2e-6)
        assert 0 < float(r["size"]) < 200  # back in the column's own units (it holds 10 .. 97)
    for argv in (["evaluate", run, "--data", folder.root, "-q"], ["evaluate", run, "-q"]):
        cli_fails(capsys, argv, "fine-tuned", f"gzmorph evaluate {run} --labels FILE.csv --images DIR", "kind, size")


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


def test_a_column_of_one_class_stops_before_training(tmp_path, capsys, folder):
    init = make_fake_run(tmp_path / "init", "gznet")
    one_class = write_labels(tmp_path / "one.csv", folder.ids, kinds=("ring",), with_size=False)
    cli_fails(capsys, finetune_args(tmp_path, folder, one_class, init), "column kind", "a single class ('ring')")
    flag = write_csv(tmp_path / "flag.csv", ["GalaxyID", "is_ring"], [[int(i), 1] for i in folder.ids])
    cli_fails(capsys, finetune_args(tmp_path, folder, flag, init), "column is_ring", "every value is 1")
    assert not (tmp_path / "ft" / runs.CONFIG).exists()


def test_a_class_with_no_training_galaxy_stops_before_training(tmp_path, capsys, folder):
    init = make_fake_run(tmp_path / "init", "gznet")
    n = len(folder.ids)  # every "merger" is held out by the split column, so none could be learnt
    kinds = ["merger" if k < 3 else ("ring", "plain")[k % 2] for k in range(n)]
    split = ["valid" if k < 5 else "train" for k in range(n)]
    labels = write_csv(tmp_path / "l.csv", ["GalaxyID", "kind", "split"],
                       [[int(i), c, s] for i, c, s in zip(folder.ids, kinds, split)])
    cli_fails(capsys, finetune_args(tmp_path, folder, labels, init), "class 'merger'", "no galaxy in the train split")
    assert not (tmp_path / "ft" / runs.CHECKPOINT).exists()


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, folder):
    """One short fine-tuning run that cannot learn anything, with its log: every galaxy has the same image, so the
    model answers every galaxy alike (one class for all: balanced accuracy 1/2, AUC 1/2), and every held-out size
    is the train mean (50), which no other constant answer beats."""
    tmp = tmp_path_factory.mktemp("tuned")
    init = make_fake_run(tmp / "init", "gznet")
    images = tmp / "same"
    images.mkdir()
    for gid in folder.ids:
        (images / f"{gid}.jpg").write_bytes(folder.image(folder.ids[0]).read_bytes())
    names = random_split(len(folder.ids), 0.3, 0)  # the seeded split the run draws (seed 0)
    rows, spread = [], iter([40.0, 60.0] * len(folder.ids))
    for k, (gid, split) in enumerate(zip(folder.ids, names)):
        size = 50.0 if split == "valid" or k == 0 else next(spread)  # 21 train galaxies: 50, then 40, 60, 40, ...
        rows.append([int(gid), "" if k == 3 else ("ring", "plain")[k % 2], size])
    assert sum(n == "train" for n in names) % 2 == 1 and names[0] == "train"
    labels = write_csv(tmp / "labels.csv", ["GalaxyID", "kind", "size"], rows)
    messages = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("gzmorph")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        args = finetune_args(tmp, folder, labels, init, "--valid-fraction", 0.3, "--precision", "fp32")
        args[args.index("--images") + 1] = images
        assert gz(args) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return SimpleNamespace(run=tmp / "ft", labels=labels, log="\n".join(messages), tmp=tmp, images=images,
                           valid_ids=[int(i) for i, s in zip(folder.ids, names) if s == "valid"])


def test_finetune_says_what_it_holds_out_and_the_class_balance(tuned, folder):
    rows = list(csv.DictReader(open(tuned.labels, newline="")))
    valid = [r for r in rows if int(r["GalaxyID"]) in tuned.valid_ids]
    assert f"{len(valid)} of {len(rows)} galaxies held out for validation" in tuned.log
    count = lambda rs, c: sum(r["kind"] == c for r in rs)  # noqa: E731
    train = [r for r in rows if r not in valid]
    assert (f"class balance of kind: train plain {count(train, 'plain')}, ring {count(train, 'ring')}; "
            f"valid plain {count(valid, 'plain')}, ring {count(valid, 'ring')}") in tuned.log


def test_finetune_names_its_loss_and_scores_every_epoch(tuned):
    epochs = [line for line in tuned.log.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2
    for line in epochs:
        assert "train cross-entropy + mse" in line and "valid cross-entropy + mse" in line
        assert "kind: accuracy" in line and "AUC" in line and "size: RMSE" in line and "train RMSE" not in line
    history = runs.read_metrics(tuned.run)
    for key in ("valid_kind_accuracy", "valid_kind_balanced_accuracy", "valid_kind_auc", "valid_kind_log_loss",
                "valid_size_rmse", "valid_size_mae", "valid_size_r2", "valid_size_baseline_rmse"):
        assert all(key in row for row in history), key
    assert all(0 <= row["valid_kind_auc"] <= 1 for row in history)


def test_finetune_writes_the_held_out_report_and_warns_when_nothing_was_learnt(tuned):
    report = json.loads((tuned.run / "eval-valid.json").read_text())
    assert report["held_out"] and report["loss"] == "cross-entropy + mse"
    kind, size = report["columns"]["kind"], report["columns"]["size"]
    assert sum(map(sum, kind["confusion_matrix"])) == kind["n"] == sum(kind["counts"].values())
    assert [sum(row) for row in kind["confusion_matrix"]] == [kind["counts"]["plain"], kind["counts"]["ring"]]
    assert size["n"] == len(tuned.valid_ids) and size["baseline"]["rmse"] == pytest.approx(0, abs=1e-4)
    assert not size["learnt"] and not kind["learnt"] and kind["auc"] == 0.5 and kind["balanced_accuracy"] == 0.5
    assert "WARNING: size: RMSE" in tuned.log and "no better than predicting the train mean" in tuned.log
    assert "WARNING: kind: balanced accuracy 0.500 is no better than always answering the majority class" in tuned.log
    assert "confusion (rows: true, columns: predicted)" in tuned.log


def test_evaluate_scores_a_finetuned_run_on_new_labels(tuned, capsys, folder):
    rows = {int(r["GalaxyID"]): r for r in csv.DictReader(open(tuned.labels, newline=""))}
    held_out = write_csv(tuned.tmp / "held_out.csv", ["GalaxyID", "kind", "size"],
                         [[i, rows[i]["kind"], rows[i]["size"]] for i in tuned.valid_ids])
    assert gz(["evaluate", tuned.run, "--labels", held_out, "--images", tuned.images, "--precision", "fp32",
               "--workers", 1, "-q"]) == 0
    out = capsys.readouterr().out
    written = tuned.run / "eval-labels-held_out.json"
    assert f"wrote {written}" in out and "balanced accuracy" in out and "confusion" in out
    mine, training = json.loads(written.read_text())["columns"], json.loads((tuned.run / "eval-valid.json").read_text())
    # the same galaxies and weights: the same scores as the run's own held-out report
    for column, key in (("kind", "accuracy"), ("kind", "auc"), ("size", "rmse"), ("size", "mae")):
        assert mine[column][key] == pytest.approx(training["columns"][column][key], abs=1e-4)
    cli_fails(capsys, ["evaluate", tuned.run, "--labels", held_out, "-q"], "--labels FILE.csv", "--images DIR")


def test_plot_draws_a_classifiers_roc_and_confusion_and_names_the_loss(tuned, monkeypatch, tmp_path):
    import matplotlib.axes

    labels = []
    original = matplotlib.axes.Axes.set_ylabel
    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel",
                        lambda ax, text, *a, **k: (labels.append(text), original(ax, text, *a, **k))[1])
    assert gz(["plot", tuned.run, "--out", tmp_path, "-q"]) == 0
    for name in ("learning_curves.png", "roc_kind_valid.png", "confusion_kind_valid.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert "cross-entropy + mse loss" in labels and "RMSE" not in labels


def test_evaluate_says_which_inputs_each_kind_of_run_takes(tmp_path, capsys, folder):
    tree_run = make_fake_run(tmp_path / "tree", "seed-cnn")
    cli_fails(capsys, ["evaluate", tree_run, "-q"], "--data DIR", "--labels FILE.csv --images DIR")
    labels = write_labels(tmp_path / "l.csv", folder.ids)
    cli_fails(capsys, ["evaluate", tree_run, "--labels", labels, "--images", folder.training_images, "-q"],
              "37 Galaxy Zoo questions", "--data DIR")


def test_finetune_help_lists_only_the_flags_of_fine_tuning(capsys):
    def flags(command):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        return set(re.findall(r"(?<![\w-])--[a-z][\w-]*", capsys.readouterr().out))

    train_only = {"--data", "--model", "--head", "--option", "--pretrained", "--mask-question", "--no-partial"}
    finetune, train = flags("finetune"), flags("train")
    assert not finetune & train_only and train_only <= train
    assert {"--labels", "--images", "--column", "--init", "--head-epochs", "--loss", "--epochs"} <= finetune


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
    return package(run, folder.root, train_seconds=1.0, machine={}, command="test")


def test_a_packaged_model_is_used_where_no_run_is_given(tmp_path, packaged, folder):
    assert packaged["bytes"] < 2 * 532_331 * 2  # float16
    assert set(packaged["test"]) >= {"tta1", "tta8", "baseline"}
    out = tmp_path / "p.csv"
    assert gz(["predict", folder.test_images, "-o", out, "--workers", 1, "-q"]) == 0
    assert len(out.read_text().splitlines()) == 1 + len(folder.test_ids)
    loaded = gzmorph.load_model()
    assert loaded.config.model == "seed-cnn" and loaded.sha256 == runs.file_sha256(loaded.weights)
    assert json.loads(open(f"{out}.json").read())["run"] == "pretrained"  # not the cache folder it runs from


def test_a_damaged_packaged_file_is_refused(packaged, capsys, folder):
    data = bytearray(pretrained.WEIGHTS.read_bytes())
    data[-1] ^= 1
    pretrained.WEIGHTS.write_bytes(bytes(data))
    cli_fails(capsys, ["predict", folder.test_images, "-o", "x.csv", "-q"], "SHA-256", "reinstall")


def test_a_run_trained_on_a_device_comes_back_small_and_packages_with_its_base(tmp_path, monkeypatch, folder):
    """benchmarks/pretrained.py on a GPU exports the run with float16 weights (a device returns files of at most
    16 MiB); packaged here, the card records the base it continued from and not the device's path to it."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from pretrained import MADE_BY, export

    monkeypatch.setattr(pretrained, "WEIGHTS", tmp_path / "pkg" / "m.safetensors")
    monkeypatch.setattr(pretrained, "CARD", tmp_path / "pkg" / "m.json")
    (tmp_path / "pkg").mkdir()
    common = dict(data=str(folder.root), model="seed-cnn", batch_size=8, threads=1, workers=1, train_on_valid=True)
    base = gzmorph.train(gzmorph.TrainConfig(out=str(tmp_path / "base"), epochs=1, **common), progress=False)
    run = gzmorph.train(gzmorph.TrainConfig(out=str(tmp_path / "run"), epochs=1, lr=1e-4, init=str(base), **common),
                        progress=False)
    started_from = {"run": str(base), "history": runs.read_metrics(base), "train_minutes": 2.0}
    (run / MADE_BY).write_text(json.dumps({"command": "c", "machine": {"gpu": "x"}, "started_from": started_from}))
    export(run, tmp_path / "out" / "run")
    back = tmp_path / "out" / "run"
    assert {p.name for p in back.iterdir()} == {"config.json", "metrics.csv", "train_mean.json", "model.safetensors",
                                                MADE_BY}
    assert {t.dtype for t in load_file(back / "model.safetensors").values()} <= {torch.float16, torch.int64}
    card = package(back, folder.root, train_seconds=60.0, machine={"gpu": "x"}, command="c",
                   started_from=started_from)
    assert card["config"]["init"] is None and card["started_from"]["run"] == str(base)
    assert card["total_train_minutes"] == pytest.approx(3.0)
    # the packaged file scores what the run's own float16 weights score
    assert card["test"]["tta1"]["rmse"] == pytest.approx(
        gzmorph.evaluate(back, folder.root, "test", which="last", write=False, progress=False)["rmse"])


def test_the_shipped_model_matches_its_card():
    info = pretrained.card()
    assert runs.file_sha256(pretrained.WEIGHTS) == info["sha256"]
    assert pretrained.WEIGHTS.stat().st_size <= 20 * 2**20
    assert info["test"]["tta8"]["rmse"] < info["test"]["baseline"]["rmse"]
    loaded = gzmorph.load_model("pretrained", precision="fp32")
    tensors = load_file(pretrained.WEIGHTS)
    assert all(t.dtype in (torch.float16, torch.int64) for t in tensors.values())
    assert np.isfinite(next(iter(loaded.model.parameters())).detach().numpy()).all()


def test_evaluate_and_plot_of_the_packaged_model_write_where_the_user_is(tmp_path, packaged, folder, capsys,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache_run = runs.run_folder(None)
    before = sorted(p.name for p in cache_run.iterdir())
    assert gz(["evaluate", "--data", folder.root, "--split", "valid", "--workers", 1, "-q"]) == 0
    assert "wrote gznet-gz2/eval-valid.json" in capsys.readouterr().out
    assert gz(["plot", "-q"]) == 0
    printed = capsys.readouterr().out
    for name in ("learning_curves.png", "rmse_per_question_valid.png"):  # the evaluation is found beside it
        assert (tmp_path / "gznet-gz2" / name).is_file() and f"wrote gznet-gz2/{name}" in printed
    assert gz(["plot", "--gallery", "--data", folder.root, "--n", 4, "-q"]) == 0
    assert (tmp_path / "gznet-gz2" / "gallery_valid.png").is_file()
    assert sorted(p.name for p in cache_run.iterdir()) == before  # nothing written into the cache
    assert gz(["evaluate", "pretrained", "--data", folder.root, "--split", "valid", "--out", tmp_path / "mine",
               "--workers", 1, "-q"]) == 0
    assert (tmp_path / "mine" / "eval-valid.json").is_file()
