"""What `gzmorph predict` writes and reads: the named table beside Kaggle's, CSV / Parquet / FITS by suffix,
catalogues whose columns travel through, folders searched recursively, and every skipped input said."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gzmorph import tree
from gzmorph.cli import main
from gzmorph.inference.answer_table import answer_frame, column_table, describe, most_likely_paths, named_columns

from helpers import cli_fails as fails, make_fake_run, tree_labels, write_image


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_fake_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture
def folder(tmp_path):
    for k in range(4):
        write_image(tmp_path / "imgs" / f"{100 + k}.jpg", seed=k)
    return tmp_path / "imgs"


def predict(*argv) -> int:
    return main(["predict", *map(str, argv), "-q", "--workers", "1"])


# ------------------------------------------------------------------------------------------------------------------
# The named table
# ------------------------------------------------------------------------------------------------------------------

def test_named_columns_are_the_tree_read_question_by_question():
    values = tree_labels(50, seed=3)
    cols = named_columns(values)
    shares = tree.answer_shares(values)
    for q in tree.QUESTIONS:
        fractions = np.stack([cols[f"{a.name}_fraction"] for a in q.answers], axis=1)
        assert np.allclose(fractions.sum(axis=1), 1, atol=1e-5)  # each question's fractions sum to 1
        reached = np.asarray(cols[f"{q.name}_reached"])
        for a in q.answers:
            # fraction x reached gives back Kaggle's cumulative value
            assert np.allclose(cols[f"{a.name}_kaggle"], values[:, a.index], atol=1e-6)
            assert np.allclose(np.asarray(cols[f"{a.name}_fraction"]) * reached, values[:, a.index], atol=1e-5)
        best = [q.answers[i].name for i in shares[:, q.slice].argmax(axis=1)]
        assert cols[f"{q.name}_answer"] == best
    bar = tree.answer("bar_yes")
    edge_no = tree.answer("edge_on_no")
    assert np.allclose(cols["bar_reached"], values[:, edge_no.index], atol=1e-6)  # asked of not-edge-on disks
    assert np.allclose(cols["bar_yes_fraction"], shares[:, bar.index], atol=1e-6)


def test_most_likely_paths_match_the_tree_walk_row_by_row():
    values = tree.normalise(torch.randn(400, 37, generator=torch.Generator().manual_seed(0)) * 2).numpy()
    paths = most_likely_paths(values)
    for row, text in zip(values, paths):
        steps = tree.most_likely_path(row)
        odd = next(i for i, s in enumerate(steps) if s.question.number == 6)
        names = [s.answer.name for s in steps]
        assert text == " > ".join(names[:odd]) + " | " + " > ".join(names[odd:])
    assert most_likely_paths(np.zeros((0, 37))) == []


def test_every_named_column_is_described():
    frame = answer_frame(tree_labels(2), ["1", "2"], spread=np.zeros((2, 37)), lower=np.zeros((2, 37)),
                         upper=np.ones((2, 37)))
    undescribed = [c for c in frame.columns[1:] if not describe(c)]
    assert not undescribed
    assert {p for p, _ in column_table(spread=True, interval=True)} >= {"tree_path", "<answer>_fraction"}


# ------------------------------------------------------------------------------------------------------------------
# Formats
# ------------------------------------------------------------------------------------------------------------------

def test_kaggle_csv_is_the_default_and_unchanged(run, folder, tmp_path):
    out = tmp_path / "sub.csv"
    assert predict(run, folder, "-o", out) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(["GalaxyID", *tree.COLUMNS])
    assert [ln.split(",")[0] for ln in lines[1:]] == ["100", "101", "102", "103"]
    assert all(len(v.split(".")[1]) == 6 for v in lines[1].split(",")[1:])  # six decimals, as Kaggle's file


def test_named_csv_parquet_and_fits_hold_the_same_numbers(run, folder, tmp_path):
    tables = {}
    for suffix in (".csv", ".parquet", ".fits"):
        out = tmp_path / f"answers{suffix}"
        assert predict(run, folder, "-o", out, "--columns", "named", "--tta", 2, "--spread") == 0
        meta = json.loads(Path(f"{out}.json").read_text())
        assert meta["format"] == suffix and meta["columns"] == "named" and meta["n_predicted"] == 4
        if suffix == ".csv":
            tables[suffix] = pd.read_csv(out, dtype={"GalaxyID": str})
        elif suffix == ".parquet":
            tables[suffix] = pd.read_parquet(out)
        else:
            from astropy.table import Table

            t = Table.read(out)
            tables[suffix] = t.to_pandas()
            header = __import__("astropy.io.fits", fromlist=["open"]).open(out)[1].header
            comments = [header[k] for k in header if k.startswith("TCOMM")]
            assert any("share of the volunteers asked" in c for c in comments)
    csv_, parquet, fits_ = tables[".csv"], tables[".parquet"], tables[".fits"]
    assert list(csv_.columns) == list(parquet.columns) == list(fits_.columns)
    assert "bar_yes_fraction" in csv_.columns and "bar_yes_kaggle_spread" in csv_.columns
    assert list(fits_["tree_path"].astype(str)) == list(parquet["tree_path"]) == list(csv_["tree_path"])
    for name in ("smooth_fraction", "bar_yes_kaggle", "odd_reached"):
        assert np.allclose(csv_[name], parquet[name], atol=1e-6) and np.allclose(fits_[name], parquet[name])


def test_auto_columns_are_named_for_parquet(run, folder, tmp_path):
    assert predict(run, folder, "-o", tmp_path / "a.parquet") == 0
    assert "shape_answer" in pd.read_parquet(tmp_path / "a.parquet").columns


def test_unknown_output_suffix_is_one_line_and_writes_nothing(run, folder, tmp_path, capsys):
    fails(capsys, ["predict", run, folder, "-o", tmp_path / "a.xlsx", "-q"], "a.xlsx", ".csv", ".parquet", ".fits")
    assert not list(tmp_path.glob("a.xlsx*"))


def test_output_folder_is_made(run, folder, tmp_path):
    assert predict(run, folder, "-o", tmp_path / "new" / "deeper" / "a.csv") == 0
    assert (tmp_path / "new" / "deeper" / "a.csv").is_file()


def test_shards_of_a_parquet_job_merge(run, folder, tmp_path):
    for i in range(2):
        assert predict(run, folder, "-o", tmp_path / f"p{i}.parquet", "--shard", f"{i}/2") == 0
    assert predict(run, folder, "-o", tmp_path / "whole.parquet") == 0
    assert main(["merge", str(tmp_path / "p1.parquet"), str(tmp_path / "p0.parquet"), "-o",
                 str(tmp_path / "merged.parquet")]) == 0
    merged, whole = pd.read_parquet(tmp_path / "merged.parquet"), pd.read_parquet(tmp_path / "whole.parquet")
    pd.testing.assert_frame_equal(merged, whole)


# ------------------------------------------------------------------------------------------------------------------
# Catalogues and folders
# ------------------------------------------------------------------------------------------------------------------

def write_cat(path: Path, rows: list[str]) -> Path:
    path.write_text("objid,ra,dec,file\n" + "\n".join(rows) + "\n")
    return path


def test_catalogue_columns_travel_through(run, folder, tmp_path):
    cat = write_cat(tmp_path / "cat.csv", ["0007,150.123456789,-2.5,imgs/101.jpg", "42,1e-07,3,imgs/100.jpg"])
    out = tmp_path / "out.csv"
    assert predict(run, cat, "--id-column", "objid", "--path-column", "file", "-o", out) == 0
    table = pd.read_csv(out, dtype={"objid": str})
    assert list(table.columns[:5]) == ["objid", "ra", "dec", "file", "tree_path"]  # named: Kaggle's header can't hold RA
    assert list(table["file"]) == ["imgs/101.jpg", "imgs/100.jpg"]  # which image each row came from
    assert list(table["objid"]) == ["0007", "42"]  # ids as written, leading zeros kept; catalogue order kept
    raw = out.read_text()
    assert "150.123456789" in raw and "1e-07" in raw  # the catalogue's own digits, not rounded to 6 decimals
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["n_predicted"] == 2 and meta["source"] == str(cat)


def test_catalogue_with_an_image_folder_finds_files_by_id(run, folder, tmp_path):
    (tmp_path / "cat.csv").write_text("GalaxyID,z\n102,0.05\n100,0.1\n")
    out = tmp_path / "out.fits"
    assert predict(run, tmp_path / "cat.csv", "--images", folder, "-o", out) == 0
    from astropy.table import Table

    t = Table.read(out)
    assert [str(v) for v in t["GalaxyID"]] == ["102", "100"] and np.allclose(t["z"], [0.05, 0.1])


def test_catalogue_bad_input_is_one_line_each(run, folder, tmp_path, capsys):
    cat = write_cat(tmp_path / "cat.csv", ["1,0,0,imgs/100.jpg", "2,0,0,imgs/nothing.jpg"])
    fails(capsys, ["predict", run, cat, "--id-column", "ID", "--path-column", "file", "-o", tmp_path / "o.csv"],
          "no column 'ID'", "objid")
    fails(capsys, ["predict", run, cat, "--id-column", "objid", "-o", tmp_path / "o.csv"], "--path-column",
          "--images")
    fails(capsys, ["predict", run, cat, "--id-column", "objid", "--path-column", "file", "-o", tmp_path / "o.csv"],
          "line 3", "nothing.jpg", "--skip-bad")
    outside = write_cat(tmp_path / "out.csv", ["1,0,0,../../etc/passwd"])
    fails(capsys, ["predict", run, outside, "--id-column", "objid", "--path-column", "file", "--images", folder,
                   "-o", tmp_path / "o.csv"], "outside --images")
    dup = write_cat(tmp_path / "dup.csv", ["1,0,0,imgs/100.jpg", "1,0,0,imgs/101.jpg"])
    fails(capsys, ["predict", run, dup, "--id-column", "objid", "--path-column", "file", "-o", tmp_path / "o.csv"],
          "appears more than once")
    assert not (tmp_path / "o.csv").exists()


def test_catalogue_rows_without_images_are_skipped_counted_and_listed(run, folder, tmp_path, capsys):
    cat = write_cat(tmp_path / "cat.csv", ["1,0,0,imgs/100.jpg", "2,0,0,imgs/nothing.jpg", "3,0,0,"])
    out = tmp_path / "o.csv"
    assert predict(run, cat, "--id-column", "objid", "--path-column", "file", "--skip-bad", "-o", out) == 0
    assert "left out 2 input(s)" in capsys.readouterr().out
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["n_skipped"] == 2 and meta["n_predicted"] == 1
    assert [s["path"] for s in meta["skipped"]] == [f"{cat}:3", f"{cat}:4"]


def test_recursive_finds_images_in_subfolders(run, folder, tmp_path, caplog):
    write_image(folder / "night2" / "200.png", seed=9)
    out = tmp_path / "o.csv"
    (folder / "notes.txt").write_text("observing log")
    assert predict(run, folder, "-o", out) == 0
    assert "--recursive" in caplog.text  # said, not silently left out
    assert len(pd.read_csv(out)) == 4
    listed = {Path(s["path"]).name: s["why"] for s in json.loads(Path(f"{out}.json").read_text())["skipped"]}
    assert set(listed) == {"notes.txt", "200.png"} and "--recursive" in listed["200.png"]
    assert predict(run, folder, "-o", out, "--recursive") == 0
    assert sorted(pd.read_csv(out)["GalaxyID"]) == [100, 101, 102, 103, 200]


def test_predicted_json_records_the_packaged_file_sha(folder, tmp_path):
    from gzmorph import pretrained

    out = tmp_path / "o.csv"
    assert predict(folder / "100.jpg", "-o", out) == 0
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["weights_sha256"] == pretrained.card()["sha256"] and meta["run"] == "pretrained"


def test_interval_columns_from_the_command_line(folder, tmp_path, capsys):
    out = tmp_path / "i.csv"
    assert predict(folder, "-o", out, "--tta", 8, "--interval", 0.8) == 0
    table = pd.read_csv(out)
    assert "bar_yes_kaggle_lower" in table.columns and "shape_answer" in table.columns  # named: auto with --interval
    lower, value, upper = (table[[f"{a.name}_kaggle{s}" for a in tree.ANSWERS]].to_numpy() for s in
                           ("_lower", "", "_upper"))
    assert (lower <= value + 1e-6).all() and (value <= upper + 1e-6).all() and (lower >= 0).all() and (upper <= 1).all()
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["interval"] == 0.8 and meta["calibration"]["split"] == "valid"
    assert predict(folder, "-o", tmp_path / "alone.csv", "--interval", 0.8) == 0  # no --tta: the calibration's 8
    assert json.loads(Path(f"{tmp_path / 'alone.csv'}.json").read_text())["tta"] == 8
    assert pd.read_csv(tmp_path / "alone.csv").equals(table)
    for argv, needle in [(["--tta", 8, "--interval", 1.5], "between 0 and 1"),
                         (["--tta", 8, "--interval", 0.9, "--columns", "kaggle"], "named"),
                         (["--tta", 2, "--interval", 0.9], "--tta 8"),  # --interval alone takes the 8 views
                         (["--tta", 8, "--calibration", tmp_path / "c.json"], "--interval")]:
        fails(capsys, ["predict", folder, "-o", tmp_path / "bad.csv", "-q", *argv], needle)
    assert not (tmp_path / "bad.csv").exists()


def test_each_catalogue_row_gets_its_own_images_answers_even_when_two_rows_share_a_file(run, folder, tmp_path):
    cat = write_cat(tmp_path / "cat.csv", ["a,1,1,imgs/102.jpg", "b,2,2,imgs/100.jpg", "c,3,3,./imgs/102.jpg"])
    out = tmp_path / "o.csv"
    assert predict(run, cat, "--id-column", "objid", "--path-column", "file", "-o", out) == 0
    table = pd.read_csv(out)
    assert list(table["objid"]) == ["a", "b", "c"] and list(table["ra"]) == [1, 2, 3]
    for name, image in (("a", "102"), ("b", "100")):
        alone = tmp_path / f"{name}.csv"
        assert predict(run, folder / f"{image}.jpg", "-o", alone, "--columns", "named") == 0
        want = pd.read_csv(alone).filter(like="_kaggle").iloc[0]
        got = table.loc[table.objid == name].filter(like="_kaggle").iloc[0]
        assert np.allclose(got, want, atol=1e-6)
    assert np.allclose(table.filter(like="_kaggle").iloc[0], table.filter(like="_kaggle").iloc[2])


def test_catalogue_integers_with_blanks_keep_every_digit(run, folder, tmp_path):
    (tmp_path / "cat.csv").write_text("GalaxyID,specobjid,z\n100,1237648720693755918,0.1\n101,,\n")
    for suffix in (".csv", ".parquet", ".fits"):
        out = tmp_path / f"o{suffix}"
        assert predict(run, tmp_path / "cat.csv", "--images", folder, "-o", out) == 0
        if suffix == ".csv":
            text = out.read_text()
            assert "1237648720693755918" in text and "\n101,,,"in text  # empty stays empty
            continue
        if suffix == ".parquet":
            table = pd.read_parquet(out)
        else:
            from astropy.table import Table

            table = Table.read(out).to_pandas()
        assert int(table["specobjid"].iloc[0]) == 1237648720693755918 and pd.isna(table["specobjid"].iloc[1])


def test_fits_text_that_is_not_ascii_is_refused_before_predicting(run, folder, tmp_path, capsys):
    (tmp_path / "cat.csv").write_text("GalaxyID,name\n100,M31 \u2013 Andromeda\n", encoding="utf-8")
    fails(capsys, ["predict", run, tmp_path / "cat.csv", "--images", folder, "-o", tmp_path / "o.fits", "-q"],
          "ASCII", "name")
    assert not list(tmp_path.glob("*o.fits*"))


def test_shards_of_different_settings_do_not_merge(run, folder, tmp_path, capsys):
    assert predict(run, folder, "-o", tmp_path / "p0.parquet", "--shard", "0/2", "--tta", 2, "--spread") == 0
    assert predict(run, folder, "-o", tmp_path / "p1.parquet", "--shard", "1/2", "--tta", 2) == 0
    fails(capsys, ["merge", tmp_path / "p0.parquet", tmp_path / "p1.parquet", "-o", tmp_path / "m.parquet"],
          "--spread")
    assert not (tmp_path / "m.parquet").exists()


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(run, folder, tmp_path):
    out = tmp_path / "a.parquet"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".a.parquet.tmp-{int(dead.stdout)}"  # what a SIGKILLed job leaves behind
    stale.write_bytes(b"x" * 1000)
    running = tmp_path / f".a.parquet.tmp-{os.getppid()}"  # a live writer's (our parent is alive): left alone
    running.write_bytes(b"y")
    assert predict(run, folder, "-o", out) == 0
    assert not stale.exists() and running.exists() and out.is_file()
