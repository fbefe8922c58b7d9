"""A data set in the Kaggle layout, its splits, and labelled image arrays ready for training or evaluation.

Layout (any folder holding these; only the first two are required)::

    images_training_rev1/<GalaxyID>.jpg     424x424 RGB JPEGs
    training_solutions_rev1.csv             GalaxyID + all 37 Class columns
    training_solutions_partial.csv          GalaxyID + some Class columns (the others unknown, masked)
    splits.csv                              GalaxyID,split with split in train/valid/test
    images_test_rev1/<GalaxyID>.jpg         unlabelled images, for prediction
"""

from __future__ import annotations

import csv
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import tree
from .catalogue import Catalogue, read_catalogue, parse_id
from .errors import GzmorphError
from .images import IMAGE_SUFFIXES, Preprocess, decode_all

log = logging.getLogger("gzmorph")

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class KaggleLayout:
    root: Path

    @property
    def training_images(self) -> Path:
        return self.root / "images_training_rev1"

    @property
    def test_images(self) -> Path:
        return self.root / "images_test_rev1"

    @property
    def solutions(self) -> Path:
        return self.root / "training_solutions_rev1.csv"

    @property
    def partial_solutions(self) -> Path:
        return self.root / "training_solutions_partial.csv"

    @property
    def splits(self) -> Path:
        return self.root / "splits.csv"

    @functools.cached_property
    def _training_files(self) -> frozenset[str]:
        # One directory listing instead of a stat per galaxy: 61k stats cost a warm start about a second.
        try:
            return frozenset(e.name for e in os.scandir(self.training_images) if e.is_file())
        except OSError:
            return frozenset()

    def image_path(self, galaxy_id: int) -> Path:
        """``<GalaxyID>.jpg`` as Kaggle names them; a ``.jpeg``, ``.png`` or FITS file of that id where there is no
        ``.jpg`` (``images.IMAGE_SUFFIXES``, in that order)."""
        for suffix in IMAGE_SUFFIXES:
            if f"{galaxy_id}{suffix}" in self._training_files:
                return self.training_images / f"{galaxy_id}{suffix}"
        return self.training_images / f"{galaxy_id}.jpg"  # missing: reported by the caller under this name

    def has_image(self, path: Path) -> bool:
        return path.parent == self.training_images and path.name in self._training_files


def open_layout(root: str | Path) -> KaggleLayout:
    layout = KaggleLayout(Path(root))
    if not layout.root.is_dir():
        raise GzmorphError(f"{layout.root}: data folder not found (expected the Kaggle layout: "
                           f"images_training_rev1/ and training_solutions_rev1.csv)")
    for need in (layout.solutions, layout.training_images):
        if not need.exists():
            raise GzmorphError(f"{layout.root}: missing {need.name}; a data folder needs images_training_rev1/ and "
                               f"training_solutions_rev1.csv (Kaggle layout)")
    return layout


def read_splits(path: Path) -> dict[int, str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or [h.strip() for h in rows[0][:2]] != ["GalaxyID", "split"]:
        raise GzmorphError(f"{path}: header must be 'GalaxyID,split'")
    out: dict[int, str] = {}
    for line, r in enumerate(rows[1:], start=2):
        if not r:
            continue
        where = f"{path}, line {line}"
        if len(r) < 2:
            raise GzmorphError(f"{where}: expected 'GalaxyID,split'")
        gid, split = parse_id(r[0], where), r[1].strip()
        if split not in SPLITS:
            raise GzmorphError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        if gid in out:
            raise GzmorphError(f"{where}: GalaxyID {gid} is listed twice")
        out[gid] = split
    return out


def assign_splits(layout: KaggleLayout, full: Catalogue, valid_fraction: float, seed: int) -> np.ndarray:
    """The split name of every row of the full catalogue: from splits.csv, else a seeded random split."""
    if layout.splits.exists():
        given = read_splits(layout.splits)
        missing = [int(i) for i in full.ids if int(i) not in given]
        if missing:
            raise GzmorphError(f"{layout.splits}: no split for {len(missing)} galaxy(ies) of {full.source} "
                               f"(e.g. GalaxyID {missing[0]}); list every galaxy, or remove splits.csv to split at "
                               f"random with --valid-fraction")
        return np.array([given[int(i)] for i in full.ids])
    if not 0 < valid_fraction < 1:
        raise GzmorphError(f"--valid-fraction must be between 0 and 1, got {valid_fraction}")
    order = np.random.default_rng(seed).permutation(len(full))
    names = np.full(len(full), "train", dtype=object)
    names[order[: max(1, round(valid_fraction * len(full)))]] = "valid"
    log.info("no splits.csv: seeded random split (seed %d), %.0f%% valid, no test split", seed, 100 * valid_fraction)
    return names.astype(str)


@dataclass
class LabelledImages:
    """Images of one split with their labels, in the same row order."""

    catalogue: Catalogue
    pixels: np.ndarray  # (N, size, size, 3) uint8

    def __len__(self) -> int:
        return len(self.catalogue)


def load_catalogue_splits(layout: KaggleLayout, *, use_partial: bool = True, valid_fraction: float = 0.1,
                          seed: int = 0) -> dict[str, Catalogue]:
    """Catalogues per split. Partially labelled galaxies only ever join ``train``."""
    full = read_catalogue(layout.solutions, require_all=True)
    names = assign_splits(layout, full, valid_fraction, seed)
    out = {s: full.subset(np.flatnonzero(names == s)) for s in SPLITS}
    if use_partial and layout.partial_solutions.exists():
        partial = read_catalogue(layout.partial_solutions)
        out["train"] = Catalogue.concat([out["train"], partial])
        log.info("using %d partially labelled galaxies from %s (unknown answers masked)",
                 len(partial), layout.partial_solutions.name)
    return out


def limit_rows(cat: Catalogue, limit: int | None, seed: int, split: str) -> Catalogue:
    if limit is None or limit >= len(cat):
        if limit is not None:
            log.info("--limit %d is more than the %d %s galaxies: using all of them", limit, len(cat), split)
        return cat
    if limit < 1:
        raise GzmorphError(f"--limit must be at least 1, got {limit}")
    rows = np.sort(np.random.default_rng(seed).choice(len(cat), size=limit, replace=False))
    return cat.subset(rows)


def attach_images(layout: KaggleLayout, cat: Catalogue, prep: Preprocess, *, skip_bad: bool, split: str,
                  cache_dir: str | Path | None = None, workers: int | None = None,
                  progress: bool = True) -> LabelledImages:
    """Decode the images of ``cat``; a missing or unreadable image is an error, or a logged skip with ``skip_bad``."""
    paths = [layout.image_path(int(i)) for i in cat.ids]
    exists = np.array([layout.has_image(p) for p in paths], bool)
    if not exists.all():
        first = paths[int(np.flatnonzero(~exists)[0])]
        msg = (f"{int((~exists).sum())} {split} galaxy(ies) of {Path(cat.source).name} have no image in "
               f"{layout.training_images} (e.g. {first.name})")
        if not skip_bad:
            raise GzmorphError(msg + "; add the images, or pass --skip-bad to leave those rows out")
        log.warning("skipping: %s", msg)
        cat = cat.subset(np.flatnonzero(exists))
        paths = [p for p, e in zip(paths, exists) if e]
    if len(cat) == 0:
        raise GzmorphError(f"no {split} galaxies with images in {layout.training_images}")
    decoded = decode_all(paths, prep, cache_dir=cache_dir, workers=workers, progress=progress)
    if not decoded.ok.all():
        bad = np.flatnonzero(~decoded.ok)
        msg = (f"{len(bad)} {split} image(s) could not be decoded, e.g. {paths[bad[0]]}: "
               f"{decoded.errors[int(bad[0])]}")
        if not skip_bad:
            raise GzmorphError(msg + "; replace them, or pass --skip-bad to leave them out")
        log.warning("skipping: %s", msg)
        keep = np.flatnonzero(decoded.ok)
        return LabelledImages(cat.subset(keep), decoded.pixels[keep])
    return LabelledImages(cat, decoded.pixels)


def load_labelled(root: str | Path, prep: Preprocess, splits: tuple[str, ...], *, use_partial: bool = True,
                  valid_fraction: float = 0.1, seed: int = 0, limit: int | None = None, skip_bad: bool = False,
                  cache_dir: str | Path | None = None, workers: int | None = None,
                  progress: bool = True) -> dict[str, LabelledImages]:
    """The labelled images of the requested splits of a Kaggle-layout folder, ready for training/evaluation."""
    layout = open_layout(root)
    cats = load_catalogue_splits(layout, use_partial=use_partial, valid_fraction=valid_fraction, seed=seed)
    out = {}
    for split in splits:
        if split not in SPLITS:
            raise GzmorphError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        cat = cats[split]
        if len(cat) == 0:
            why = "" if layout.splits.exists() else " (there is no splits.csv, so only train and valid exist)"
            raise GzmorphError(f"{layout.root}: the {split} split is empty{why}")
        cat = limit_rows(cat, limit, seed, split)
        out[split] = attach_images(layout, cat, prep, skip_bad=skip_bad, split=split, cache_dir=cache_dir,
                                   workers=workers, progress=progress)
    return out


def masked_mean(cat: Catalogue) -> np.ndarray:
    """Per-column mean over the galaxies whose answer is known: the train-mean baseline prediction."""
    counts = cat.mask.sum(axis=0)
    sums = (cat.labels * cat.mask).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).astype(np.float32)


def describe(cat: Catalogue) -> str:
    partial = int((~cat.fully_labelled).sum())
    return f"{len(cat)} galaxies" + (f" ({partial} partially labelled)" if partial else "") + \
        f", {tree.N_OUTPUTS} outputs"
