"""The Kaggle layout of a data folder, said once: its file and folder names, the submission header, and how a
GalaxyID finds its image file.

Layout (any folder holding these; only the first two are required)::

    images_training_rev1/<GalaxyID>.jpg     424x424 RGB JPEGs (also .jpeg, .png and FITS; any case of suffix)
    training_solutions_rev1.csv             GalaxyID + all 37 Class columns
    training_solutions_partial.csv          GalaxyID + some Class columns (the others unknown, masked)
    splits.csv                              GalaxyID,split with split in train/valid/test
    images_test_rev1/<GalaxyID>.jpg         unlabelled images, for prediction

A submission (``gzmorph predict``) is ``GalaxyID`` + the 37 columns in Kaggle's order.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from .. import tree
from ..errors import BadData
from .images import IMAGE_SUFFIXES, image_stem, image_suffix

ID_COLUMN = "GalaxyID"
TRAIN_IMAGES = "images_training_rev1"
TEST_IMAGES = "images_test_rev1"
SOLUTIONS = "training_solutions_rev1.csv"
PARTIAL_SOLUTIONS = "training_solutions_partial.csv"
SPLITS = "splits.csv"
SUBMISSION_HEADER = (ID_COLUMN, *tree.COLUMNS)


def index_images(files: list[str], folder: Path) -> dict[str, str]:
    """GalaxyID (as text) -> file name for image files in ``folder``, whatever the case of their suffix (cameras
    and Windows tools write ``123.JPG``). Two files claiming one id (``1.jpg`` and ``1.png``, or ``1.jpg`` and
    ``1.JPG``) are an error: which one to use would be a guess."""
    out: dict[str, str] = {}
    for name in files:
        if image_suffix(name) not in IMAGE_SUFFIXES:
            continue
        gid = image_stem(name)
        if gid in out:
            first, second = sorted((out[gid], name))
            raise BadData(f"{folder}: two files claim GalaxyID {gid}: {first} and {second}; keep one of them (move "
                          f"the other out of the folder)")
        out[gid] = name
    return out


class ImageFolder:
    """A folder of images named by GalaxyID (``<GalaxyID>.jpg``, or any other image suffix in any case), listed once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @functools.cached_property
    def _files(self) -> dict[str, str]:
        # One directory listing instead of a stat per galaxy: 61k stats cost a warm start about a second.
        try:
            names = [e.name for e in os.scandir(self.path) if e.is_file()]
        except OSError:
            return {}
        return index_images(names, self.path)

    def image_path(self, galaxy_id: int) -> Path | None:
        """The image file of ``galaxy_id``, or None when there is none."""
        name = self._files.get(str(galaxy_id))
        return None if name is None else self.path / name


@dataclass(frozen=True)
class KaggleLayout:
    root: Path

    @property
    def training_images(self) -> Path:
        return self.root / TRAIN_IMAGES

    @property
    def test_images(self) -> Path:
        return self.root / TEST_IMAGES

    @property
    def solutions(self) -> Path:
        return self.root / SOLUTIONS

    @property
    def partial_solutions(self) -> Path:
        return self.root / PARTIAL_SOLUTIONS

    @property
    def splits(self) -> Path:
        return self.root / SPLITS

    @functools.cached_property
    def training(self) -> ImageFolder:
        return ImageFolder(self.training_images)

    def image_path(self, galaxy_id: int) -> Path | None:
        """The training image of ``galaxy_id`` (``<GalaxyID>.jpg`` as Kaggle names them, or any other image suffix in
        any case), or None when there is none."""
        return self.training.image_path(galaxy_id)


def open_layout(root: str | Path) -> KaggleLayout:
    layout = KaggleLayout(Path(root))
    if not layout.root.is_dir():
        raise BadData(f"{layout.root}: data folder not found (expected the Kaggle layout: {TRAIN_IMAGES}/ and "
                      f"{SOLUTIONS})")
    for need in (layout.solutions, layout.training_images):
        if not need.exists():
            raise BadData(f"{layout.root}: missing {need.name}; a data folder needs {TRAIN_IMAGES}/ and "
                          f"{SOLUTIONS} (Kaggle layout)")
    return layout
