"""Galleries: grids of galaxies with their true and predicted answers -- a seeded random sample of a split, and its
worst-predicted galaxies -- so a person can see what a model gets right and wrong."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

from .. import runs, tree
from ..data.images import Preprocess, decode
from ..data.layout import open_layout
from ..errors import BadArgument, BadData, BadImage
from ..fsio import atomic_write, ensure_writable_dir
from ..metrics import rmse
from .evaluate import predict_split
from .plots import _pyplot
from .tta import check_tta

# The random grid shows the same galaxies for every run on the same data, so galleries of two models compare.
GALLERY_SEED = 0
MAX_GALLERY = 100  # galaxies per grid: more would not be readable in one PNG
DISPLAY_SIDE = 256  # at most this many pixels across per galaxy, decoded for display from the original file
PATH_STEPS = 3  # steps of the true majority path shown per galaxy


def galaxy_rmse(pred: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(N,) RMSE of each galaxy over its known answers (NaN for a galaxy with none)."""
    err = (np.asarray(pred, np.float64) - np.asarray(labels, np.float64)) ** 2
    m = np.ones_like(err, bool) if mask is None else np.asarray(mask, bool)
    n = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(np.where(m, err, 0.0).sum(axis=1) / n)


def worst_galaxies(pred: np.ndarray, labels: np.ndarray, mask: np.ndarray | None, n: int) -> np.ndarray:
    """Row indices of the ``n`` galaxies with the highest RMSE, worst first (ties in row order; galaxies without
    known answers never count as bad)."""
    r = galaxy_rmse(pred, labels, mask)
    order = np.argsort(-np.nan_to_num(r, nan=-np.inf), kind="stable")
    return order[: max(0, min(n, len(order)))]


def sample_galaxies(count: int, n: int, seed: int = GALLERY_SEED) -> np.ndarray:
    """``min(n, count)`` row indices drawn at random (seeded: the same rows every time), in row order."""
    k = min(n, count)
    return np.sort(np.random.default_rng(seed).choice(count, size=k, replace=False))


def question_label(q: tree.Question) -> str:
    """The question's short name for a panel (its full text does not fit): "bulge shape", "arm count", ..."""
    return q.name.replace("_", " ")


def _path_lines(true: np.ndarray, pred: np.ndarray) -> list[tuple[str, bool]]:
    """The first steps of the true majority path: (line, whether the model's top answer is the same)."""
    shares = tree.answer_shares(pred)
    lines = []
    for step in tree.most_likely_path(true)[:PATH_STEPS]:
        q = step.question
        pred_best = max(q.answers, key=lambda a: (shares[a.index], -a.index))
        agree = pred_best == step.answer
        text = (f"Q{q.number} {question_label(q)}: {step.answer.text} {step.share:.0%} | "
                f"{shares[step.answer.index]:.0%}" + ("" if agree else f" \u2192 {pred_best.text}"))
        lines.append((text, agree))
    return lines


# Grid geometry, in inches: each cell is a title line, the image (IMAGE_INSET from the cell's left), then PATH_STEPS
# lines of text starting under the image's left edge. The longest line ("Q1 shape: Features or disk 100% | 100% ->
# Star or artifact", 3.3 in at 8 pt) must end inside its cell, hence cells wider than the images (test_gallery
# checks it with that line in every panel).
CELL_W, IMAGE_SIDE, IMAGE_INSET, TITLE_H, LINE_H, CELL_GAP = 3.55, 2.6, 0.1, 0.28, 0.17, 0.2
TEXT_PT, TITLE_PT, HEADER_PT, LEGEND_PT = 8, 9.5, 11, 9
DPI = 110


def _grid_figure(panels: list[dict], title: str, legend: str):
    """The gallery figure: a header (title, legend), then one cell per panel (``id``, ``rmse`` or a ``title``,
    ``image``, ``lines`` as [(text, agree)]) in a square-ish grid."""
    plt = _pyplot()
    cols = math.ceil(math.sqrt(len(panels)))
    rows = math.ceil(len(panels) / cols)
    cell_h = TITLE_H + IMAGE_SIDE + PATH_STEPS * LINE_H + CELL_GAP
    width = cols * CELL_W + 0.2
    # Header: the title, then the legend, each wrapped to the figure's width (a character is ~0.55 em wide).
    header = [(line, HEADER_PT) for line in textwrap.wrap(title, int(width * 72 / (HEADER_PT * 0.55)))]
    header += [(line, LEGEND_PT) for line in textwrap.wrap(legend, int(width * 72 / (LEGEND_PT * 0.55)))]
    header_h = 0.2 + sum(pt * 1.35 / 72 for _, pt in header)
    height = header_h + rows * cell_h
    fig = plt.figure(figsize=(width, height))
    y = height - 0.1
    for line, pt in header:
        fig.text(0.5, y / height, line, ha="center", va="top", fontsize=pt)
        y -= pt * 1.35 / 72
    for k, panel in enumerate(panels):
        r, c = divmod(k, cols)
        image_left = 0.1 + c * CELL_W + IMAGE_INSET
        image_bottom = height - header_h - r * cell_h - TITLE_H - IMAGE_SIDE
        ax = fig.add_axes((image_left / width, image_bottom / height, IMAGE_SIDE / width, IMAGE_SIDE / height))
        ax.imshow(panel["image"], interpolation="lanczos")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(panel.get("title") or f"{panel['id']}   RMSE {panel['rmse']:.3f}", fontsize=TITLE_PT, pad=3)
        for i, (text, agree) in enumerate(panel["lines"]):
            fig.text(image_left / width, (image_bottom - 0.04 - i * LINE_H) / height, text, ha="left", va="top",
                     fontsize=TEXT_PT, color="black" if agree else "firebrick")
    return fig


def plot_grid(panels: list[dict], title: str, legend: str, out: Path) -> Path:
    plt = _pyplot()
    fig = _grid_figure(panels, title, legend)
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        plt.close(fig)
    return out


def plot_gallery(run: str | Path, data: str | Path, *, split: str = "valid", n: int = 16,
                 out_dir: str | Path | None = None, which: str = "best", tta: int = 1, device: str = "auto",
                 precision: str = "auto", cache_dir: str | Path | None = None, workers: int | None = None,
                 progress: bool = True) -> list[Path]:
    """Two grids of ``n`` galaxies of ``split`` with their true and predicted answers: a seeded random sample
    (``gallery_<split>.png``) and the highest-RMSE galaxies (``gallery_<split>_worst.png``), in ``out_dir`` (default:
    the run folder). Each galaxy shows its GalaxyID, its RMSE over the 37 answers, and the first steps of its true
    majority path with the true and the predicted vote share of each of those answers."""
    check_tta(tta)
    if not 1 <= n <= MAX_GALLERY:
        raise BadArgument(f"--n {n}: galaxies per grid must be between 1 and {MAX_GALLERY}")
    run = runs.run_folder(run)
    if runs.read_config(run).task:  # a clear error if this is not a run folder (or not the tree's), before anything slow
        raise BadArgument(f"{run} is fine-tuned on its own columns; the galleries show the 37 Galaxy Zoo answers")
    out_dir = ensure_writable_dir(out_dir if out_dir else run)
    done = predict_split(run, data, split, which=which, device=device, precision=precision, tta=tta,
                         cache_dir=cache_dir, workers=workers, progress=progress)
    loaded, cat, pred = done.loaded, done.labelled.catalogue, done.pred
    cfg = loaded.config
    per_galaxy = galaxy_rmse(pred, cat.labels, cat.mask)
    layout = open_layout(data)
    display = Preprocess(loaded.prep.crop, min(DISPLAY_SIDE, loaded.prep.crop))

    def panels(rows: np.ndarray) -> list[dict]:
        out = []
        for i in rows:
            path = layout.image_path(int(cat.ids[i]))
            try:
                image = decode(path, display)
            except BadImage as e:
                raise BadData(f"{path}: {e}") from None
            out.append({"id": int(cat.ids[i]), "rmse": float(per_galaxy[i]), "image": image,
                        "lines": _path_lines(cat.labels[i], pred[i])})
        return out

    views = f", {tta}-view TTA" if tta > 1 else ""
    who = f"{cfg.model} ({loaded.weights.name}{views})"
    legend = (f"central {loaded.prep.crop} px (what the model sees); per galaxy: GalaxyID, RMSE over its 37 answers, "
              f"and the first {PATH_STEPS} steps of its true majority path: answer, true vote share | predicted share "
              f"(red, with an arrow to it: the model's top answer differs)")
    sample = sample_galaxies(len(cat), n)
    worst = worst_galaxies(pred, cat.labels, cat.mask, n)
    all_rmse = rmse(pred, cat.labels, cat.mask)
    return [
        plot_grid(panels(sample), f"{who}: {len(sample)} random {split} galaxies of {len(cat)}, RMSE "
                   f"{rmse(pred[sample], cat.labels[sample], cat.mask[sample]):.4f} (all {len(cat)}: "
                   f"{all_rmse:.4f})", legend, out_dir / f"gallery_{split}.png"),
        plot_grid(panels(worst), f"{who}: the {len(worst)} worst-predicted of {len(cat)} {split} galaxies "
                   f"(all {len(cat)}: RMSE {all_rmse:.4f})", legend, out_dir / f"gallery_{split}_worst.png"),
    ]
