"""Shared fixtures. Real-data tests read ../shared/data/galaxy-zoo (or $GZMORPH_DATA_DIR); they skip where it is
absent, except when $GZMORPH_REQUIRE_DATA or $CI is set (CI), where its absence is a failure."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path:
    return Path(os.environ.get("GZMORPH_DATA_DIR") or REPO.parent / "shared" / "data" / "galaxy-zoo")


@pytest.fixture(scope="session")
def real_data() -> Path:
    path = real_data_dir()
    if not (path / "training_solutions_rev1.csv").is_file():
        if os.environ.get("GZMORPH_REQUIRE_DATA") or os.environ.get("CI"):
            pytest.fail(f"real data required in CI but not found at {path}")
        pytest.skip(f"real Galaxy Zoo data not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets the same session-wide private image cache, never the user's ~/.cache."""
    monkeypatch.setenv("GZMORPH_CACHE", str(tmp_path_factory.getbasetemp() / "image-cache"))


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A small synthetic Kaggle-layout set shared by the end-to-end tests."""
    from gzmorph.data.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synth"), n=240, n_test=24, seed=1, workers=2)


@pytest.fixture(scope="module")
def _kaggle_template(tmp_path_factory):
    # 12 galaxies of random pictures: splits.csv puts 8 in train, 2 in valid, 2 in test.
    from helpers import write_kaggle_folder

    return write_kaggle_folder(tmp_path_factory.mktemp("template") / "data", n=12, seed=11)


@pytest.fixture
def kaggle(tmp_path, _kaggle_template):
    """A private copy of a tiny valid Kaggle folder, for tests that damage it in their own way."""
    shutil.copytree(_kaggle_template.root, tmp_path / "data")
    return dataclasses.replace(_kaggle_template, root=tmp_path / "data")
