"""Soft labels: a teacher's answers for more galaxies, joining the train split (distillation, pseudo-labels).

The file is a Kaggle CSV of all 37 answers -- what ``gzmorph predict DIR --tta 16 -o teacher.csv`` writes, or the
mean of several models' files (an ensemble teacher). Each of its galaxies is one of:

* a galaxy of a split this run never trains on (test, and valid unless ``--train-on-valid``): left out, counted.
  A teacher that predicted a whole folder has answered the test galaxies too; training on those answers would let
  the test images into training, so they are dropped here, whatever the file holds;
* a galaxy of the train rows: its volunteers' answers stay; the teacher fills only those that are unknown (the 4,000
  partially labelled galaxies have 17 of 37 answers: the other 20 were masked, now they are the teacher's);
* a galaxy with no label at all (``../galaxy-zoo-unlabelled``): a new train row, all 37 answers the teacher's, its
  image found in ``--soft-images``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadArgument, BadData
from .catalogue import Catalogue, read_catalogue
from .images import Preprocess
from .labelled import LabelledImages, attach_images
from .layout import ImageFolder

log = logging.getLogger("gzmorph")


@dataclass
class SoftSummary:
    """What the soft-label file gave this run, for the log and the tests."""

    n_rows: int  # rows of the file
    n_new: int  # galaxies without labels that joined the train split
    n_filled: int  # train galaxies whose unknown answers the teacher filled
    n_answers_filled: int  # answers filled over those galaxies
    n_held_out: int  # galaxies of a split this run does not train on: left out
    n_other: int  # labelled galaxies outside this run's train rows (e.g. left out by --limit): left out

    def describe(self) -> str:
        parts = [f"{self.n_new} unlabelled galaxies join the train split",
                 f"{self.n_filled} partially labelled ones get their {self.n_answers_filled} unknown answers"]
        if self.n_held_out:
            parts.append(f"{self.n_held_out} held-out galaxies (valid/test) left out")
        if self.n_other:
            parts.append(f"{self.n_other} labelled galaxies outside this run's train rows left out")
        return "; ".join(parts)


def add_soft_labels(train: LabelledImages, soft_file: str | Path, images: str | Path | None, prep: Preprocess, *,
                    held_out_ids: np.ndarray, labelled_ids: np.ndarray, skip_bad: bool = False,
                    cache_dir: str | Path | None = None, workers: int | None = None, progress: bool = True,
                    ) -> tuple[LabelledImages, SoftSummary]:
    """``train`` with the soft labels of ``soft_file`` added (see the module's text).

    ``held_out_ids``: galaxies never to train on; ``labelled_ids``: every galaxy with volunteers' labels in the
    data (any split), so that a labelled galaxy is never taken for an unlabelled one."""
    soft = read_catalogue(soft_file, require_all=True)
    held = np.isin(soft.ids, held_out_ids)
    in_train = np.isin(soft.ids, train.catalogue.ids)
    other = np.isin(soft.ids, labelled_ids) & ~held & ~in_train
    new = ~(held | in_train | other)
    filled, n_answers, cat = _fill_unknown(train.catalogue, soft.subset(np.flatnonzero(in_train)))
    out = LabelledImages(cat, train.pixels)
    n_new = 0
    if new.any():
        if not images:
            raise BadArgument(f"{soft_file}: {int(new.sum())} galaxies have no labels in the data (e.g. GalaxyID "
                              f"{soft.ids[np.flatnonzero(new)[0]]}); give --soft-images, the folder of their images")
        folder = ImageFolder(images)
        if not folder.path.is_dir():
            raise BadData(f"{folder.path}: not a folder of images (--soft-images)")
        extra = soft.subset(np.flatnonzero(new))
        extra = Catalogue(extra.ids, extra.labels, extra.mask, f"{Path(soft_file).name} (soft labels)")
        added = attach_images(folder, extra, prep, skip_bad=skip_bad, split="soft-labelled", cache_dir=cache_dir,
                              workers=workers, progress=progress)
        n_new = len(added)
        out = LabelledImages.concat([out, added])
    summary = SoftSummary(len(soft), n_new, filled, n_answers, int(held.sum()), int(other.sum()))
    log.info("soft labels from %s: %s", soft_file, summary.describe())
    return out, summary


def _fill_unknown(cat: Catalogue, soft: Catalogue) -> tuple[int, int, Catalogue]:
    """(galaxies filled, answers filled, ``cat`` with its unknown answers taken from ``soft``, whose ids are all in
    ``cat``). Known answers -- the volunteers' -- are never replaced."""
    if len(soft) == 0:
        return 0, 0, cat
    row_of = {int(g): r for r, g in enumerate(cat.ids)}
    rows = np.array([row_of[int(g)] for g in soft.ids])
    unknown = ~cat.mask[rows]
    labels, mask = cat.labels.copy(), cat.mask.copy()
    labels[rows] = np.where(unknown, soft.labels, labels[rows])
    mask[rows] = True
    if not np.isfinite(labels).all():
        raise BadData("soft labels: a filled answer is not a number")
    return int(unknown.any(axis=1).sum()), int(unknown.sum()), Catalogue(cat.ids, labels, mask, cat.source)
