"""Calibrated intervals for the 37 answers: split-conformal prediction, normalised by each answer's TTA spread.

For every held-out labelled galaxy of a calibration set and every answer, the nonconformity score is

    score = |volunteers' value - predicted value| / (spread over the TTA views + eps)

``eps`` is a per-answer constant, chosen on the calibration set among multiples of the answer's median spread (the
largest of them makes the score an unnormalised, constant-width one): the spread is a weak difficulty score for some
answers (Spearman 0.26 with the error for Q1) and a strong one for others (up to 0.97 for Q9-Q11), so each answer
takes the mixture that gives it the narrowest intervals. (Choosing one of eight score functions on the calibration
galaxies themselves bends the guarantee below by a little; choosing per level, as tried, bent it by a point at 0.9,
so one eps serves every level.) For a level ``a`` the interval of a new galaxy is

    predicted value -/+ q_a * (its spread + eps),   q_a = the ceil((n+1) a)-th smallest of the n scores

which, when the new galaxy is exchangeable with the calibration galaxies, holds the volunteers' value with
probability at least ``a`` (split-conformal's finite-sample guarantee; where ceil((n+1) a) > n the set is too small
for that level and the interval is the whole allowed range). The interval is then clipped to what the tree allows:
[0, 1] for Q1 and Q6, below them [0, an upper bound of the parent answer]. Which bound matters: a child's true value
can be as large as its parent's true value, so a cap below the parent's true value cuts off the child. The parent's
*predicted* value is below its true value about half the time (on the test split it costs 3 points of coverage at
0.9, 4 at 0.95); the parent's upper bound at the same level still cuts off children whenever the parent is missed
(2-3 points on synthetic data at 0.5). So the cap is the parent's upper bound at a level ten times surer
(1 - (1 - a) / 10: 0.99 for a = 0.9), which costs at most a tenth of the misses and keeps nearly all of the
narrowing (measured in ``benchmarks/uncertainty.py``).

Everything here is numpy on (N, 37) arrays; running a model and the calibration file live in
:mod:`gzmorph.inference.calibration`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import tree
from ..errors import BadArgument, BadData

# eps candidates, as multiples of an answer's median spread on the calibration set. The last is large enough that
# the spread no longer matters: a constant-width interval, the fallback for answers whose spread ranks nothing.
EPS_MULTIPLES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 1e6)
# eps is chosen for the narrowest mean width over these levels together, so no single level decides.
EPS_LEVELS = (0.5, 0.8, 0.9, 0.95)
# A spread of exactly 0 (an answer every view agrees on to float precision) must not make a score infinite.
EPS_FLOOR = 1e-4
MIN_GALAXIES = 10
# A child's interval is capped by its parent's upper bound at a level this many times surer (see cap_level).
CAP_STRICTNESS = 10.0


def check_interval_options(interval: float | None, calibration) -> None:
    """``--interval`` and ``--calibration`` as predict, embed and the API take them: a level in (0, 1), and a
    calibration file only with a level."""
    if interval is not None:
        check_level(interval)
    elif calibration is not None:
        raise BadArgument("--calibration is for --interval LEVEL; give both")


def check_level(level: float) -> float:
    """``level`` as a float strictly between 0 and 1, or a clear :class:`BadArgument`."""
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise BadArgument(f"--interval must be a confidence level between 0 and 1 (e.g. 0.9), got {level!r}") \
            from None
    if not (0.0 < value < 1.0) or math.isnan(value):
        raise BadArgument(f"--interval must be a confidence level strictly between 0 and 1 (e.g. 0.9 for 90 %), "
                          f"got {level}")
    return value


def conformal_rank(n: int, level: float) -> int:
    """The 1-based rank ceil((n + 1) * level) of the conformal quantile among ``n`` scores (may exceed ``n``)."""
    # The small tolerance keeps (n + 1) * level from landing just above an integer through float rounding.
    return int(math.ceil((n + 1) * level - 1e-9))


def conformal_quantile(sorted_scores: np.ndarray, level: float) -> float:
    """Split-conformal quantile of ascending ``sorted_scores`` at ``level``: the ceil((n+1) level)-th smallest
    score, or infinity when the set is too small for the level (then no finite interval is guaranteed)."""
    level = check_level(level)
    k = conformal_rank(len(sorted_scores), level)
    return float("inf") if k > len(sorted_scores) else float(sorted_scores[k - 1])


def _check_arrays(**arrays: np.ndarray) -> int:
    n = None
    for name, a in arrays.items():
        if a.ndim != 2 or a.shape[1] != tree.N_OUTPUTS:
            raise BadData(f"{name} must be an (N, {tree.N_OUTPUTS}) array of the 37 answers, got shape {a.shape}")
        if n is not None and len(a) != n:
            raise BadData(f"{name} has {len(a)} rows, the other arrays {n}")
        n = len(a)
    return n


def clip_to_tree(lower: np.ndarray, upper: np.ndarray,
                 cap: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Clip (N, 37) bounds to what the decision tree allows: [0, 1] for Q1 and Q6, below them [0, the parent
    answer's value in ``cap``], or with no ``cap`` [0, the parent's own clipped upper bound] (applied root first,
    so a grandparent's bound reaches its grandchildren)."""
    lower = np.clip(lower, 0.0, 1.0)
    upper = np.clip(upper, 0.0, 1.0)
    for qi in tree.TOPOLOGICAL_ORDER:  # a parent's bound is final before its children read it
        parent = tree.PARENT_INDEX[qi]
        if parent < 0:
            continue
        limit = upper[:, parent] if cap is None else np.clip(cap[:, parent], 0.0, 1.0)
        sl = tree.QUESTIONS[qi].slice
        upper[:, sl] = np.minimum(upper[:, sl], limit[:, None])
    return np.minimum(lower, upper), upper


@dataclass
class Calibration:
    """What the intervals of one run need at any level: per answer its eps and its calibration scores, sorted.

    ``tta`` and ``weights_sha256`` say which predictions the scores belong to (a spread over other views, or another
    model's errors, are on another scale); ``data`` says which galaxies they came from."""

    eps: np.ndarray  # (37,) per-answer constant added to the spread
    scores: list[np.ndarray]  # 37 ascending arrays (an answer's unknown labels are left out, so lengths may differ)
    tta: int
    weights_sha256: str
    data: dict = field(default_factory=dict)

    def quantiles(self, level: float) -> np.ndarray:
        """(37,) the conformal quantile of every answer's scores at ``level`` (inf where too few scores)."""
        level = check_level(level)
        return np.array([conformal_quantile(s, level) for s in self.scores])

    @property
    def n_galaxies(self) -> int:
        return max(len(s) for s in self.scores)


def difficulty(spread: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """(N, 37) the scale an interval grows with: the answer's spread over the views plus its eps."""
    return np.asarray(spread, np.float64) + np.asarray(eps, np.float64)[None, :]


def _choose_eps(values: np.ndarray, spread: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per answer, the eps (a multiple of its median spread) whose in-sample intervals, clipped to [0, 1], are
    narrowest on average over :data:`EPS_LEVELS`."""
    base = np.maximum(np.median(spread, axis=0), EPS_FLOOR)
    residual = np.abs(labels - values)
    best_eps, best_width = np.empty(tree.N_OUTPUTS), np.full(tree.N_OUTPUTS, np.inf)
    for multiple in EPS_MULTIPLES:
        eps = multiple * base
        scale = difficulty(spread, eps)
        width = np.zeros(tree.N_OUTPUTS)
        for j in range(tree.N_OUTPUTS):
            known = mask[:, j]
            scores = np.sort(residual[known, j] / scale[known, j])
            for level in EPS_LEVELS:
                half = conformal_quantile(scores, level) * scale[known, j]
                if not np.isfinite(half).all():
                    half = np.full_like(half, 1.0)
                lo = np.clip(values[known, j] - half, 0, 1)
                hi = np.clip(values[known, j] + half, 0, 1)
                width[j] += (hi - lo).mean()
        better = width < best_width
        best_eps[better], best_width[better] = eps[better], width[better]
    return best_eps


def fit_calibration(values: np.ndarray, spread: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None, *,
                    tta: int, weights_sha256: str, data: dict | None = None) -> Calibration:
    """A :class:`Calibration` from a run's predictions (``values``), their spread over ``tta`` views and the
    volunteers' ``labels`` for held-out galaxies, all (N, 37); ``mask`` marks the known labels (default: all)."""
    values, spread, labels = (np.asarray(a, np.float64) for a in (values, spread, labels))
    mask = np.ones(labels.shape, bool) if mask is None else np.asarray(mask, bool)
    n = _check_arrays(values=values, spread=spread, labels=labels, mask=mask)
    if n < MIN_GALAXIES:
        raise BadData(f"{n} calibration galaxies are too few: give at least {MIN_GALAXIES} (about 1,000 give "
                      f"intervals within a point or two of their level)")
    if tta < 2:
        raise BadArgument("calibrated intervals are normalised by the spread over the TTA views: use --tta 8 "
                          "(or 2, 4, 16, 32)")
    if not (np.isfinite(values).all() and np.isfinite(spread).all() and np.isfinite(labels[mask]).all()):
        raise BadData("the calibration predictions or labels hold NaN or infinite values")
    bare = [tree.COLUMNS[j] for j in range(tree.N_OUTPUTS) if mask[:, j].sum() < MIN_GALAXIES]
    if bare:
        raise BadData(f"fewer than {MIN_GALAXIES} calibration galaxies know the answers {bare[:5]}; calibrate on a "
                      f"file with all 37 columns")
    eps = _choose_eps(values, spread, labels, mask)
    scores = np.abs(labels - values) / difficulty(spread, eps)
    return Calibration(eps, [np.sort(scores[mask[:, j], j]) for j in range(tree.N_OUTPUTS)], int(tta),
                       weights_sha256, dict(data or {}))


def cap_level(level: float) -> float:
    """The level of the parent bounds that cap a child's interval at ``level``: ten times surer, so that a parent
    value above its cap (which would cut off a child near its parent) costs at most a tenth of the misses."""
    return 1.0 - (1.0 - level) / CAP_STRICTNESS


def intervals(calibration: Calibration, values: np.ndarray, spread: np.ndarray, level: float,
              cap: str = "parent_upper") -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper), each (N, 37): the calibrated interval of every answer at ``level`` (0 < level < 1) for
    predictions ``values`` and their ``spread`` over the calibration's TTA views, clipped to the tree: [0, 1] for Q1
    and Q6, below them [0, the parent's upper bound at :func:`cap_level`] (``cap="parent_upper"``), or [0, the
    parent's predicted value] (``cap="parent_value"``: narrower, but it cuts off every galaxy whose parent the
    model underestimates; measured in benchmarks/uncertainty.py). The caller checks that the predictions come from
    the calibrated weights and views (:func:`gzmorph.inference.calibration.check_calibration`)."""
    level = check_level(level)
    if cap not in ("parent_upper", "parent_value"):
        raise BadArgument(f"cap must be 'parent_upper' or 'parent_value', got {cap!r}")
    values, spread = np.asarray(values, np.float64), np.asarray(spread, np.float64)
    _check_arrays(values=values, spread=spread)
    scale = difficulty(spread, calibration.eps)

    def bounds(at: float) -> tuple[np.ndarray, np.ndarray]:
        half = calibration.quantiles(at)[None, :] * scale
        with np.errstate(invalid="ignore"):  # an infinite quantile: the whole range, clipped by clip_to_tree
            return values - half, values + half

    if cap == "parent_value":
        parent_cap = values
    else:
        parent_cap = clip_to_tree(*bounds(cap_level(level)))[1]
    return clip_to_tree(*bounds(level), parent_cap)
