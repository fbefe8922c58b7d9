"""Small, fast fixture builders shared by the test files (import with ``from helpers import ...``).

Nothing here depends on :mod:`gzmorph.synth`: images are cheap random-ish pictures (a soft background, one blurred
blob, some noise) made with numpy + Pillow, and labels are random but satisfy every tree sum because they come from
``tree.normalise(torch.randn(n, 37))``. Everything is seeded, so the same arguments write the same bytes.

Builders
--------
``tree_labels(n, seed)``                 (n, 37) float64 tree-consistent labels, rounded to 6 decimals like Kaggle.
``random_image(size, seed)``             (size, size, 3) uint8 random-ish galaxy-like picture.
``write_image(path, ...)``               one JPEG (or PNG by suffix; ``grey=True`` for an L-mode file).
``write_csv(path, header, rows)``        a CSV from a header list and rows of cells (numbers formatted with 6 decimals).
``write_catalogue(path, ids, labels, columns=None)``  a Kaggle-layout catalogue with some or all of the 37 columns.
``write_kaggle_folder(root, n, seed, ...)``          a complete tiny Kaggle-layout data folder (see its docstring).
``make_fake_run(run, model="seed-cnn")``             an untrained but loadable run folder (config + weights).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from gzmorph import tree
from gzmorph.data.layout import (PARTIAL_SOLUTIONS as PARTIAL, SOLUTIONS, SPLITS, TEST_IMAGES, TRAIN_IMAGES,
                                 KaggleLayout)

# The columns a helper-made partial catalogue keeps: questions 1, 2, 6 and 7 (9 of the 37 columns).
PARTIAL_QUESTIONS = (1, 2, 6, 7)


def tree_labels(n: int, seed: int = 0) -> np.ndarray:
    """(n, 37) float64 labels satisfying every tree sum (rounded to 6 decimals, as in Kaggle's file)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, tree.N_OUTPUTS, generator=g, dtype=torch.float64) * 1.5
    return np.round(tree.normalise(scores).numpy(), 6)


def random_image(size: int = 424, seed: int = 0) -> np.ndarray:
    """A (size, size, 3) uint8 picture: dark sky, one soft coloured blob near the centre, mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    cx, cy = rng.uniform(-0.08, 0.08, 2)
    sigma = rng.uniform(0.05, 0.15)
    q = rng.uniform(0.4, 1.0)
    angle = rng.uniform(0, np.pi)
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = (-(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)) / q
    blob = np.exp(-(u * u + v * v) / (2 * sigma * sigma))
    colour = rng.uniform(120, 230, 3)
    img = 10 + blob[..., None] * colour.astype(np.float32) + 4 * rng.standard_normal((size, size, 3), np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image(path: str | Path, size: int = 424, seed: int = 0, *, grey: bool = False,
                pixels: np.ndarray | None = None, quality: int = 90) -> Path:
    """Write ``pixels`` (or ``random_image(size, seed)``) to ``path``; the format follows the suffix (.jpg/.png)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = random_image(size, seed) if pixels is None else np.asarray(pixels, np.uint8)
    im = Image.fromarray(arr)
    if grey:
        im = im.convert("L")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, format="JPEG", quality=quality)
    else:
        im.save(path)
    return path


def _cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6f}"
    return str(v)


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence], *, bom: bool = False) -> Path:
    """Write a CSV; float cells are written with 6 decimals, anything else with ``str``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(list(header))
        for r in rows:
            w.writerow([_cell(v) for v in r])
    return path


def write_catalogue(path: str | Path, ids: Sequence[int], labels: np.ndarray,
                    columns: Sequence[str] | None = None) -> Path:
    """A Kaggle-layout catalogue: GalaxyID + ``columns`` (default all 37) taken from the (n, 37) ``labels``."""
    columns = list(tree.COLUMNS if columns is None else columns)
    pos = [tree.COLUMN_INDEX[c] for c in columns]
    rows = ([int(i), *(float(labels[k, p]) for p in pos)] for k, i in enumerate(ids))
    return write_csv(path, ["GalaxyID", *columns], rows)


@dataclass
class KaggleFolder:
    """What :func:`write_kaggle_folder` wrote."""

    root: Path
    ids: np.ndarray  # GalaxyIDs of training_solutions_rev1.csv, in file order
    labels: np.ndarray  # (n, 37) float64, the values written for ``ids``
    partial_ids: np.ndarray  # GalaxyIDs of training_solutions_partial.csv (empty if none)
    partial_labels: np.ndarray  # (n_partial, 37): the full labels the partial rows were cut from
    partial_columns: list[str]  # columns kept in the partial file
    splits: dict[int, str] = field(default_factory=dict)  # GalaxyID -> split, as written to splits.csv ({} if none)
    test_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __getattr__(self, name: str):
        # The folder's paths (training_images, test_images, solutions, splits, ...) are gzmorph's own layout.
        if name.startswith("_") or name in self.__dataclass_fields__:
            raise AttributeError(name)
        return getattr(KaggleLayout(self.root), name)

    def image(self, galaxy_id: int) -> Path:
        return self.training_images / f"{galaxy_id}.jpg"

    def ids_of(self, split: str) -> list[int]:
        return [i for i, s in self.splits.items() if s == split]


def write_kaggle_folder(root: str | Path, n: int = 20, seed: int = 0, *, partial_rows: int = 0, splits: bool = True,
                        image_size: int = 424, test_images: int = 0) -> KaggleFolder:
    """Write a tiny but valid Kaggle-layout data folder under ``root`` (created if needed) and describe it.

    * ``training_solutions_rev1.csv``: ``n`` galaxies, all 37 columns, tree-consistent labels.
    * ``images_training_rev1/<GalaxyID>.jpg``: one real JPEG of ``image_size`` px per labelled galaxy
      (partial rows included).
    * ``training_solutions_partial.csv`` (only if ``partial_rows`` > 0): that many further galaxies with only the
      columns of questions :data:`PARTIAL_QUESTIONS`.
    * ``splits.csv`` (only if ``splits``): the full catalogue's galaxies split roughly 60/20/20 into
      train/valid/test, each split non-empty (needs ``n`` >= 3). Partial galaxies are not listed (they are train).
    * ``images_test_rev1/<GalaxyID>.jpg`` (only if ``test_images`` > 0): unlabelled images.

    GalaxyIDs are 6-digit, distinct across all three groups, and depend only on ``seed``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    all_ids = 100000 + np.sort(rng.choice(900000, size=n + partial_rows + test_images, replace=False))
    all_ids = rng.permutation(all_ids).astype(np.int64)
    ids, partial_ids, test_ids = (all_ids[:n], all_ids[n:n + partial_rows], all_ids[n + partial_rows:])

    labels = tree_labels(n + partial_rows, seed)
    full_labels, partial_labels = labels[:n], labels[n:]
    write_catalogue(root / SOLUTIONS, ids, full_labels)
    partial_columns = tree.columns_of(PARTIAL_QUESTIONS)
    if partial_rows:
        write_catalogue(root / PARTIAL, partial_ids, partial_labels, partial_columns)

    for k, gid in enumerate(np.concatenate([ids, partial_ids])):
        write_image(root / TRAIN_IMAGES / f"{gid}.jpg", image_size, seed * 100_003 + k)
    (root / TRAIN_IMAGES).mkdir(exist_ok=True)
    for k, gid in enumerate(test_ids):
        write_image(root / TEST_IMAGES / f"{gid}.jpg", image_size, seed * 100_003 + 50_000 + k)

    split_of: dict[int, str] = {}
    if splits:
        if n < 3:
            raise ValueError("splits=True needs n >= 3 so that train, valid and test are all non-empty")
        n_valid = n_test = max(1, round(0.2 * n))
        names = ["valid"] * n_valid + ["test"] * n_test + ["train"] * (n - n_valid - n_test)
        names = list(rng.permutation(names))
        split_of = {int(i): s for i, s in zip(ids, names)}
        write_csv(root / SPLITS, ["GalaxyID", "split"], split_of.items())
    return KaggleFolder(root, ids, full_labels, partial_ids, partial_labels, partial_columns, split_of, test_ids)


def make_fake_run(run: str | Path, model: str = "seed-cnn", *, data: str = "", seed: int = 0) -> Path:
    """An untrained run folder that evaluate/predict can load: config.json, best/model weights, train_mean.json.

    The weights are the model's random initialisation (seeded); no training happens, so this takes milliseconds.
    """
    from gzmorph import runs
    from gzmorph.config import TrainConfig
    from gzmorph.models import create_model, resolve_recipe

    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    cfg = resolve_recipe(TrainConfig(data=data, out=str(run), model=model, seed=seed))
    torch.manual_seed(seed)
    net = create_model(cfg.model, head=cfg.head, **cfg.model_options)
    runs.write_config(run, cfg)
    runs.save_weights(run / runs.BEST, net, {"epoch": "0"})
    runs.save_weights(run / runs.LAST, net, {"epoch": "0"})
    runs.write_train_mean(run, np.full(tree.N_OUTPUTS, 0.1, np.float32))
    return run


def cli_fails(capsys, argv, *needles: str) -> str:
    """Run the CLI: it must exit 2 with exactly one 'gzmorph: error:' line (no traceback) holding every needle.
    Returns the message after the prefix."""
    from gzmorph.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, f"exit status {code}; stdout: {out}; stderr: {err}"
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("gzmorph: error: "), lines[0]
    msg = lines[0][len("gzmorph: error: "):]
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg
