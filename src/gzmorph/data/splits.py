"""Which galaxies are train, valid and test: ``splits.csv`` when the folder has one (the shared data's fixed split),
else a seeded random split of the labelled galaxies into train and valid (and no test)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from ..errors import BadArgument, BadData
from .catalogue import Catalogue, parse_id
from .layout import KaggleLayout

log = logging.getLogger("gzmorph")

SPLITS = ("train", "valid", "test")


def read_splits(path: Path) -> dict[int, str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or [h.strip() for h in rows[0][:2]] != ["GalaxyID", "split"]:
        raise BadData(f"{path}: header must be 'GalaxyID,split'")
    out: dict[int, str] = {}
    for line, r in enumerate(rows[1:], start=2):
        if not r:
            continue
        where = f"{path}, line {line}"
        if len(r) < 2:
            raise BadData(f"{where}: expected 'GalaxyID,split'")
        gid, split = parse_id(r[0], where), r[1].strip()
        if split not in SPLITS:
            raise BadData(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        if gid in out:
            raise BadData(f"{where}: GalaxyID {gid} is listed twice")
        out[gid] = split
    return out


def assign_splits(layout: KaggleLayout, full: Catalogue, valid_fraction: float, seed: int) -> np.ndarray:
    """The split name of every row of the full catalogue: from splits.csv, else a seeded random split."""
    if layout.splits.exists():
        given = read_splits(layout.splits)
        missing = [int(i) for i in full.ids if int(i) not in given]
        if missing:
            raise BadData(f"{layout.splits}: no split for {len(missing)} galaxy(ies) of {full.source} "
                          f"(e.g. GalaxyID {missing[0]}); list every galaxy, or remove splits.csv to split at "
                          f"random with --valid-fraction")
        return np.array([given[int(i)] for i in full.ids])
    log.info("no splits.csv: seeded random split (seed %d), %.0f%% valid, no test split", seed, 100 * valid_fraction)
    return random_split(len(full), valid_fraction, seed)


def random_split(n: int, valid_fraction: float, seed: int) -> np.ndarray:
    """``n`` split names, ``valid_fraction`` of them (at least one) "valid" at seeded random places, the rest
    "train"."""
    if not 0 < valid_fraction < 1:
        raise BadArgument(f"--valid-fraction must be between 0 and 1, got {valid_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    names = np.full(n, "train", dtype=object)
    names[order[: max(1, round(valid_fraction * n))]] = "valid"
    return names.astype(str)
