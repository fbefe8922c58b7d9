"""The Kaggle layout, splits, partial catalogues, --limit and --skip-bad, through ``load_labelled``."""

from __future__ import annotations

import dataclasses
import logging
import shutil

import numpy as np
import pytest

from gzmorph.data.labelled import load_labelled, masked_mean
from gzmorph.data.layout import KaggleLayout, open_layout
from gzmorph.data.splits import SPLITS, read_splits
from gzmorph.errors import GzmorphError
from gzmorph.data.images import Preprocess, decode

from helpers import write_csv, write_kaggle_folder

PREP = Preprocess(148, 16)


@pytest.fixture(scope="module")
def _template(tmp_path_factory):
    return write_kaggle_folder(tmp_path_factory.mktemp("template") / "data", n=20, seed=3, partial_rows=4)


@pytest.fixture
def folder(tmp_path, _template):
    """A private copy of a 20 + 4 galaxy Kaggle folder (tests may damage it)."""
    shutil.copytree(_template.root, tmp_path / "data")
    return dataclasses.replace(_template, root=tmp_path / "data")


def load(root, splits=("train", "valid"), tmp=None, **kw):
    kw.setdefault("cache_dir", (tmp or root) / "cache")
    return load_labelled(root, PREP, splits, workers=1, progress=False, **kw)


def ids_of(labelled) -> set[int]:
    return {int(i) for i in labelled.catalogue.ids}


# ------------------------------------------------------------------------------------------------------------------
# Layout and splits
# ------------------------------------------------------------------------------------------------------------------

def test_open_layout(tmp_path, folder):
    layout = open_layout(folder.root)
    assert isinstance(layout, KaggleLayout) and layout.solutions == folder.solutions
    with pytest.raises(GzmorphError, match="data folder not found"):
        open_layout(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GzmorphError, match="training_solutions_rev1.csv"):
        open_layout(tmp_path / "empty")
    (tmp_path / "empty" / "training_solutions_rev1.csv").write_text("GalaxyID\n")
    with pytest.raises(GzmorphError, match="images_training_rev1"):
        open_layout(tmp_path / "empty")


def test_splits_come_from_splits_csv(tmp_path, folder):
    out = load(folder.root, SPLITS, tmp_path)
    partial = {int(i) for i in folder.partial_ids}
    assert ids_of(out["valid"]) == set(folder.ids_of("valid"))
    assert ids_of(out["test"]) == set(folder.ids_of("test"))
    assert ids_of(out["train"]) == set(folder.ids_of("train")) | partial
    for split, data in out.items():
        assert len(data) == len(data.pixels) and data.pixels.shape[1:] == (16, 16, 3)
    # Rows and pixels are aligned: each row's pixels are its own image's.
    data = out["valid"]
    for k in (0, len(data) - 1):
        gid = int(data.catalogue.ids[k])
        assert np.array_equal(data.pixels[k], decode(folder.image(gid), PREP))
        row = list(folder.ids).index(gid)
        np.testing.assert_allclose(data.catalogue.labels[k], folder.labels[row], atol=1e-6)


def test_partial_rows_only_in_train_and_masked(tmp_path, folder):
    out = load(folder.root, SPLITS, tmp_path)
    train = out["train"].catalogue
    partial = np.isin(train.ids, folder.partial_ids)
    assert partial.sum() == len(folder.partial_ids) == 4
    assert not train.fully_labelled[partial].any() and train.fully_labelled[~partial].all()
    known = train.mask[partial]
    assert (known == known[0]).all() and known[0].sum() == len(folder.partial_columns)
    assert (train.labels[partial][~known] == 0).all()
    for split in ("valid", "test"):
        assert out[split].catalogue.fully_labelled.all()
        assert not np.isin(out[split].catalogue.ids, folder.partial_ids).any()
    # The masked mean ignores unknown answers: a column known only to full rows averages those rows alone.
    mean = masked_mean(train)
    col = int(np.flatnonzero(~known[0])[0])
    np.testing.assert_allclose(mean[col], train.labels[~partial, col].mean(), rtol=1e-5)
    # use_partial=False leaves them out.
    no_partial = load(folder.root, ("train",), tmp_path, use_partial=False)["train"]
    assert ids_of(no_partial) == set(folder.ids_of("train"))


def test_seeded_random_split_without_splits_csv(tmp_path):
    kf = write_kaggle_folder(tmp_path / "d", n=20, seed=4, splits=False)
    a = load(kf.root, ("train", "valid"), tmp_path, valid_fraction=0.25, seed=1)
    b = load(kf.root, ("train", "valid"), tmp_path, valid_fraction=0.25, seed=1)
    c = load(kf.root, ("train", "valid"), tmp_path, valid_fraction=0.25, seed=2)
    assert len(a["valid"]) == 5 and len(a["train"]) == 15
    assert ids_of(a["train"]) | ids_of(a["valid"]) == {int(i) for i in kf.ids}
    assert not ids_of(a["train"]) & ids_of(a["valid"])
    assert ids_of(a["valid"]) == ids_of(b["valid"])  # deterministic
    assert ids_of(a["valid"]) != ids_of(c["valid"])  # and follows the seed
    # At least one validation galaxy, however small the fraction.
    assert len(load(kf.root, ("valid",), tmp_path, valid_fraction=0.001)["valid"]) == 1
    for bad in (0.0, 1.0, -0.5, 2.0):
        with pytest.raises(GzmorphError, match="valid-fraction"):
            load(kf.root, ("valid",), tmp_path, valid_fraction=bad)


def test_test_split_without_splits_csv_is_an_error(tmp_path):
    kf = write_kaggle_folder(tmp_path / "d", n=10, seed=5, splits=False)
    with pytest.raises(GzmorphError, match="test split is empty.*no splits.csv"):
        load(kf.root, ("test",), tmp_path)


def test_splits_csv_missing_a_galaxy(tmp_path, folder):
    rows = list(folder.splits.items())[1:]
    write_csv(folder.root / "splits.csv", ["GalaxyID", "split"], rows)
    with pytest.raises(GzmorphError) as e:
        load(folder.root, ("train",), tmp_path)
    msg = str(e.value)
    assert "splits.csv" in msg and str(folder.ids[0]) in msg and "1 galax" in msg


def test_bad_split_names(tmp_path, folder):
    rows = [[gid, "validation" if k == 2 else s] for k, (gid, s) in enumerate(folder.splits.items())]
    write_csv(folder.root / "splits.csv", ["GalaxyID", "split"], rows)
    with pytest.raises(GzmorphError, match=r"splits\.csv, line 4: split 'validation' is not one of train"):
        load(folder.root, ("train",), tmp_path)


def test_unknown_split_requested(tmp_path, folder):
    with pytest.raises(GzmorphError, match="unknown split 'validation'"):
        load(folder.root, ("validation",), tmp_path)


def test_read_splits_errors(tmp_path):
    bad_header = write_csv(tmp_path / "s1.csv", ["id", "split"], [[1, "train"]])
    with pytest.raises(GzmorphError, match="header"):
        read_splits(bad_header)
    twice = write_csv(tmp_path / "s2.csv", ["GalaxyID", "split"], [[1, "train"], [1, "valid"]])
    with pytest.raises(GzmorphError, match="line 3.*listed twice"):
        read_splits(twice)
    short = tmp_path / "s3.csv"
    short.write_text("GalaxyID,split\n1,train\n2\n")
    with pytest.raises(GzmorphError, match="line 3"):
        read_splits(short)
    assert read_splits(write_csv(tmp_path / "s4.csv", ["GalaxyID", "split"], [[5, " test "]])) == {5: "test"}


# ------------------------------------------------------------------------------------------------------------------
# --limit
# ------------------------------------------------------------------------------------------------------------------

def test_limit(tmp_path, folder):
    out = load(folder.root, SPLITS, tmp_path, limit=3)
    assert {s: len(d) for s, d in out.items()} == {"train": 3, "valid": 3, "test": 3}
    again = load(folder.root, SPLITS, tmp_path, limit=3)
    assert all(ids_of(out[s]) == ids_of(again[s]) for s in SPLITS)
    assert ids_of(out["valid"]) <= set(folder.ids_of("valid"))
    with pytest.raises(GzmorphError, match="--limit"):
        load(folder.root, ("train",), tmp_path, limit=0)


def test_limit_larger_than_data_uses_all(tmp_path, folder, caplog):
    caplog.set_level(logging.INFO, logger="gzmorph")
    out = load(folder.root, ("valid",), tmp_path, limit=1000)
    assert ids_of(out["valid"]) == set(folder.ids_of("valid"))
    assert "using all of them" in caplog.text


# ------------------------------------------------------------------------------------------------------------------
# Missing and unreadable images
# ------------------------------------------------------------------------------------------------------------------

def _first_valid(folder) -> int:
    return sorted(folder.ids_of("valid"))[0]


def test_missing_image_is_an_error_or_a_logged_skip(tmp_path, folder, caplog):
    gid = _first_valid(folder)
    folder.image(gid).unlink()
    with pytest.raises(GzmorphError) as e:
        load(folder.root, ("valid",), tmp_path)
    msg = str(e.value)
    assert "--skip-bad" in msg and f"{gid}.jpg" in msg and "valid" in msg
    caplog.set_level(logging.WARNING, logger="gzmorph")
    out = load(folder.root, ("valid",), tmp_path, skip_bad=True)["valid"]
    assert ids_of(out) == set(folder.ids_of("valid")) - {gid}
    assert len(out.pixels) == len(out)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and f"{gid}.jpg" in warnings[0].getMessage() and "skipping" in warnings[0].getMessage()


def test_unreadable_image_is_an_error_or_a_logged_skip(tmp_path, folder, caplog):
    gid = _first_valid(folder)
    folder.image(gid).write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole JPEG")
    with pytest.raises(GzmorphError) as e:
        load(folder.root, ("valid",), tmp_path)
    msg = str(e.value)
    assert "--skip-bad" in msg and f"{gid}.jpg" in msg and "could not be decoded" in msg
    caplog.set_level(logging.WARNING, logger="gzmorph")
    out = load(folder.root, ("valid",), tmp_path, skip_bad=True)["valid"]
    assert ids_of(out) == set(folder.ids_of("valid")) - {gid}
    assert len(out.pixels) == len(out)
    # Pixels still line up with their rows after the bad one is dropped.
    for k, i in enumerate(out.catalogue.ids):
        assert np.array_equal(out.pixels[k], decode(folder.image(int(i)), PREP))
    assert any(r.levelno == logging.WARNING and f"{gid}.jpg" in r.getMessage() for r in caplog.records)


def test_split_with_no_usable_image_is_an_error_even_with_skip_bad(tmp_path, folder):
    for gid in folder.ids_of("valid"):
        folder.image(gid).unlink()
    with pytest.raises(GzmorphError, match="no valid galaxies with images"):
        load(folder.root, ("valid",), tmp_path, skip_bad=True)


def test_image_without_a_csv_row_is_unused(tmp_path, folder):
    from helpers import write_image

    write_image(folder.training_images / "999999.jpg", 424, seed=1)
    (folder.training_images / "readme.txt").write_text("stray file")
    out = load(folder.root, SPLITS, tmp_path)
    assert all(999999 not in ids_of(d) for d in out.values())


def test_bad_catalogue_stops_loading(tmp_path, folder):
    text = folder.solutions.read_text().splitlines()
    text[2] = text[2].replace(",", ",x", 1)  # junk in the first label of line 3
    folder.solutions.write_text("\n".join(text) + "\n")
    with pytest.raises(GzmorphError, match="training_solutions_rev1.csv, line 3, column Class1.1"):
        load(folder.root, ("train",), tmp_path)
