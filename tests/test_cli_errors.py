"""User errors through the command line: exit status 2 and one helpful 'gzmorph: error:' line, never a traceback.

Every case here fails before any training starts, so the whole file takes seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gzmorph import tree
from gzmorph.cli import main

from helpers import cli_fails as fails, make_fake_run, tree_labels, write_catalogue, write_image


@pytest.fixture
def data(kaggle):
    return kaggle


@pytest.fixture
def fake_run(tmp_path):
    return make_fake_run(tmp_path / "run")


def train_args(tmp_path, data_dir, *extra) -> list:
    return ["train", "--data", data_dir, "--out", tmp_path / "out", "--limit", 4, "--epochs", 1, "-q",
            "--cache-dir", tmp_path / "cache", "--workers", 1, "--threads", 1, *extra]


# ------------------------------------------------------------------------------------------------------------------
# train: bad data folders
# ------------------------------------------------------------------------------------------------------------------

def test_train_data_folder_missing(tmp_path, capsys):
    fails(capsys, train_args(tmp_path, tmp_path / "nowhere"), str(tmp_path / "nowhere"), "not found",
          "Kaggle layout")


def test_train_without_solutions_csv(tmp_path, capsys, data):
    data.solutions.unlink()
    fails(capsys, train_args(tmp_path, data.root), "training_solutions_rev1.csv", "missing")


def test_train_without_images_folder(tmp_path, capsys, data):
    shutil.rmtree(data.training_images)
    fails(capsys, train_args(tmp_path, data.root), "images_training_rev1")


def test_train_csv_without_galaxy_id(tmp_path, capsys, data):
    text = data.solutions.read_text()
    data.solutions.write_text(text.replace("GalaxyID", "ObjectID", 1))
    fails(capsys, train_args(tmp_path, data.root), "training_solutions_rev1.csv", "GalaxyID")


def test_train_wrong_column_names(tmp_path, capsys, data):
    text = data.solutions.read_text()
    data.solutions.write_text(text.replace("Class1.1,", "class1.1,", 1).replace("Class11.6", "Class12.1", 1))
    fails(capsys, train_args(tmp_path, data.root), "unknown column", "class1.1", "Class12.1")


def test_train_csv_missing_columns(tmp_path, capsys, data):
    write_catalogue(data.solutions, data.ids, data.labels, tree.COLUMNS[:-2])
    fails(capsys, train_args(tmp_path, data.root), "missing column", "Class11.5", "Class11.6")


def test_train_values_outside_range(tmp_path, capsys, data):
    labels = data.labels.copy()
    labels[4, tree.COLUMN_INDEX["Class6.2"]] = 1.7
    write_catalogue(data.solutions, data.ids, labels)
    fails(capsys, train_args(tmp_path, data.root), "line 6", "Class6.2", "outside [0, 1]")


def test_train_rows_breaking_the_tree(tmp_path, capsys, data):
    labels = data.labels.copy()
    labels[0, tree.COLUMN_INDEX["Class1.1"]] = 0.0
    write_catalogue(data.solutions, data.ids, labels)
    fails(capsys, train_args(tmp_path, data.root), "line 2", f"GalaxyID {data.ids[0]}", "tree sums")


def test_train_row_whose_image_is_missing(tmp_path, capsys, data):
    gid = data.ids_of("train")[0]
    data.image(gid).unlink()
    fails(capsys, train_args(tmp_path, data.root, "--limit", 1000), f"{gid}.jpg", "--skip-bad")


def test_train_unreadable_image(tmp_path, capsys, data):
    gid = data.ids_of("valid")[0]
    data.image(gid).write_text("not a JPEG")
    fails(capsys, train_args(tmp_path, data.root, "--limit", 1000), f"{gid}.jpg", "--skip-bad", "decoded")


def test_train_bad_splits_csv(tmp_path, capsys, data):
    (data.root / "splits.csv").write_text("GalaxyID,split\n" + f"{data.ids[0]},holdout\n")
    fails(capsys, train_args(tmp_path, data.root), "splits.csv", "holdout")


# ------------------------------------------------------------------------------------------------------------------
# train: bad options
# ------------------------------------------------------------------------------------------------------------------

def test_train_without_data(tmp_path, capsys):
    fails(capsys, ["train", "--out", tmp_path / "out", "-q"], "--data", "--resume")


def test_train_unknown_model(tmp_path, capsys, data):
    fails(capsys, train_args(tmp_path, data.root, "--model", "resnet-9000"), "unknown model 'resnet-9000'",
          "seed-cnn")


@pytest.mark.parametrize("lr", ["0", "-0.001"])
def test_train_non_positive_lr(tmp_path, capsys, data, lr):
    fails(capsys, train_args(tmp_path, data.root, "--lr", lr), "--lr must be positive")


@pytest.mark.parametrize("option", ["--epochs", "--batch-size"])
def test_train_zero_epochs_or_batch(tmp_path, capsys, data, option):
    fails(capsys, train_args(tmp_path, data.root, option, 0), f"{option} must be at least 1")


def test_train_zero_limit(tmp_path, capsys, data):
    fails(capsys, train_args(tmp_path, data.root, "--limit", 0), "--limit must be at least 1")


def test_train_bad_valid_fraction(tmp_path, capsys, data):
    (data.root / "splits.csv").unlink()
    fails(capsys, train_args(tmp_path, data.root, "--valid-fraction", 1.5), "--valid-fraction")


def test_train_option_the_model_does_not_take(tmp_path, capsys, data):
    fails(capsys, train_args(tmp_path, data.root, "--freeze-layers", 3), "does not take", "freeze_layers")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_train_cuda_without_gpu(tmp_path, capsys, data):
    fails(capsys, train_args(tmp_path, data.root, "--device", "cuda"), "no CUDA GPU", "--device cpu")


def test_train_over_an_existing_run(tmp_path, capsys, data):
    run = make_fake_run(tmp_path / "out")
    (run / "checkpoint.safetensors").write_bytes(b"")
    fails(capsys, train_args(tmp_path, data.root), "already holds a trained run", "--resume")


def test_train_output_under_a_file(tmp_path, capsys, data):
    (tmp_path / "blocker").write_text("a file")
    args = train_args(tmp_path, data.root)
    args[args.index("--out") + 1] = tmp_path / "blocker" / "run"
    fails(capsys, args, "cannot write to", "blocker")


def test_resume_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    fails(capsys, ["train", "--resume", tmp_path / "empty", "-q"], "not a gzmorph run folder")


def test_resume_run_with_nothing_to_resume(tmp_path, capsys, fake_run):
    fails(capsys, ["train", "--resume", fake_run, "-q"], "nothing to resume", "without --resume")


def test_resume_damaged_checkpoint(tmp_path, capsys, fake_run, data):
    (fake_run / "checkpoint.safetensors").write_bytes(b"\x80\x04 a pickle, not safetensors")
    cfg = (fake_run / "config.json").read_text().replace('"data": ""', f'"data": "{data.root}"')
    (fake_run / "config.json").write_text(cfg.replace('"cache_dir": null', f'"cache_dir": "{tmp_path / "c"}"')
                                          .replace('"limit": null', '"limit": 4')
                                          .replace('"workers": null', '"workers": 1'))
    fails(capsys, ["train", "--resume", fake_run, "-q"], "checkpoint.safetensors", "not a safetensors file")


# ------------------------------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------------------------------

def test_evaluate_folder_that_is_not_a_run(tmp_path, capsys, data):
    (tmp_path / "notrun").mkdir()
    fails(capsys, ["evaluate", tmp_path / "notrun", "--data", data.root, "-q", "--cache-dir", tmp_path / "c"],
          "not a gzmorph run folder", "config.json")


def test_evaluate_run_without_weights(tmp_path, capsys, data, fake_run):
    (fake_run / "best.safetensors").unlink()
    (fake_run / "model.safetensors").unlink()
    fails(capsys, ["evaluate", fake_run, "--data", data.root, "-q", "--cache-dir", tmp_path / "c"],
          "model.safetensors", "not found")


def test_evaluate_test_split_without_splits_csv(tmp_path, capsys, data, fake_run):
    (data.root / "splits.csv").unlink()
    fails(capsys, ["evaluate", fake_run, "--data", data.root, "--split", "test", "-q", "--workers", 1,
                   "--cache-dir", tmp_path / "c"], "test split is empty", "splits.csv")


# ------------------------------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------------------------------

def test_predict_into_missing_output_folder_makes_it(tmp_path, capsys, fake_run, data):
    out = tmp_path / "no" / "such" / "sub.csv"
    assert main(["predict", str(fake_run), str(data.training_images), "-o", str(out), "-q", "--workers", "1"]) == 0
    assert out.is_file() and Path(f"{out}.json").is_file()


def test_predict_under_a_file_is_one_line(tmp_path, capsys, fake_run, data):
    (tmp_path / "file").write_text("")
    fails(capsys, ["predict", fake_run, data.training_images, "-o", tmp_path / "file" / "sub.csv", "-q",
                   "--workers", 1], str(tmp_path / "file"), "is not a folder")


def test_predict_on_an_empty_folder(tmp_path, capsys, fake_run):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    fails(capsys, ["predict", fake_run, tmp_path / "empty", "-o", tmp_path / "sub.csv", "-q", "--workers", 1],
          "no images")
    assert not (tmp_path / "sub.csv").exists()


def test_predict_on_a_missing_source(tmp_path, capsys, fake_run):
    fails(capsys, ["predict", fake_run, tmp_path / "nope", "-o", tmp_path / "sub.csv", "-q", "--workers", 1],
          "no such folder or file")


def test_predict_with_a_folder_that_is_not_a_run(tmp_path, capsys, data):
    (tmp_path / "notrun").mkdir()
    fails(capsys, ["predict", tmp_path / "notrun", data.training_images, "-o", tmp_path / "sub.csv", "-q"],
          "not a gzmorph run folder")


def test_predict_unreadable_image_mentions_skip_bad(tmp_path, capsys, fake_run):
    folder = tmp_path / "imgs"
    write_image(folder / "1.jpg", 424, seed=1)
    (folder / "2.jpg").write_bytes(b"")
    fails(capsys, ["predict", fake_run, folder, "-o", tmp_path / "sub.csv", "-q", "--workers", 1],
          "2.jpg", "--skip-bad")
    assert not (tmp_path / "sub.csv").exists()  # no half-written submission


def test_predict_pickled_weights_are_refused(tmp_path, capsys, fake_run, data):
    (fake_run / "best.safetensors").write_bytes(b"\x80\x04\x95 pickle")
    fails(capsys, ["predict", fake_run, data.training_images, "-o", tmp_path / "sub.csv", "-q", "--workers", 1],
          "best.safetensors", "not a safetensors file")


def test_helper_labels_are_tree_consistent():
    # Sanity of the helper itself: its labels are tree-consistent, so the failures above come from the edits.
    assert not tree.tree_violations(tree_labels(12, seed=11)).any()
