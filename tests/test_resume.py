"""A long `predict` killed midway keeps its rows and continues: the same command finishes the job, the file is the
same as an uninterrupted run's, and a different job finds the partial one and is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gzmorph.cli import main
from gzmorph.inference.journal import partial_path

from helpers import cli_fails, make_fake_run, write_image

N_IMAGES = 20_000
DISTINCT = 40  # hard links to a few small JPEGs: 20,000 files in a second, and decoding stays cheap


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    sources = [write_image(root / "src" / f"{k}.jpg", size=96, seed=k) for k in range(DISTINCT)]
    images = root / "images"
    images.mkdir()
    for i in range(N_IMAGES):
        os.link(sources[i % DISTINCT], images / f"{1_000_000 + i}.jpg")
    return make_fake_run(root / "run", "gznet"), images, root


def command(run, images, out, *extra) -> list[str]:
    return [sys.executable, "-m", "gzmorph", "predict", str(run), str(images), "-o", str(out), "-q", "--workers", "1",
            "--precision", "fp32", *map(str, extra)]


def kill_when_done(argv: list[str], journal: Path, images: int) -> None:
    """Start the job and SIGKILL it once its journal records at least ``images`` images done."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads(journal.read_text())["done"] >= images:
                    break
            except (OSError, ValueError, KeyError):  # not written yet, or caught mid-replace
                pass
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()


def timed(argv) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


@pytest.mark.slow
def test_a_job_killed_at_half_resumes_to_the_same_file_in_about_half_the_time(job):
    run, images, root = job
    whole = root / "whole.csv"
    full_seconds = timed(command(run, images, whole))

    out = root / "killed.csv"
    journal = Path(f"{partial_path(out)}.json")
    kill_when_done(command(run, images, out), journal, N_IMAGES // 2)
    assert not out.exists() and journal.is_file()
    done = json.loads(journal.read_text())["done"]
    assert N_IMAGES // 3 < done < N_IMAGES

    resumed_seconds = timed(command(run, images, out))
    assert out.read_bytes() == whole.read_bytes()
    assert not journal.exists() and not partial_path(out).exists()  # nothing left behind
    assert json.loads(Path(f"{out}.json").read_text())["n_predicted"] == N_IMAGES
    # The remaining (N - done) images cost their share of the whole run, give or take process start and noise.
    assert resumed_seconds < full_seconds * ((N_IMAGES - done) / N_IMAGES + 0.25), (resumed_seconds, full_seconds)


def test_a_partial_job_of_another_kind_is_refused_then_restarted(job, tmp_path, capsys):
    run, images, root = job
    few = tmp_path / "few"
    few.mkdir()
    for name in sorted(os.listdir(images))[:5]:
        os.link(images / name, few / name)
    out = tmp_path / "out.csv"
    partial, journal = partial_path(out), Path(f"{partial_path(out)}.json")
    # What a run of `--tta 2` leaves when killed after its first chunk of 2 images (batch size 2).
    assert main(["predict", str(run), str(few), "-o", str(out), "-q", "--workers", "1", "--tta", "2",
                 "--batch-size", "2", "--precision", "fp32"]) == 0
    whole = out.read_bytes()
    lines = whole.decode().splitlines(keepends=True)
    partial.write_text("".join(lines[:3]) + lines[3][:10])  # two rows and a torn third one
    record = json.loads(Path(f"{out}.json").read_text())
    job_ = {"inputs_sha256": record["inputs_sha256"], "shard": None, "n_inputs": 5, "weights_sha256":
            record["weights_sha256"], "tta": 2, "precision": "fp32", "columns": "kaggle", "spread": False,
            "format": ".csv"}
    journal.write_text(json.dumps({"job": job_, "done": 2, "rows": 2, "skipped": [],
                                   "offsets": {"rows": len("".join(lines[:3]).encode())}}))
    out.unlink()
    before = partial.read_bytes()
    cli_fails(capsys, ["predict", run, few, "-o", out, "-q", "--workers", 1, "--tta", 4, "--batch-size", 2,
                       "--precision", "fp32"], "partial run of another job", "tta", "--restart")
    assert partial.read_bytes() == before and not out.exists()  # nothing overwritten
    # The same job continues: the torn row is cut off and written again.
    assert main(["predict", str(run), str(few), "-o", str(out), "-q", "--workers", "1", "--tta", "2",
                 "--batch-size", "2", "--precision", "fp32"]) == 0
    assert out.read_bytes() == whole
    # --restart discards a partial job instead.
    partial.write_text("junk")
    journal.write_text(json.dumps({"job": {**job_, "tta": 8}, "done": 2, "rows": 2, "skipped": [],
                                   "offsets": {"rows": 4}}))
    assert main(["predict", str(run), str(few), "-o", str(out), "-q", "--workers", "1", "--tta", "2",
                 "--batch-size", "2", "--precision", "fp32", "--restart"]) == 0
    assert out.read_bytes() == whole and not journal.exists()
    # A partial file shorter than its journal records (touched, or the job had already finished) is not resumed.
    partial.write_text("GalaxyID")
    journal.write_text(json.dumps({"job": job_, "done": 2, "rows": 2, "skipped": [], "offsets": {"rows": 4096}}))
    cli_fails(capsys, ["predict", run, few, "-o", out, "-q", "--workers", 1, "--tta", 2, "--batch-size", 2,
                       "--precision", "fp32"], "shorter than its journal records", "--restart")
    assert partial.read_text() == "GalaxyID"  # not padded, not truncated


def test_a_killed_embed_resumes_to_the_same_features(job, tmp_path):
    run, images, root = job
    few = tmp_path / "few"
    few.mkdir()
    for name in sorted(os.listdir(images))[:3000]:
        os.link(images / name, few / name)
    argv = [sys.executable, "-m", "gzmorph", "embed", str(run), str(few), "-q", "--workers", "1", "--precision", "fp32"]
    subprocess.run([*argv, "-o", str(tmp_path / "whole")], check=True, capture_output=True)
    out = tmp_path / "killed"
    journal = Path(f"{partial_path(tmp_path / 'killed.npy')}.json")
    kill_when_done([*argv, "-o", str(out)], journal, 1000)
    assert 0 < json.loads(journal.read_text())["done"] < 3000
    subprocess.run([*argv, "-o", str(out)], check=True, capture_output=True)
    for suffix in (".npy", ".csv"):
        assert (tmp_path / f"killed{suffix}").read_bytes() == (tmp_path / f"whole{suffix}").read_bytes()
    assert not journal.exists()


def test_the_journal_records_at_most_once_per_its_seconds_and_always_when_final(tmp_path, monkeypatch):
    from gzmorph.inference.journal import Journal

    def recorded(journal):
        return json.loads(journal.path.read_text())

    monkeypatch.setenv("GZMORPH_JOURNAL_SECONDS", "3600")
    out = tmp_path / "a.csv"
    journal = Journal.start(out, {"job": 1}, ["rows"])
    assert journal.every == 3600 and recorded(journal)["done"] == 0  # the start is recorded
    with open(journal.files["rows"], "ab") as f:
        f.write(b"1,0.5\n")
    journal.record(1, 1, [])  # not due: nothing is made durable, so nothing is claimed
    assert recorded(journal)["done"] == 0 and recorded(journal)["offsets"]["rows"] == 0
    # A resume now cuts the unrecorded row off and does its image again: the file and the journal agree.
    again = Journal.start(out, {"job": 1}, ["rows"])
    assert again.done == 0 and journal.files["rows"].read_bytes() == b""
    with open(journal.files["rows"], "ab") as f:
        f.write(b"1,0.5\n")
    journal.record(1, 1, [], final=True)
    assert recorded(journal)["done"] == 1 and recorded(journal)["offsets"]["rows"] == 6
    monkeypatch.setenv("GZMORPH_JOURNAL_SECONDS", "0")
    eager = Journal.start(tmp_path / "b.csv", {"job": 2}, ["rows"])
    eager.record(5, 5, [])
    assert recorded(eager)["done"] == 5
    from gzmorph.errors import GzmorphError

    monkeypatch.setenv("GZMORPH_JOURNAL_SECONDS", "soon")
    with pytest.raises(GzmorphError, match="GZMORPH_JOURNAL_SECONDS"):
        Journal.start(tmp_path / "c.csv", {"job": 3}, ["rows"])
