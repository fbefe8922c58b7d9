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
from gzmorph.models import resolve_recipe
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

    from gzmorph.training import loop as train_module

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


def test_cosine_schedule_warms_up_then_decays_to_zero():
    from gzmorph.training.schedule import learning_rate

    cfg = resolve_recipe(gzmorph.TrainConfig(data="", model="gznet", epochs=4, lr=0.01, schedule="cosine", warmup_epochs=1))
    lrs = [learning_rate(cfg, step, 10) for step in range(40)]
    assert lrs[0] == pytest.approx(0.001) and lrs[9] == pytest.approx(0.01)  # linear warm-up over epoch 1
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # then never rises
    assert lrs[-1] < 0.0002
    constant = resolve_recipe(gzmorph.TrainConfig(data="", model="seed-cnn", lr=0.003))
    assert {learning_rate(constant, s, 10) for s in range(100)} == {0.003}


def test_resume_with_schedule_and_weight_average_is_bitwise_identical(synthetic_data, tmp_path, monkeypatch):
    kw = dict(model="gznet", epochs=3, augment="strong", schedule="cosine", warmup_epochs=1, ema=0.9,
              weight_decay=1e-3, model_options={"widths": [8, 16], "depths": [1, 1]}, checkpoint_every=0)
    straight = gzmorph.train(_cfg(synthetic_data, tmp_path / "a", **kw), progress=False)

    # The same run, killed right after its epoch-1 checkpoint, then resumed.
    real_write = runs.write_metrics

    def killed_after_epoch_1(run, history):
        real_write(run, history)
        if len(history) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(runs, "write_metrics", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        gzmorph.train(_cfg(synthetic_data, tmp_path / "b", **kw), progress=False)
    monkeypatch.setattr(runs, "write_metrics", real_write)
    assert len(runs.read_metrics(tmp_path / "b")) == 1
    resumed = gzmorph.train(gzmorph.TrainConfig(data="", out=str(tmp_path / "b")), resume=True, progress=False)

    for name in (runs.LAST, runs.BEST, runs.CHECKPOINT):
        wa, wb = load_file(straight / name), load_file(resumed / name)
        assert wa.keys() == wb.keys()
        assert any(k.startswith("ema.") for k in wa) or name != runs.CHECKPOINT
        for k in wa:
            assert (wa[k] == wb[k]).all(), (name, k)
    drop_time = [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in runs.read_metrics(straight)]
    assert drop_time == [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in runs.read_metrics(resumed)]


def test_early_stopping_ends_the_run_and_resume_respects_it(synthetic_data, tmp_path):
    # At lr 1e-9 the weights hardly move (only BatchNorm statistics drift): the run must stop `patience` epochs after
    # its best valid RMSE instead of running all 6 epochs.
    cfg = _cfg(synthetic_data, tmp_path / "r", model="gznet", epochs=6, lr=1e-9, patience=2, ema=0.0,
               model_options={"widths": [8], "depths": [1]})
    run = gzmorph.train(cfg, progress=False)
    rows = runs.read_metrics(run)
    best = min(range(len(rows)), key=lambda i: rows[i]["valid_rmse"])
    assert len(rows) < 6 and len(rows) == best + 1 + 2
    gzmorph.train(gzmorph.TrainConfig(data="", out=str(run)), resume=True, progress=False)
    assert len(runs.read_metrics(run)) == len(rows)  # nothing more to do


def test_weight_average_is_what_gets_saved(synthetic_data, tmp_path):
    from gzmorph.models import create_model
    from gzmorph.training.average import WeightAverage

    torch_model = create_model("gznet", widths=[8], depths=[1])
    avg = WeightAverage(torch_model, 0.5)
    import torch

    with torch.no_grad():
        for p in torch_model.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in avg.model.state_dict().items()}
    avg.update(torch_model)  # decay min(0.5, 2/11): moves 9/11 of the way
    for k, v in avg.model.state_dict().items():
        if v.dtype.is_floating_point and "running" not in k:
            live = torch_model.state_dict()[k]
            assert torch.allclose(v, before[k] + (live - before[k]) * (9 / 11), atol=1e-6), k
    run = gzmorph.train(_cfg(synthetic_data, tmp_path / "r", model="gznet", ema=0.9,
                             model_options={"widths": [8], "depths": [1]}), progress=False)
    saved, ckpt = load_file(run / runs.LAST), load_file(run / runs.CHECKPOINT)
    assert all(torch.equal(saved[k], ckpt["ema." + k]) for k in saved)
    assert not all(torch.equal(saved[k], ckpt["model." + k]) for k in saved)


def test_cli_default_model_options_and_tta(synthetic_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(synthetic_data), "--epochs", "1", "--limit", "64", "--out", str(run), "-q",
                 "--option", "widths=[8,16]", "--option", "depths=[1,1]", "--ema", "0.9", "--patience", "3",
                 "--workers", "1"]) == 0
    cfg = json.loads((run / "config.json").read_text())["train"]
    assert cfg["model"] == "gznet" and cfg["model_options"] == {"widths": [8, 16], "depths": [1, 1]}
    assert cfg["ema"] == 0.9 and cfg["patience"] == 3 and cfg["schedule"] == "cosine"
    assert main(["evaluate", str(run), "--data", str(synthetic_data), "--split", "valid", "--tta", "8", "-q"]) == 0
    assert "TTA over 8 views" in capsys.readouterr().out
    assert json.loads((run / "eval-valid.json").read_text())["tta"] == 8
    assert main(["evaluate", str(run), "--data", str(synthetic_data), "--split", "valid", "--tta", "32", "-q"]) == 0
    assert json.loads((run / "eval-valid.json").read_text())["tta"] == 32
    assert main(["evaluate", str(run), "--data", str(synthetic_data), "--split", "valid", "--tta", "12", "-q"]) == 2
    assert "--tta must be one of 1, 2, 4, 8, 16, 32" in capsys.readouterr().err
    assert main(["train", "--data", str(synthetic_data), "--out", str(tmp_path / "x"), "--option", "widths"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["train", "--data", str(synthetic_data), "--out", str(tmp_path / "y"), "--option", "colour=1"]) == 2
    assert "does not take option" in capsys.readouterr().err
    assert main(["models"]) == 0
    assert "options: widths, depths" in capsys.readouterr().out


@pytest.mark.parametrize("pad", range(0, 300, 7))
def test_safetensors_files_of_any_header_length_load(tmp_path, pad):
    # Regression: the pickle sniffing once looked at the first byte alone, and refused every real safetensors file
    # whose JSON header length ends in byte 0x80 (a pickle's first byte) - 128, 384, 640 ... bytes.
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={"pad": "x" * pad})
    tensors, meta = runs.read_safetensors(path)
    assert torch.equal(tensors["w"], torch.ones(2)) and meta["pad"] == "x" * pad


def test_a_header_length_ending_in_0x80_is_covered():
    # The parametrized test above must include at least one file whose first byte is 0x80.
    import torch
    from safetensors.torch import save

    firsts = {save({"w": torch.ones(2)}, metadata={"pad": "x" * pad})[0] for pad in range(0, 300, 7)}
    assert 0x80 in firsts


def test_batches_from_a_device_resident_set_train_bitwise_as_from_host_memory(synthetic_data, tmp_path, monkeypatch):
    """On a GPU the training set is copied there once and every batch (rows, augmentation) is gathered on it
    (training/resident.py); the CPU runs the same code when told to, and the run must not change by one bit."""
    from gzmorph.training import loop

    host = gzmorph.train(_cfg(synthetic_data, tmp_path / "host", epochs=2, augment="strong"), progress=False)
    monkeypatch.setattr(loop, "keep_on_device", lambda data, device: True)
    resident = gzmorph.train(_cfg(synthetic_data, tmp_path / "resident", epochs=2, augment="strong"), progress=False)
    a, b = load_file(host / runs.LAST), load_file(resident / runs.LAST)
    for k in a:
        assert (a[k] == b[k]).all(), k
    assert runs.read_metrics(host)[-1]["train_loss"] == runs.read_metrics(resident)[-1]["train_loss"]


def test_a_gpu_gets_the_large_batch_recipe_unless_the_run_sets_its_own():
    cpu = resolve_recipe(gzmorph.TrainConfig(data="", model="gznet"))
    gpu = resolve_recipe(gzmorph.TrainConfig(data="", model="gznet"), "cuda")
    assert (cpu.batch_size, cpu.lr, cpu.warmup_epochs) == (64, 2e-3, 1)
    assert (gpu.batch_size, gpu.lr, gpu.warmup_epochs) == (256, 8e-3, 3)
    assert gpu.epochs == cpu.epochs  # the same passes over the data: only the step size changes
    mine = resolve_recipe(gzmorph.TrainConfig(data="", model="gznet", batch_size=64), "cuda")
    assert (mine.batch_size, mine.lr, mine.warmup_epochs) == (64, 2e-3, 1), "a lr tuned for 256 at batch 64"
    tuned = resolve_recipe(gzmorph.TrainConfig(data="", model="gznet", labels="l.csv", images="d"), "cuda")
    assert tuned.batch_size == 64, "fine-tuning keeps its own recipe"


def test_a_batch_size_given_alone_scales_the_rate_with_it():
    big = resolve_recipe(gzmorph.TrainConfig(data="", model="gznet", batch_size=256))
    assert (big.batch_size, big.lr) == (256, 8e-3), "the linear rule: a rate tuned for 64 is wrong at 256"
    mine = resolve_recipe(gzmorph.TrainConfig(data="", model="gznet", batch_size=256, lr=5e-4))
    assert mine.lr == 5e-4, "a rate given is kept"
    tuned = resolve_recipe(gzmorph.TrainConfig(data="", model="gznet", labels="l.csv", images="d", batch_size=32))
    assert tuned.lr == 1e-3, "fine-tuning keeps its own recipe"
    seed = resolve_recipe(gzmorph.TrainConfig(data="", model="seed-cnn"))
    assert resolve_recipe(gzmorph.TrainConfig(data="", model="seed-cnn", batch_size=2 * seed.batch_size)).lr == \
        2 * seed.lr


@pytest.mark.parametrize("train_on_valid, which", [(True, "last"), (False, "best")])
def test_init_from_a_run_takes_its_last_weights_where_it_trained_on_valid(synthetic_data, tmp_path, monkeypatch,
                                                                            train_on_valid, which):
    """With train_on_valid no galaxy was held out to pick a best epoch by: the last weights are the model."""
    base = gzmorph.train(_cfg(synthetic_data, tmp_path / "base", epochs=1, train_on_valid=train_on_valid),
                         progress=False)
    asked = []
    load = runs.load_model

    def recording(run, w="best", *a, **k):
        asked.append((str(run), w))
        return load(run, w, *a, **k)

    monkeypatch.setattr(runs, "load_model", recording)
    gzmorph.train(_cfg(synthetic_data, tmp_path / "next", epochs=1, init=str(base)), progress=False)
    assert (str(base), which) in asked


def test_minutes_picks_the_epochs_after_the_first_and_the_count_repeats_the_run(synthetic_data, tmp_path, caplog):
    from gzmorph.training.time_budget import epochs_for

    from gzmorph.training.time_budget import fewest_epochs

    assert epochs_for(15, 13.0, 2) == 69  # 900 s at 13 s an epoch
    assert epochs_for(15, 38.0, 2) == 23
    assert epochs_for(0.01, 38.0, 2) == 2  # never fewer than the fewest
    # the fewest: past the warm-up, and past fine-tuning's head-only epochs (else the backbone never trains)
    assert fewest_epochs(gzmorph.TrainConfig(warmup_epochs=3.0, head_epochs=0)) == 4
    assert fewest_epochs(gzmorph.TrainConfig(warmup_epochs=1.0, head_epochs=2)) == 3
    common = dict(epochs=None, schedule="cosine", warmup_epochs=1.0, augment="report")
    # A budget far below one epoch: the floor, 2 epochs, decided after the first and saved with the run.
    caplog.set_level("INFO", logger="gzmorph")
    timed = gzmorph.train(_cfg(synthetic_data, tmp_path / "timed", minutes=1e-6, **common), progress=False)
    assert "so this run trains 2 epochs" in caplog.text
    assert runs.read_config(timed).epochs == 2 and runs.read_config(timed).minutes == 1e-6
    assert len(runs.read_metrics(timed)) == 2
    # The count it logged, given as --epochs, is the same run bit for bit: the first epoch's rates did not depend
    # on the count (the warm-up covers it).
    fixed = gzmorph.train(_cfg(synthetic_data, tmp_path / "fixed", **{**common, "epochs": 2}), progress=False)
    wa, wb = load_file(timed / runs.LAST), load_file(fixed / runs.LAST)
    assert all((wa[k] == wb[k]).all() for k in wa)
    # ... and it resumes with its count (one more epoch asked for explicitly also works)
    gzmorph.train(gzmorph.TrainConfig(data="", out=str(timed), epochs=3), resume=True, progress=False)
    assert len(runs.read_metrics(timed)) == 3


@pytest.mark.parametrize("kw, message", [
    (dict(minutes=5, epochs=3), "--epochs or --minutes, not both"),
    (dict(minutes=5, epochs=None, schedule="cosine", warmup_epochs=0.5), "--warmup-epochs 1 or more"),
    (dict(minutes=0, epochs=None), "positive number of minutes"),
    (dict(minutes=float("inf"), epochs=None), "positive number of minutes"),
])
def test_minutes_that_cannot_be_honoured_are_refused(synthetic_data, tmp_path, kw, message):
    with pytest.raises(GzmorphError, match=message):
        gzmorph.train(_cfg(synthetic_data, tmp_path / "r", **kw), progress=False)
    assert not (tmp_path / "r" / runs.CHECKPOINT).exists()
