"""Galaxies like this one, and the oddest galaxies: nearest neighbours by cosine similarity of a run's features
(``gzmorph embed``), through faiss (``pip install 'gzmorph[search]'``).

The index: up to :data:`EXACT_LIMIT` galaxies an exact inner-product search over the normalised features (faiss
``IndexFlatIP``); beyond it an approximate one, an HNSW graph over 8-bit scalar-quantised vectors (``HNSW32,SQ8``),
a quarter of float32's memory and a few thousand distance computations per query instead of N. The index is built
once and kept beside the features (``features.npy.faiss``), so a query loads it and answers in milliseconds.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .. import runs, tree
from ..data.images import Preprocess, decode, image_suffix, IMAGE_SUFFIXES
from ..errors import BadArgument, BadData, BadImage, BadRun
from .embed import feature_paths

log = logging.getLogger("gzmorph")

EXACT_LIMIT = 50_000  # galaxies searched exactly; an approximate (HNSW) index beyond
HNSW_NEIGHBOURS = 32  # graph degree: recall near 1 at these sizes
HNSW_SEARCH = 128  # candidates a query explores (faiss efSearch): more is slower and more exact
ODD_K = 10  # neighbours whose mean distance makes a galaxy's oddness
INSTALL_HINT = "similarity search needs `pip install 'gzmorph[search]'` (faiss-cpu)"


def _faiss():
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its notes on which CPU build it picked
    try:
        import faiss
    except ImportError:
        raise BadArgument(INSTALL_HINT) from None
    return faiss


def _normalised(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


@dataclass
class FeatureSet:
    """An embedded set of galaxies: ``gzmorph embed``'s three files."""

    npy: Path
    meta: dict
    ids: list[str]
    files: list[str]
    answers: np.ndarray | None  # (N, 37) the run's answers, where the run answers the Galaxy Zoo tree

    @cached_property
    def vectors(self) -> np.ndarray:
        return np.load(self.npy, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.ids)

    def row_of(self, galaxy_id: str) -> int:
        try:
            return self._rows[str(galaxy_id)]
        except KeyError:
            raise BadArgument(f"GalaxyID {galaxy_id} is not in {self.npy} ({len(self)} galaxies); give one of its "
                              f"ids, or an image file") from None

    @cached_property
    def _rows(self) -> dict[str, int]:
        return {g: i for i, g in enumerate(self.ids)}


def open_features(path: str | Path) -> FeatureSet:
    npy, table, meta_path = feature_paths(path)
    for p in (npy, table, meta_path):
        if not p.is_file():
            raise BadData(f"{p}: not found; give the features written by `gzmorph embed RUN IMAGES -o FEATURES`")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise BadData(f"{meta_path}: not valid JSON ({e})") from None
    with open(table, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        rows = list(reader)
    shape = np.load(npy, mmap_mode="r").shape
    if len(rows) != shape[0] or meta.get("n") != shape[0]:
        raise BadData(f"{npy}: {shape[0]} rows, {table.name} {len(rows)}, its .json {meta.get('n')}: the files do not "
                      f"belong together; embed again")
    if shape[0] == 0:
        raise BadData(f"{npy}: the index is empty (no galaxy was embedded)")
    answers = None
    if header[2:] == list(tree.COLUMNS):
        answers = np.array([[float(v) for v in r[2:]] for r in rows], np.float32)
    return FeatureSet(npy, meta, [r[0] for r in rows], [r[1] for r in rows], answers)


class Index:
    """The faiss index over a feature set's normalised vectors (built once, then loaded from beside the features)."""

    def __init__(self, features: FeatureSet, exact: bool | None = None):
        faiss = _faiss()
        self.features = features
        self.exact = len(features) <= EXACT_LIMIT if exact is None else exact
        path = Path(f"{features.npy}.{'flat' if self.exact else 'hnsw'}.faiss")
        stamp = f"{len(features)}:{features.npy.stat().st_mtime_ns}"
        stamp_path = Path(f"{path}.stamp")
        if path.is_file() and stamp_path.is_file() and stamp_path.read_text() == stamp:
            self.index = faiss.read_index(str(path))
        else:
            started = time.perf_counter()
            self.index = self._build(faiss)
            log.info("built an %s index of %d galaxies in %.1f s", "exact" if self.exact else "HNSW",
                     len(features), time.perf_counter() - started)
            try:
                faiss.write_index(self.index, str(path) + ".tmp")
                os.replace(str(path) + ".tmp", path)
                stamp_path.write_text(stamp)
            except (OSError, RuntimeError) as e:  # a read-only folder: the index is rebuilt next time
                log.warning("could not keep the index beside %s (%s)", features.npy, e)
        if not self.exact:
            self.index.hnsw.efSearch = HNSW_SEARCH

    def _build(self, faiss):
        dim = self.features.vectors.shape[1]
        if self.exact:
            index = faiss.IndexFlatIP(dim)
        else:
            index = faiss.index_factory(dim, f"HNSW{HNSW_NEIGHBOURS},SQ8", faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(0).choice(len(self.features), min(len(self.features), 100_000),
                                                     replace=False)
            index.train(_normalised(self.features.vectors[np.sort(sample)]))
        for start in range(0, len(self.features), 65_536):  # normalised a block at a time: constant extra memory
            index.add(_normalised(self.features.vectors[start:start + 65_536]))
        return index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(cosine similarities, rows), each (Q, k), best first."""
        sims, rows = self.index.search(_normalised(queries), min(k, len(self.features)))
        return sims, rows


def query_vector(features: FeatureSet, query: str, run: str | Path | None = None,
                 loaded=None) -> tuple[np.ndarray, str | None]:
    """The feature vector of ``query`` -- a GalaxyID of the set, or an image file embedded by the set's run (or
    ``run``, which must be that run) -- and the query's row in the set (None for an image)."""
    if image_suffix(query) not in IMAGE_SUFFIXES or not Path(query).exists():
        if image_suffix(query) in IMAGE_SUFFIXES:
            raise BadData(f"{query}: no such image file")
        row = features.row_of(query)
        return np.asarray(features.vectors[row:row + 1], np.float32), row
    from .tta import embed_array

    if loaded is None:
        loaded = runs.load_model(run if run is not None else features.meta["run"], "best", "cpu", "auto")
    check_same_run(features, loaded)
    try:
        pixels = decode(query, loaded.prep)
    except BadImage as e:
        raise BadData(f"{query}: {e}") from None
    return embed_array(loaded.model, pixels[None], 1, loaded.policy)[0], None


def check_same_run(features: FeatureSet, loaded) -> None:
    if loaded.sha256 != features.meta["weights_sha256"]:
        raise BadRun(f"the features in {features.npy} come from weights {features.meta['weights_sha256'][:12]}... "
                     f"({features.meta['run']}), the query's model from {loaded.sha256[:12]}... ({loaded.weights}): "
                     f"features of different runs are not comparable; embed both with one run")


@dataclass
class Neighbours:
    query: str
    query_row: int | None
    rows: np.ndarray
    similarities: np.ndarray


def similar(features: FeatureSet, query: str, k: int = 12, *, run: str | Path | None = None,
            exact: bool | None = None, index: Index | None = None, loaded=None) -> Neighbours:
    """The ``k`` galaxies of ``features`` nearest to ``query`` (its own row left out)."""
    if k <= 0:
        raise BadArgument(f"-k {k}: ask for at least one neighbour")
    vector, row = query_vector(features, query, run, loaded)
    index = index or Index(features, exact)
    sims, rows = index.search(vector, k + (row is not None))
    keep = [(s, r) for s, r in zip(sims[0], rows[0]) if r >= 0 and r != row][:k]
    return Neighbours(query, row, np.array([r for _, r in keep], int), np.array([s for s, _ in keep], np.float32))


def oddest(features: FeatureSet, n: int, *, k: int = ODD_K, exact: bool | None = None,
           index: Index | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The rows of the ``n`` galaxies farthest from their ``k`` nearest neighbours (mean cosine distance), oddest
    first, and those distances."""
    if n <= 0:
        raise BadArgument(f"--odd {n}: ask for at least one galaxy")
    index = index or Index(features, exact)
    distance = np.empty(len(features), np.float32)
    for start in range(0, len(features), 8192):
        sims, rows = index.search(np.asarray(features.vectors[start:start + 8192], np.float32), k + 1)
        own = rows == np.arange(start, start + len(rows))[:, None]
        sims = np.where(own | (rows < 0), np.nan, sims)
        distance[start:start + len(rows)] = 1.0 - np.nanmean(sims[:, :k + 1], axis=1)
    order = np.argsort(-distance, kind="stable")[:n]
    return order, distance[order]


def top_answers(values: np.ndarray, steps: int = 3) -> list[str]:
    """The first ``steps`` steps of the majority path, as short lines: "shape: Smooth 81%"."""
    return [f"{s.question.name.replace('_', ' ')}: {s.answer.text} {s.share:.0%}"
            for s in tree.most_likely_path(values)[:steps]]


def _picture_and_lines(features: FeatureSet, images: str | Path | None):
    """(picture of a row, its most likely answers as gallery lines): what every gallery panel of features shows."""
    from .gallery import DISPLAY_SIDE

    crop = features.meta["crop"]
    display = Preprocess(crop, min(DISPLAY_SIDE, crop))

    def picture(row: int) -> np.ndarray:
        path = Path(features.files[row])
        if images is not None:
            path = Path(images) / path.name
        try:
            return decode(path, display)
        except BadImage as e:
            raise BadData(f"{path}: {e} (the galaxy's image; pass --images DIR where the images are now)") from None

    def lines(row: int | None) -> list[tuple[str, bool]]:
        if row is None or features.answers is None:
            return []
        return [(t, True) for t in top_answers(features.answers[row])]

    return picture, lines


def _caption(features: FeatureSet) -> str:
    return (f"features of {features.meta['model']} ({features.meta['weights_sha256'][:12]}...), cosine similarity; "
            f"lines: the run's most likely answers")


def draw(features: FeatureSet, found: Neighbours, out: str | Path, query_image: np.ndarray | None = None,
         images: str | Path | None = None) -> Path:
    """The gallery PNG: the query first, then its neighbours with their similarity and most likely answers."""
    from .gallery import plot_grid

    picture, lines = _picture_and_lines(features, images)
    q = found.query_row
    panels = [{"id": found.query, "title": f"query {features.ids[q] if q is not None else Path(found.query).name}",
               "image": query_image if q is None else picture(q), "lines": lines(q)}]
    panels += [{"id": features.ids[r], "title": f"{features.ids[r]}   cosine {s:.3f}", "image": picture(r),
                "lines": lines(r)} for r, s in zip(found.rows, found.similarities)]
    return plot_grid(panels, f"the {len(found.rows)} galaxies most like {panels[0]['title'][6:]} of {len(features)}",
                     _caption(features), Path(out))


def draw_oddest(features: FeatureSet, rows: np.ndarray, distance: np.ndarray, out: str | Path,
                images: str | Path | None = None) -> Path:
    """The gallery PNG of ``oddest``'s galaxies, oddest first, with their distance to their neighbours."""
    from .gallery import plot_grid

    picture, lines = _picture_and_lines(features, images)
    panels = [{"id": features.ids[r], "title": f"{features.ids[r]}   distance {d:.3f}", "image": picture(r),
               "lines": lines(r)} for r, d in zip(rows, distance)]
    return plot_grid(panels, f"the {len(rows)} galaxies farthest from their {ODD_K} nearest neighbours, of "
                             f"{len(features)}", _caption(features), Path(out))
