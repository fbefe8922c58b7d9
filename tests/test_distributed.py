"""Scale-out: DDP training under torchrun (2 CPU processes over gloo) against one process, and sharded prediction
(``predict --shard I/N`` + ``merge``, and ``torchrun -m gzmorph predict``) against one unsharded run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gzmorph import runs
from gzmorph.cli import main
from gzmorph.training.distributed import Cluster, cpu_share, from_env
from gzmorph.inference.shards import merge_shards, parse_shard, shard_slice
from helpers import cli_fails, make_fake_run, write_kaggle_folder

REPO = Path(__file__).resolve().parents[1]


def gz(argv: list) -> int:
    """The CLI in this process, paths and numbers allowed in ``argv``."""
    return main([str(a) for a in argv])


def torchrun(args: list[str], nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N -m gzmorph ARGS`` (the module form of torchrun, so that the
    venv's own torch is used), checked."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "gzmorph", *map(str, args)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # Partially labelled rows too: the processes' batches then hold different numbers of known answers, which the
    # loss weighting must account for to match one process.
    return write_kaggle_folder(tmp_path_factory.mktemp("ddp") / "data", n=40, seed=5, partial_rows=8, test_images=9)


def _batch_size(folder) -> int:
    """A batch size whose last batch still gives each of 2 processes a row (DDP skips a 1-row tail batch)."""
    n_train = len(folder.ids_of("train")) + len(folder.partial_ids)
    return next(b for b in range(8, 13) if n_train % b != 1)


# fp32: bf16 rounds each process's partial sums differently, and the comparison is about the order of sums only.
TRAIN = ["--model", "dieleman", "--option", "dropout=0", "--option", "dense=64", "--epochs", "2", "--augment", "none",
         "--seed", "3", "--precision", "fp32", "-q"]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(data, tmp_path):
    """dieleman has no BatchNorm, and its dropout is set to 0 here, so DDP over 2 processes must equal 1 process up
    to the order of floating-point sums: the same global batches, the gradient of the same masked mean."""
    bs = str(_batch_size(data))
    one, two = tmp_path / "one", tmp_path / "two"
    assert gz(["train", "--data", data.root, "--batch-size", bs, "--out", one,
                 "--threads", "1", "--workers", "1", *TRAIN]) == 0
    done = torchrun(["train", "--data", data.root, "--batch-size", bs, "--out", two, *TRAIN])
    assert done.stdout.count("run folder:") == 1  # only rank 0 reports

    h1, h2 = runs.read_metrics(one), runs.read_metrics(two)
    assert [r["epoch"] for r in h2] == [1, 2]
    for a, b in zip(h1, h2):
        for key in ("train_loss", "train_rmse", "valid_loss", "valid_rmse"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a, b)
    w1, _ = runs.read_safetensors(one / runs.LAST)
    w2, _ = runs.read_safetensors(two / runs.LAST)
    assert w1.keys() == w2.keys()
    # Adam divides by the root of the squared gradient, so where a gradient is ~0 a last-bit difference in it can
    # move a weight by up to lr in one step: compare the weights as a whole, relative to their size.
    diff = torch.sqrt(sum(((w1[k] - w2[k]).double() ** 2).sum() for k in w1))
    norm = torch.sqrt(sum((w1[k].double() ** 2).sum() for k in w1))
    print(f"DDP (2 CPU processes) vs 1 process: relative weight difference {float(diff / norm):.2e}, "
          f"valid RMSE {h2[-1]['valid_rmse']:.6f} vs {h1[-1]['valid_rmse']:.6f}")
    assert diff / norm < 1e-3, f"weights differ by {float(diff / norm):.2e} of their norm"
    # The DDP run is an ordinary run folder: resume, evaluate and predict use it as any other.
    assert runs.read_config(two).model == "dieleman"


@pytest.mark.slow
def test_ddp_default_model_trains_and_resumes(data, tmp_path):
    """gznet has BatchNorm (statistics per process, as usual with DDP) and strong augmentation (each process draws
    its own): not bitwise equal to one process, but the same kind of result; and a DDP run resumes under DDP."""
    bs = str(_batch_size(data))
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--model", "gznet", "--batch-size", bs, "--epochs", "1", "--seed", "1", "-q"]
    assert gz(["train", "--data", data.root, "--out", one, "--threads", "1", "--workers", "1", *common]) == 0
    torchrun(["train", "--data", data.root, "--out", two, *common])
    r1, r2 = runs.read_metrics(one)[-1]["valid_rmse"], runs.read_metrics(two)[-1]["valid_rmse"]
    print(f"gznet, 1 epoch: valid RMSE {r2:.4f} with DDP over 2 CPU processes, {r1:.4f} in 1 process")
    assert np.isfinite(r2) and abs(r1 - r2) < 0.05, (r1, r2)
    torchrun(["train", "--resume", two, "--epochs", "2", "-q"])
    assert [r["epoch"] for r in runs.read_metrics(two)] == [1, 2]


@pytest.mark.slow
def test_ddp_minutes_agree_on_one_epoch_count(data, tmp_path):
    """--minutes under torchrun: every process must train the count picked after the first epoch (from their mean
    time), or one would wait for the others in a collective forever."""
    two = tmp_path / "two"
    done = torchrun(["train", "--data", data.root, "--out", two, "--batch-size", str(_batch_size(data)), "--model",
                     "dieleman", "--minutes", "1e-6", "--schedule", "cosine", "--warmup-epochs", "1", "-q"],
                    timeout=200)
    assert [r["epoch"] for r in runs.read_metrics(two)] == [1, 2]
    assert runs.read_config(two).epochs == 2
    assert done.stdout.count("run folder:") == 1


@pytest.mark.slow
def test_torchrun_predict_equals_one_process(data, tmp_path):
    run = make_fake_run(tmp_path / "run", "gznet")
    single, multi = tmp_path / "single.csv", tmp_path / "multi.csv"
    assert gz(["predict", run, data.test_images, "-o", single, "-q", "--workers", "1"]) == 0
    torchrun(["predict", run, data.test_images, "-o", multi, "-q"])
    assert _rows(multi) == _rows(single) and len(_rows(single)) == 1 + 9
    assert sorted(p.name for p in tmp_path.glob("multi*")) == ["multi.csv", "multi.csv.json"]  # parts removed
    meta = json.loads(Path(f"{multi}.json").read_text())
    assert meta["n_predicted"] == 9 and len(meta["merged_from"]) == 2


def _rows(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _predict_shards(run, images, tmp_path, n: int, **kw) -> list[Path]:
    parts = []
    for i in range(n):
        part = tmp_path / f"part{i}.csv"
        assert gz(["predict", run, images, "-o", part, "--shard", f"{i}/{n}", "-q", "--workers", "1",
                     *sum(([f"--{k}", str(v)] for k, v in kw.items()), [])]) == 0
        parts.append(part)
    return parts


def test_shards_merge_to_the_unsharded_submission(data, tmp_path, capsys):
    run = make_fake_run(tmp_path / "run", "seed-cnn")
    whole = tmp_path / "whole.csv"
    assert gz(["predict", run, data.test_images, "-o", whole, "-q", "--workers", "1"]) == 0
    parts = _predict_shards(run, data.test_images, tmp_path, 4)
    assert sum(len(_rows(p)) - 1 for p in parts) == 9
    merged = tmp_path / "merged.csv"
    assert gz(["merge", *reversed(parts), "-o", merged]) == 0  # order of the arguments does not matter
    assert merged.read_text() == whole.read_text()
    meta = json.loads(Path(f"{merged}.json").read_text())
    assert meta["n_predicted"] == 9 and meta["weights_sha256"] == runs.file_sha256(run / runs.BEST)
    capsys.readouterr()


def test_more_shards_than_images_gives_empty_parts(data, tmp_path):
    run = make_fake_run(tmp_path / "run", "seed-cnn")
    parts = _predict_shards(run, data.test_images, tmp_path, 12)
    assert sum(len(_rows(p)) == 1 for p in parts) == 3  # 12 shards of 9 images: 3 hold only the header
    summary = merge_shards(parts, tmp_path / "all.csv")
    assert summary.n_predicted == 9


def test_merge_refuses_incomplete_or_mixed_sets(data, tmp_path, capsys):
    run = make_fake_run(tmp_path / "run", "seed-cnn")
    parts = _predict_shards(run, data.test_images, tmp_path, 3)
    out = tmp_path / "m.csv"
    cli_fails(capsys, ["merge", parts[0], parts[2], "-o", out], "missing shard(s) [1]")
    cli_fails(capsys, ["merge", parts[0], parts[1], parts[1], parts[2], "-o", out], "[1] given twice")
    cli_fails(capsys, ["merge", *parts, "-o", parts[0]], "is one of the parts")
    other = make_fake_run(tmp_path / "other", "seed-cnn", seed=9)
    odd = tmp_path / "odd.csv"
    assert gz(["predict", other, data.test_images, "-o", odd, "--shard", "1/3", "-q", "--workers", "1"]) == 0
    cli_fails(capsys, ["merge", parts[0], odd, parts[2], "-o", out], "different weights")
    plain = tmp_path / "plain.csv"
    assert gz(["predict", run, data.test_images, "-o", plain, "-q", "--workers", "1"]) == 0
    cli_fails(capsys, ["merge", parts[0], plain, "-o", out], "not written with --shard")
    Path(f"{parts[1]}.json").unlink()
    cli_fails(capsys, ["merge", *parts, "-o", out], "no part1.csv.json beside it")
    assert not out.exists()
    # A part cut short after it was written is caught by the row count its .json recorded.
    parts = _predict_shards(run, data.test_images, tmp_path, 3)
    lines = parts[2].read_text().splitlines(keepends=True)
    parts[2].write_text("".join(lines[:-1]))
    cli_fails(capsys, ["merge", *parts, "-o", out], "re-predict them")
    assert not out.exists()


@pytest.mark.parametrize("text, why", [("3/3", "0 .. N-1"), ("1", "expected I/N"), ("a/b", "expected I/N"),
                                       ("0/0", "0 .. N-1")])
def test_bad_shard_is_one_clear_error(text, why):
    from gzmorph.errors import GzmorphError

    with pytest.raises(GzmorphError, match=why.replace(".", r"\.")):
        parse_shard(text)


def test_shard_slices_cover_the_list_once():
    for n_items in (0, 1, 7, 100):
        for n in (1, 2, 3, 8):
            covered = [k for i in range(n) for k in range(n_items)[shard_slice(n_items, i, n)]]
            assert covered == list(range(n_items))


def test_cluster_from_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert from_env() == Cluster() and not from_env().enabled
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    c = from_env()
    assert (c.rank, c.world, c.local_rank, c.local_world, c.is_main) == (3, 4, 1, 2, False)
    assert cpu_share(c, None) == max(1, len(os.sched_getaffinity(0)) // 2) and cpu_share(c, 5) == 5
    monkeypatch.setenv("RANK", "7")
    from gzmorph.errors import GzmorphError

    with pytest.raises(GzmorphError, match="bad torchrun environment"):
        from_env()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_each_local_rank_takes_its_own_gpu(monkeypatch):
    from gzmorph.training.distributed import pick_device

    c = Cluster(rank=0, world=2, local_rank=0, local_world=2)
    assert pick_device(c, "auto") == torch.device("cuda", 0)
