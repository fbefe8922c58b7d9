"""A run's interval calibration: made from held-out labelled galaxies, kept in RUN/calibration.json.

    gzmorph calibrate RUN --data DIR [--split valid] [--tta 8]        # the run's valid split of a Kaggle folder
    gzmorph calibrate RUN --labels FILE.csv --images DIR [--tta 8]     # your own 37-column catalogue + its images

The file holds what :func:`gzmorph.inference.intervals.intervals` needs at any level (per answer its eps and its
sorted nonconformity scores, rounded up to 4 significant digits so that rounding can only widen an interval), the
TTA views and the SHA-256 of the weights the scores were measured with, and the galaxies they came from. Predictions
made with other weights or another number of views have errors and spreads on another scale, so
:func:`check_calibration` refuses them instead of giving intervals that look calibrated and are not.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from .. import runs, tree
from ..errors import BadArgument, BadData, BadRun
from ..fsio import atomic_write_text, check_output_file
from ..version import __version__
from .intervals import Calibration, fit_calibration

log = logging.getLogger("gzmorph")

CALIBRATION = "calibration.json"
FORMAT = "gzmorph-calibration/1"
METHOD = ("split-conformal, normalised: score = |volunteers' value - prediction| / (spread over the TTA views + eps); "
          "interval at level a = prediction -/+ (ceil((n+1) a)-th smallest score) x (spread + eps), clipped to "
          "[0, 1] for Q1 and Q6, below them to [0, the parent answer's upper bound at level 1 - (1 - a) / 10]")
SIGNIFICANT_DIGITS = 4


def _round_up(x: float) -> float:
    """``x`` (>= 0) to :data:`SIGNIFICANT_DIGITS` digits, never below ``x``: a stored score may only make an
    interval wider, never narrower than the one calibrated."""
    text = f"{x:.{SIGNIFICANT_DIGITS - 1}e}"
    if float(text) < x:
        mantissa, exponent = text.split("e")
        text = f"{float(mantissa) + 10.0 ** (1 - SIGNIFICANT_DIGITS):.{SIGNIFICANT_DIGITS - 1}f}e{exponent}"
    return float(text)


def to_json(cal: Calibration, extra: dict | None = None) -> str:
    """The calibration as JSON text: the header (with ``extra`` fields) indented, each answer's scores on one line
    (about 7 characters a score, so 1,000 galaxies x 37 answers stay near 250 kB)."""
    head = {"format": FORMAT, "gzmorph_version": __version__, "method": METHOD, "tta": cal.tta,
            "weights_sha256": cal.weights_sha256, **(extra or {}), "n_galaxies": cal.n_galaxies, "data": cal.data}
    lines = [json.dumps(head, indent=2)[:-2] + ",", '  "answers": {']
    for j, column in enumerate(tree.COLUMNS):
        entry = {"eps": _round_up(float(cal.eps[j])), "scores": [_round_up(float(s)) for s in cal.scores[j]]}
        lines.append(f"    {json.dumps(column)}: {json.dumps(entry, separators=(',', ':'))}"
                     + ("," if j < tree.N_OUTPUTS - 1 else ""))
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def from_json(text: str, source: str | Path) -> Calibration:
    """A :class:`Calibration` from :func:`to_json`'s text, or a clear :class:`BadRun` naming ``source``."""
    try:
        d = json.loads(text)
        if d.get("format") != FORMAT:
            raise ValueError(f"format {d.get('format')!r}, expected {FORMAT!r}")
        answers = d["answers"]
        missing = [c for c in tree.COLUMNS if c not in answers]
        if missing:
            raise ValueError(f"no scores for {missing[:5]}")
        eps = np.array([float(answers[c]["eps"]) for c in tree.COLUMNS])
        scores = [np.sort(np.asarray(answers[c]["scores"], np.float64)) for c in tree.COLUMNS]
        if any(len(s) == 0 or not np.isfinite(s).all() or (s < 0).any() for s in scores) or (eps <= 0).any():
            raise ValueError("empty, negative or non-finite scores, or an eps that is not positive")
        return Calibration(eps, scores, int(d["tta"]), str(d["weights_sha256"]), dict(d.get("data") or {}))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadRun(f"{source}: unreadable calibration ({e}); recalibrate with `gzmorph calibrate RUN --data DIR`") \
            from None


def calibration_path(run: str | Path | None) -> Path:
    """Where ``run``'s calibration lives: RUN/calibration.json, or for the model inside gzmorph the file that ships
    beside its weights (read in place: nothing of the packaged model is copied into the cache)."""
    from .. import pretrained

    return pretrained.CALIBRATION if pretrained.is_alias(run) else Path(run) / CALIBRATION


def save_calibration(run: str | Path | None, cal: Calibration, out: str | Path | None = None) -> Path:
    """Write ``cal`` to ``out``, or to RUN/calibration.json; the packaged model's own calibration is the package's,
    so a user's calibration of it goes to ``./gznet-gz2/calibration.json`` (give it to predict as ``--calibration``).
    Atomic: a reader sees the old file or the new one."""
    from .. import pretrained

    if out is None:
        out = Path(pretrained.NAME) / CALIBRATION if pretrained.is_alias(run) else Path(run) / CALIBRATION
    out = check_output_file(out, CALIBRATION)
    atomic_write_text(out, to_json(cal))
    return out


def load_calibration(run: str | Path | None, path: str | Path | None = None) -> Calibration:
    """The calibration in ``path``, or of ``run`` (a run folder, or ``pretrained``/None for the model inside
    gzmorph)."""
    path = Path(path) if path is not None else calibration_path(run)
    if not path.is_file():
        name = runs.run_name(run)
        raise BadRun(f"{path}: not calibrated for intervals (no such file); calibrate {name} on held-out labelled galaxies first: "
                     f"`gzmorph calibrate {name} --data DIR`" if path.name == CALIBRATION else f"{path}: no such file")
    return from_json(path.read_text(), path)


def check_calibration(cal: Calibration, weights_sha256: str, tta: int, source: str = "the calibration") -> None:
    """Refuse predictions that ``cal`` does not describe: other weights, or a spread over another number of views."""
    if cal.weights_sha256 != weights_sha256:
        raise BadRun(f"{source} was made for weights with SHA-256 {cal.weights_sha256[:16]}..., but these weights "
                     f"are {weights_sha256[:16]}...; their errors differ, so recalibrate: `gzmorph calibrate RUN "
                     f"--data DIR`")
    if cal.tta != tta:
        raise BadArgument(f"{source} was made with --tta {cal.tta}: the spread over {tta} view(s) is on another "
                          f"scale, so predict with --tta {cal.tta}, or recalibrate with --tta {tta}")


def calibration_for(run: str | Path | None, loaded: runs.LoadedModel, tta: int,
                    path: str | Path | None = None) -> Calibration:
    """The calibration of ``run`` (or the file ``path``), checked against the model about to predict
    (``runs.load_model``) and its views: what `predict --interval` and the Python API need before computing
    intervals. ``tta`` 1 (no views asked for: there is no spread over one view) means the calibration's own views,
    which the caller then predicts with (``cal.tta``)."""
    path = Path(path) if path is not None else calibration_path(run)
    cal = load_calibration(run, path)
    check_calibration(cal, loaded.sha256, cal.tta if tta == 1 else tta, str(path))
    if tta == 1 and cal.tta != 1:
        log.info("--interval: predicting with the calibration's %d views (--tta %d)", cal.tta, cal.tta)
    return cal


def _ids_digest(ids: np.ndarray) -> str:
    """A short fingerprint of which galaxies calibrated, so two calibrations can be told apart without the list."""
    return hashlib.sha256(",".join(map(str, np.sort(np.asarray(ids, np.int64)))).encode()).hexdigest()


def calibrate_run(run: str | Path | None = None, data: str | Path | None = None, *, split: str = "valid",
                  labels: str | Path | None = None, images: str | Path | None = None, tta: int = 8,
                  which: str = "best", batch_size: int = 256, device: str = "auto", precision: str = "auto",
                  skip_bad: bool = False, cache_dir: str | Path | None = None, workers: int | None = None,
                  progress: bool = True, write: bool = True, out: str | Path | None = None) -> Calibration:
    """Calibrate ``run``'s intervals on held-out labelled galaxies and (with ``write``) save RUN/calibration.json.

    The galaxies are either ``split`` ("valid", or "test") of the Kaggle-layout folder ``data``, or the catalogue
    ``labels`` (GalaxyID + all 37 Kaggle columns) with its images in the folder ``images``. Nothing is written
    until everything has been read and computed, so a bad input leaves an existing calibration as it was."""
    from ..data.catalogue import read_catalogue
    from ..data.labelled import attach_images, load_labelled
    from ..data.layout import ImageFolder
    from ..precision import pick_device
    from .tta import check_tta, predict_answers

    check_tta(tta)
    if tta < 2:
        raise BadArgument("calibrated intervals are normalised by the spread over the TTA views: use --tta 8 "
                          "(or 2, 4, 16, 32)")
    if (data is None) == (labels is None):
        raise BadArgument("calibrate needs either --data DIR (a Kaggle-layout folder; its --split is used) or "
                          "--labels FILE.csv with --images DIR, not both")
    if labels is not None and images is None:
        raise BadArgument("--labels needs --images DIR, the folder of its galaxies' images")
    if data is not None and split not in ("valid", "test"):
        raise BadArgument(f"--split {split!r}: calibrate on held-out galaxies, 'valid' (or 'test'), never on the "
                          f"galaxies a run trained on")
    if labels is not None:
        cat = read_catalogue(labels, require_all=True)  # a file without the run's 37 columns fails here, at once
    folder = runs.run_folder(run)
    loaded = runs.load_model(folder, which, pick_device(device), precision)
    if loaded.config.task:
        raise BadArgument(f"{run} is fine-tuned on its own columns; intervals are calibrated for the 37 Galaxy Zoo "
                          f"answers")
    if labels is not None:
        if len(cat) == 0:
            raise BadData(f"{labels}: no galaxies")
        found = attach_images(ImageFolder(images), cat, loaded.prep, skip_bad=skip_bad, split="calibration",
                              cache_dir=cache_dir, workers=workers, progress=progress)
        source = {"labels": str(labels), "images": str(images)}
    else:
        found = load_labelled(data, loaded.prep, (split,), use_partial=False,
                              valid_fraction=loaded.config.valid_fraction, seed=loaded.config.seed,
                              skip_bad=skip_bad, cache_dir=cache_dir, workers=workers, progress=progress)[split]
        source = {"data": str(data), "split": split}
        if split == "valid" and loaded.config.train_on_valid:
            # Its valid galaxies are training galaxies: their errors are smaller than new galaxies' errors.
            log.warning("%s also trained on its valid split (train_on_valid): intervals calibrated there may be a "
                        "little narrow; calibrate on galaxies it never saw (--labels/--images) where you can",
                        runs.run_name(run))
            source["run_trained_on_these_galaxies"] = True
    pred, spread = predict_answers(loaded, found.pixels, batch_size, tta, spread=True)
    c = found.catalogue
    source.update({"n_galaxies": len(c), "galaxy_ids_sha256": _ids_digest(c.ids), "which": loaded.weights.name})
    cal = fit_calibration(pred, spread, c.labels, c.mask, tta=tta, weights_sha256=loaded.sha256, data=source)
    if write:
        save_calibration(run, cal, out)
    return cal
