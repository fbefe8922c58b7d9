"""Labelled image arrays ready for training or evaluation: a split's catalogue rows with their decoded pixels, in
the same row order."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import tree
from ..errors import BadArgument, BadData
from .cache import decode_all
from .catalogue import Catalogue, read_catalogue
from .images import Preprocess
from .layout import ImageFolder, KaggleLayout, open_layout
from .splits import SPLITS, assign_splits, random_split

log = logging.getLogger("gzmorph")


@dataclass
class LabelledImages:
    """Images of one split with their labels, in the same row order."""

    catalogue: Catalogue
    pixels: np.ndarray  # (N, size, size, 3) uint8

    def __len__(self) -> int:
        return len(self.catalogue)

    @staticmethod
    def concat(parts: list["LabelledImages"]) -> "LabelledImages":
        return LabelledImages(Catalogue.concat([p.catalogue for p in parts]), np.concatenate([p.pixels for p in parts]))


def without_questions(data: LabelledImages, questions: list[str]) -> LabelledImages:
    """``data`` with the answers of the named questions unknown (masked) for every galaxy."""
    cat = data.catalogue
    mask = cat.mask.copy()
    for name in questions:
        mask[:, tree.QUESTION_BY_NAME[name].slice] = False
    return LabelledImages(Catalogue(cat.ids, np.where(mask, cat.labels, 0.0).astype(np.float32), mask, cat.source),
                          data.pixels)


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
        raise BadArgument(f"--limit must be at least 1, got {limit}")
    rows = np.sort(np.random.default_rng(seed).choice(len(cat), size=limit, replace=False))
    return cat.subset(rows)


def attach_images(folder: ImageFolder, cat: Catalogue, prep: Preprocess, *, skip_bad: bool, split: str,
                  cache_dir: str | Path | None = None, workers: int | None = None,
                  progress: bool = True) -> LabelledImages:
    """Decode the images of ``cat``; a missing or unreadable image is an error, or a logged skip with ``skip_bad``."""
    found = [folder.image_path(int(i)) for i in cat.ids]
    exists = np.array([p is not None for p in found], bool)
    paths = [p for p in found if p is not None]
    if not exists.all():
        first = int(cat.ids[int(np.flatnonzero(~exists)[0])])
        msg = (f"{int((~exists).sum())} {split} galaxy(ies) of {Path(cat.source).name} have no image in "
               f"{folder.path} (e.g. {first}.jpg)")
        if not skip_bad:
            raise BadData(msg + "; add the images, or pass --skip-bad to leave those rows out")
        log.warning("skipping: %s", msg)
        cat = cat.subset(np.flatnonzero(exists))
    if len(cat) == 0:
        raise BadData(f"no {split} galaxies with images in {folder.path}")
    decoded = decode_all(paths, prep, cache_dir=cache_dir, workers=workers, progress=progress)
    if not decoded.ok.all():
        bad = np.flatnonzero(~decoded.ok)
        msg = (f"{len(bad)} {split} image(s) could not be decoded, e.g. {paths[bad[0]]}: "
               f"{decoded.errors[int(bad[0])]}")
        if not skip_bad:
            raise BadData(msg + "; replace them, or pass --skip-bad to leave them out")
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
            raise BadArgument(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        cat = cats[split]
        if len(cat) == 0:
            why = "" if layout.splits.exists() else " (there is no splits.csv, so only train and valid exist)"
            raise BadData(f"{layout.root}: the {split} split is empty{why}")
        cat = limit_rows(cat, limit, seed, split)
        out[split] = attach_images(layout.training, cat, prep, skip_bad=skip_bad, split=split, cache_dir=cache_dir,
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
        f", {cat.labels.shape[1]} outputs"


def load_user_labelled(labels: str | Path, images: str | Path, task, prep: Preprocess, *, valid_fraction: float = 0.2,
                       seed: int = 0, limit: int | None = None, skip_bad: bool = False,
                       cache_dir: str | Path | None = None, workers: int | None = None,
                       progress: bool = True) -> dict[str, LabelledImages]:
    """Train and valid images of a fine-tuning label file (``gzmorph.tasks``) whose images lie in ``images``
    (``<GalaxyID>.<suffix>``). The file's ``split`` column decides, else a seeded random split."""
    from ..tasks import read_labels

    folder = ImageFolder(images)
    if not folder.path.is_dir():
        raise BadData(f"{folder.path}: not a folder of images")
    read = read_labels(labels, task)
    names = read.split if read.split is not None else random_split(len(read.ids), valid_fraction, seed)
    cat = Catalogue(read.ids, read.targets, read.mask, read.source)
    out = {}
    for split in ("train", "valid"):
        part = cat.subset(np.flatnonzero(names == split))
        if len(part) == 0:
            raise BadData(f"{labels}: no {split} galaxies; give the split column both train and valid rows, or "
                          f"more labelled galaxies")
        part = limit_rows(part, limit, seed, split)
        out[split] = attach_images(folder, part, prep, skip_bad=skip_bad, split=split, cache_dir=cache_dir,
                                   workers=workers, progress=progress)
    return out
