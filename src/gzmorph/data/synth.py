"""Synthetic galaxies in the layout of Kaggle's "Galaxy Zoo - The Galaxy Challenge".

The demo and the tests need a data set when the real one (about 60 000 SDSS cut-outs and their vote fractions) is
absent. This module makes one: labels that satisfy the decision tree like volunteer votes do, and 424x424 JPEGs
whose look follows those labels, so that a CNN trained on them learns something real and a broken pipeline shows.

How a galaxy is made:

1. ``sample_labels`` draws a latent kind (smooth elliptical, face-on disk, edge-on disk, star/artifact), a "true"
   answer to every question, and a clarity (how much volunteers agree). Each question's vote fractions are a
   Dirichlet draw concentrated on the true answer; the fractions are then weighted down the tree as in Kaggle's file.
2. ``render_galaxy`` reads only the 37 label values (not the latent kind), turns each question's vote fractions into
   rendering strengths (e.g. the expected axis ratio over Q7's answers) and draws the components with numpy, so a
   galaxy with mixed votes looks in-between. Size, brightness, orientation, sky noise and field objects are random
   nuisances drawn from the galaxy's own generator.

Every image has its own generator seeded from (seed, split, index), so the output does not depend on the number of
worker processes, and the same seed gives byte-identical files.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
from pathlib import Path

import numpy as np
from PIL import Image

from .. import tree
from ..errors import BadArgument, BadData
from .layout import ID_COLUMN, SOLUTIONS, TEST_IMAGES, TRAIN_IMAGES

IMAGE_SIZE = 424
JPEG_QUALITY = 90
DECIMALS = 6  # as in Kaggle's solutions file

# Kaggle's GalaxyIDs are 6-digit ints. Ours: training 100000 + 7k, test 100003 + 7k, so the two never meet.
_ID_BASE, _ID_STEP, _TEST_ID_SHIFT = 100000, 7, 3
MAX_IMAGES_PER_SPLIT = (999999 - _ID_BASE - _TEST_ID_SHIFT) // _ID_STEP + 1

# --------------------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------------------

KINDS = ("smooth", "disk_face_on", "disk_edge_on", "star_or_artifact")
_KIND_PROBS = (0.42, 0.33, 0.15, 0.10)

# For each question, how often each answer is the galaxy's "true" one, per latent kind (one row per KINDS entry; a
# single row applies to every kind). Where a question is not reached by a kind (Q3 for an elliptical), its answer
# hardly matters: the tree weights it by a small parent fraction.
_TRUE_ANSWER_PROBS: dict[str, list[list[float]]] = {
    "shape": [[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]],
    "edge_on": [[0.1, 0.9], [0, 1], [1, 0], [0.1, 0.9]],
    "bar": [[0.1, 0.9], [0.3, 0.7], [0.05, 0.95], [0.1, 0.9]],
    "spiral": [[0.1, 0.9], [0.65, 0.35], [0.1, 0.9], [0.1, 0.9]],
    "bulge": [[0.12, 0.43, 0.37, 0.08]],
    "odd": [[0.2, 0.8], [0.2, 0.8], [0.2, 0.8], [0.05, 0.95]],
    "roundness": [[0.35, 0.45, 0.2]],
    "odd_feature": [[0.15, 0.07, 0.15, 0.15, 0.1, 0.28, 0.1]],
    "bulge_shape": [[0.45, 0.15, 0.4]],
    "arm_winding": [[0.3, 0.4, 0.3]],
    "arm_count": [[0.1, 0.5, 0.12, 0.08, 0.05, 0.15]],
}
# Dirichlet parameters: every answer gets _VOTE_FLOOR (a few volunteers always disagree), the true one gets
# clarity on top. Low clarity = faint, ambiguous galaxy with split votes; high clarity = near-unanimous.
_VOTE_FLOOR = 0.35
_CLARITY_RANGE = (1.0, 30.0)


def _log_uniform(rng: np.random.Generator, low: float, high: float, size=None):
    return np.exp(rng.uniform(math.log(low), math.log(high), size))


def _categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One draw per row of ``probs`` (n, k)."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(probs))[:, None] * cdf[:, -1:]
    return np.minimum((u >= cdf).sum(axis=1), probs.shape[1] - 1)


def sample_labels(n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw ``n`` galaxies' labels: (n, 37) float64 satisfying every tree sum, and the latent parameters.

    Latent parameters: ``kind`` (n,) index into KINDS, ``true_answer`` (n, 11) 0-based answer per question,
    ``clarity`` (n,) the Dirichlet concentration of the true answer.
    """
    kind = _categorical(rng, np.tile(np.asarray(_KIND_PROBS), (n, 1)))
    clarity = _log_uniform(rng, *_CLARITY_RANGE, size=n)
    true_answer = np.empty((n, len(tree.QUESTIONS)), dtype=np.int64)
    fractions = []  # per question: (n, k) vote fractions among its answers, summing to 1
    for qi, q in enumerate(tree.QUESTIONS):
        table = np.asarray(_TRUE_ANSWER_PROBS[q.name], dtype=np.float64)
        probs = table[kind] if len(table) == len(KINDS) else np.tile(table[0], (n, 1))
        true_answer[:, qi] = _categorical(rng, probs)
        # Questions differ in how clear-cut they are for the same galaxy (roundness is easier than arm count).
        conc = clarity * _log_uniform(rng, 0.5, 2.0, size=n)
        alpha = np.full((n, len(q.answers)), _VOTE_FLOOR)
        alpha[np.arange(n), true_answer[:, qi]] += conc
        g = rng.standard_gamma(alpha)  # Dirichlet via normalised gammas, one alpha per row
        fractions.append(g / g.sum(axis=1, keepdims=True))

    # Kaggle's encoding: a question's fractions are multiplied by the value of the answer leading to it.
    labels = np.empty((n, tree.N_OUTPUTS), dtype=np.float64)
    for qi in tree.TOPOLOGICAL_ORDER:
        parent = tree.PARENT_INDEX[qi]
        weight = 1.0 if parent < 0 else labels[:, parent: parent + 1]
        labels[:, tree.QUESTIONS[qi].slice] = fractions[qi] * weight
    return labels, {"kind": kind, "true_answer": true_answer, "clarity": clarity}


def conditional_fractions(labels: np.ndarray) -> list[np.ndarray]:
    """Undo the tree weighting of one galaxy's 37 values: per question, its vote fractions summing to 1.

    Where a question was (almost) never reached, the fractions are uniform; the renderer always weights such a
    question's look by its parent answer, so those values hardly show.
    """
    out = []
    for q in tree.QUESTIONS:
        v = np.clip(np.asarray(labels[q.slice], dtype=np.float64), 0.0, None)
        total = v.sum()
        out.append(v / total if total > 1e-6 else np.full(len(v), 1.0 / len(v)))
    return out


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------

# Linear-light colours (R, G, B): old stellar populations (ellipticals, bulges, bars) are red, star-forming disks,
# arms, rings and clumps are blue, point sources white-ish.
_OLD = np.array([1.0, 0.84, 0.64], dtype=np.float32)
_YOUNG = np.array([0.62, 0.8, 1.0], dtype=np.float32)
_POINT = np.array([0.95, 0.95, 1.0], dtype=np.float32)

# Sersic b_n and the total flux of a Sersic profile with unit surface brightness at the half-light radius, unit
# axis ratio and unit radius: 2 pi n e^b b^(-2n) Gamma(2n). Components are normalised by these, so a component's
# weight is (roughly) its share of the galaxy's light whatever its size.
_B = {1: 1.678, 2: 3.672, 3: 5.670}
_SERSIC_FLUX = {n: 2 * math.pi * n * math.exp(b) * b ** (-2 * n) * math.gamma(2 * n) for n, b in _B.items()}

_SOFT2 = 1.0  # px^2 added to r^2: stands in for the seeing, keeps cusps finite
_STRETCH_BETA = 0.02  # asinh softening: fainter than this is linear, brighter is logarithmic (as SDSS colour images)
_STRETCH_MAX = 2.0  # intensity shown as full white
_MIN_STRENGTH = 0.02  # components weaker than this are skipped, to save time; invisible under the sky noise


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates relative to the image centre (read-only, shared between calls)."""
    c = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    x -= c
    y -= c
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _sersic(r: np.ndarray, re: float, n: int) -> np.ndarray:
    """Sersic profile, 1 at r = re; n restricted to 1, 2, 3 (cheap roots)."""
    t = r * np.float32(1.0 / re)
    root = t if n == 1 else np.sqrt(t) if n == 2 else np.cbrt(t)
    return np.exp(np.float32(-_B[n]) * (root - np.float32(1.0)))


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.float32(math.pi)) % np.float32(2 * math.pi) - np.float32(math.pi)


def _add_blob(img: np.ndarray, x0: float, y0: float, sigma: float, flux: float,
              q: float = 1.0, angle: float = 0.0) -> None:
    """Add an elliptical Gaussian of total ``flux`` centred at image coords (x0, y0), only near it (cheap)."""
    size = img.shape[0]
    half = int(math.ceil(4 * sigma)) + 1
    ix, iy = int(round(x0)), int(round(y0))
    xa, xb, ya, yb = max(ix - half, 0), min(ix + half + 1, size), max(iy - half, 0), min(iy + half + 1, size)
    if xa >= xb or ya >= yb:
        return
    yy, xx = np.mgrid[ya:yb, xa:xb].astype(np.float32)
    dx, dy = xx - x0, yy - y0
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = dx * ca + dy * sa, (-dx * sa + dy * ca) / q
    img[ya:yb, xa:xb] += flux / (2 * math.pi * sigma * sigma * q) * np.exp(-(u * u + v * v) / (2 * sigma * sigma))


def _add_spikes(img: np.ndarray, x0: float, y0: float, length: float, flux: float, angle: float) -> None:
    """Four diffraction spikes (two thin crossed lines fading exponentially) around a bright star."""
    size = img.shape[0]
    half = int(3 * length)
    ix, iy = int(round(x0)), int(round(y0))
    xa, xb, ya, yb = max(ix - half, 0), min(ix + half + 1, size), max(iy - half, 0), min(iy + half + 1, size)
    yy, xx = np.mgrid[ya:yb, xa:xb].astype(np.float32)
    dx, dy = xx - x0, yy - y0
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = dx * ca + dy * sa, -dx * sa + dy * ca
    spikes = (np.exp(-np.abs(u) / length - v * v / 0.8) + np.exp(-np.abs(v) / length - u * u / 0.8))
    img[ya:yb, xa:xb] += flux / (4 * length * math.sqrt(0.8 * math.pi)) * spikes


def _look(labels: np.ndarray) -> dict[str, float | np.ndarray]:
    """Rendering strengths from one galaxy's 37 values. Expected values over a question's answers, so split votes
    give in-between looks; strengths of sub-questions are multiplied by the answer that leads to them."""
    per_question = {q.name: f for q, f in zip(tree.QUESTIONS, conditional_fractions(labels))}
    share = {a.name: per_question[q.name][a.number - 1] for q in tree.QUESTIONS for a in q.answers}
    star = share["star_or_artifact"]
    disk_share = share["features_or_disk"] / max(share["smooth"] + share["features_or_disk"], 1e-9)  # among galaxies
    edge = share["edge_on_yes"]
    bulge_votes = share["bulge_shape_rounded"] + share["bulge_shape_boxy"]
    return {
        "star": star,
        # The galaxy fades faster than the star grows, so that star-like objects look point-like, not fuzzy.
        "galaxy": (1.0 - star) ** 2,
        "disk": disk_share,
        "edge_on": edge,
        # Projected axis ratios: Q7 round / in-between / cigar; a disk thins as the edge-on vote grows.
        "q_smooth": float(per_question["roundness"] @ np.array([0.93, 0.6, 0.28])),
        "q_disk": 0.1 + 0.9 * (1.0 - edge) ** 1.5,
        # Bulge-to-total: Q5 (no bulge .. dominant) for face-on disks, Q9 (rounded/boxy vs none) for edge-on ones.
        "bulge": (1 - edge) * float(per_question["bulge"] @ np.array([0.0, 0.12, 0.3, 0.6])) + edge * 0.35 * bulge_votes,
        "boxy": edge * share["bulge_shape_boxy"] / max(bulge_votes, 1e-9),
        # Bars and arms are face-on features.
        "bar": (1 - edge) * share["bar_yes"],
        "spiral": (1 - edge) * share["spiral_yes"],
        "pitch_deg": float(per_question["arm_winding"] @ np.array([12.0, 22.0, 35.0])),  # tight / medium / loose
        "arm_weights": per_question["arm_count"][:5],  # 1, 2, 3, 4, more than four arms
        "arm_unclear": share["arms_cant_tell"],  # "can't tell": weaker arm contrast
        "odd": share["odd_yes"] * per_question["odd_feature"],  # per odd feature: ring, arc, ..., merger, dust lane
    }


_ARM_COUNTS = (1, 2, 3, 4, 6)


def render_galaxy(labels: np.ndarray, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw one galaxy whose look follows its 37 label values: (size, size, 3) uint8, SDSS-like.

    ``rng`` supplies only nuisances (size, brightness, orientation, noise, field objects); the morphology comes from
    ``labels``.
    """
    look = _look(labels)
    X, Y = _grid(size)
    f32 = np.float32
    scale = size / IMAGE_SIZE  # nuisance sizes are quoted for 424 px images

    # Nuisances.
    re = float(_log_uniform(rng, 10.0, 55.0)) * scale  # half-light radius, px
    flux = float(_log_uniform(rng, 0.5, 2.5)) * 2.0 * re * re  # mean surface brightness within re is size-free
    pa = rng.uniform(0.0, math.pi)
    dx, dy = np.clip(rng.normal(0.0, 2.0, 2), -6, 6) * scale
    x, y = X - f32(dx), Y - f32(dy)
    cpa, spa = f32(math.cos(pa)), f32(math.sin(pa))
    u = x * cpa + y * spa  # along the major axis
    v = y * cpa - x * spa  # along the minor axis

    old = np.zeros((size, size), np.float32)
    young = np.zeros((size, size), np.float32)
    point = np.zeros((size, size), np.float32)
    galaxy = flux * look["galaxy"]

    # Smooth component: de Vaucouleurs-like (n = 3) ellipse with the Q7 axis ratio.
    w_smooth = galaxy * (1.0 - look["disk"])
    q_s = float(np.clip(look["q_smooth"] + rng.normal(0.0, 0.03), 0.2, 1.0))
    if w_smooth > _MIN_STRENGTH * flux:
        r = np.sqrt(u * u + (v * f32(1 / q_s)) ** 2 + f32(_SOFT2))
        old += f32(w_smooth / (_SERSIC_FLUX[3] * q_s * re * re)) * _sersic(r, re, 3)

    # Disk component: exponential disk, bulge, bar and spiral arms, all in the disk's own plane (v / q_disk).
    w_disk = galaxy * look["disk"]
    q_d = look["q_disk"]
    vd = v * f32(1 / q_d)
    if w_disk > _MIN_STRENGTH * flux:
        bulge_frac, bar_frac = look["bulge"], 0.2 * look["bar"]
        rd = np.sqrt(u * u + vd * vd + f32(_SOFT2))
        disk = _sersic(rd, re, 1) * f32((1 - bulge_frac - bar_frac) / (_SERSIC_FLUX[1] * q_d * re * re))
        if look["spiral"] > _MIN_STRENGTH:
            # Logarithmic spirals: arm phase = m (theta - ln(r) / tan(pitch)). Each arm count contributes in
            # proportion to its votes; sharpened cosines make narrow arms; no arms in the very centre.
            theta = np.arctan2(vd, u)
            winding = theta - np.log(rd * f32(1 / re)) * f32(1 / math.tan(math.radians(look["pitch_deg"])))
            arms, drawn = np.zeros_like(rd), 0.0
            for m, w in zip(_ARM_COUNTS, look["arm_weights"]):
                if w > _MIN_STRENGTH:
                    s = f32(0.5) + f32(0.5) * np.cos(f32(m) * winding + f32(rng.uniform(0, 2 * math.pi)))
                    arms += f32(w * 16 / 5) * s * s * s  # mean of s^3 is 5/16, so each term averages w
                    drawn += w
            contrast = 0.95 * look["spiral"] * (1 - 0.6 * look["arm_unclear"])
            taper = f32(1) - np.exp(-(rd * f32(1.6 / re)) ** 2)
            disk *= f32(1) + f32(contrast) * taper * (arms - f32(drawn))  # mean 1: arms move light, not add it
        young += f32(w_disk) * disk

        if bulge_frac > 1e-3:
            # Bulge: n = 2, a quarter of the disk's size; boxy edge-on bulges use a superellipse radius.
            q_b = rng.uniform(0.7, 0.95)
            vb = v * f32(1 / q_b)
            r_round = np.sqrt(u * u + vb * vb + f32(_SOFT2))
            if look["boxy"] > _MIN_STRENGTH:
                u2, v2 = u * u, vb * vb
                r_box = np.sqrt(np.sqrt(u2 * u2 + v2 * v2)) + f32(0.5)
                r_round = f32(1 - look["boxy"]) * r_round + f32(look["boxy"]) * r_box
            re_b = 0.25 * re
            old += f32(w_disk * bulge_frac / (_SERSIC_FLUX[2] * q_b * re_b * re_b)) * _sersic(r_round, re_b, 2)

        if bar_frac > _MIN_STRENGTH * 0.2:
            # Bar: flat-topped along its length, Gaussian across; random angle within the disk plane.
            beta = rng.uniform(0.0, math.pi)
            cb, sb = f32(math.cos(beta)), f32(math.sin(beta))
            length, width = 0.9 * re, 0.17 * re
            ub = (u * cb + vd * sb) * f32(1 / length)
            wb = (vd * cb - u * sb) * f32(1 / width)
            ub2 = ub * ub
            bar_area = 2 * math.gamma(1.25) * length * math.sqrt(math.pi) * width * q_d
            old += f32(w_disk * bar_frac / bar_area) * np.exp(-ub2 * ub2 - wb * wb)

    c0 = (size - 1) / 2.0
    _add_odd_features(look, rng, old, young, u, v, x, y, (c0 + dx, c0 + dy), re, galaxy,
                      look["q_disk"] if look["disk"] > 0.5 else q_s)

    # The central star or artifact: a point source with a faint halo, sometimes with diffraction spikes.
    if look["star"] > _MIN_STRENGTH:
        star_flux = flux * look["star"]
        psf = rng.uniform(1.2, 2.0) * scale
        _add_blob(point, c0 + dx, c0 + dy, psf, 0.85 * star_flux)
        _add_blob(point, c0 + dx, c0 + dy, 4 * psf, 0.15 * star_flux)
        if rng.random() < 0.5:
            _add_spikes(point, c0 + dx, c0 + dy, rng.uniform(15, 40) * scale, 0.05 * star_flux,
                        math.pi / 4 + rng.normal(0, 0.05))

    # Unrelated field stars and small galaxies away from the centre, as in real cut-outs.
    for _ in range(rng.poisson(1.2)):
        rad, ang = rng.uniform(0.36, 0.68) * size, rng.uniform(0, 2 * math.pi)
        fx, fy = c0 + rad * math.cos(ang), c0 + rad * math.sin(ang)
        f_flux = flux * float(_log_uniform(rng, 0.003, 0.08))
        if rng.random() < 0.5:
            _add_blob(point, fx, fy, rng.uniform(1.2, 2.0) * scale, f_flux)
        else:
            _add_blob(old if rng.random() < 0.5 else young, fx, fy, rng.uniform(2.0, 5.0) * scale, f_flux,
                      q=rng.uniform(0.4, 1.0), angle=rng.uniform(0, math.pi))

    return _to_display(old, young, point, rng)


def _add_odd_features(look, rng, old, young, u, v, x, y, centre, re, galaxy, q_plane) -> None:
    """Q8's odd features, each as strong as Q6 "yes" times its own Q8 fraction. (x, y) and (u, v) are relative to
    the galaxy's centre, which is at image coords ``centre``."""
    f32 = np.float32
    ring, arc, disturbed, irregular, other, merger, dust = (float(s) for s in look["odd"])
    cx0, cy0 = centre
    need_polar = arc > _MIN_STRENGTH or disturbed > _MIN_STRENGTH
    if need_polar:
        rs = np.sqrt(x * x + y * y + f32(_SOFT2))
        theta = np.arctan2(y, x)
    if dust > _MIN_STRENGTH:
        # Dust lane: a dark band along the major axis, absorbing more of the old (central) light.
        width = max(1.2, 0.07 * re)
        lane = np.exp(-((v - f32(0.05 * re)) * f32(1 / width)) ** 2)
        old *= f32(1) - f32(0.9 * dust) * lane
        young *= f32(1) - f32(0.6 * dust) * lane
    if ring > _MIN_STRENGTH:
        radius, width = rng.uniform(1.6, 2.4) * re, 0.15 * re
        rp = np.sqrt(u * u + (v * f32(1 / q_plane)) ** 2)
        area = 2 * math.pi * radius * width * math.sqrt(math.pi) * q_plane
        young += f32(0.35 * ring * galaxy / area) * np.exp(-((rp - f32(radius)) * f32(1 / width)) ** 2)
    if arc > _MIN_STRENGTH:
        # Lensed arc: a thin tangential arc around the galaxy.
        radius, width, span = rng.uniform(1.8, 3.0) * re, max(1.0, 0.06 * re), rng.uniform(0.3, 0.6)
        phi = f32(rng.uniform(-math.pi, math.pi))
        area = radius * span * math.pi * width
        shape = np.exp(-((rs - f32(radius)) * f32(1 / width)) ** 2 - (_wrap(theta - phi) * f32(1 / span)) ** 2)
        young += f32(0.3 * arc * galaxy / area) * shape
    if disturbed > _MIN_STRENGTH:
        # Tidal tail: a single, lopsided, loosely wound arm fading outwards.
        a = 1.5 * re
        phi = f32(rng.uniform(-math.pi, math.pi))
        s = f32(0.5) + f32(0.5) * np.cos(theta - phi - np.log(rs * f32(1 / re)) * f32(1 / math.tan(0.5)))
        s2 = s * s
        s8 = (s2 * s2) ** 2
        tail = np.exp(-rs * f32(1 / a)) * s8 * (f32(1) - np.exp(-(rs * f32(1 / re)) ** 2))
        young += f32(0.5 * disturbed * galaxy / (2 * math.pi * a * a * 0.196)) * tail
    if irregular > _MIN_STRENGTH:
        # Clumpy star formation scattered over the galaxy.
        k = int(rng.integers(4, 10))
        for _ in range(k):
            px, py = rng.normal(0.0, 0.8 * re, 2)
            _add_blob(young, cx0 + px, cy0 + py, rng.uniform(0.05, 0.12) * re, 0.6 * irregular * galaxy / k)
    if other > _MIN_STRENGTH:
        # Something unexplained: a bright compact knot off the centre.
        d, ang = rng.uniform(0.5, 1.5) * re, rng.uniform(0, 2 * math.pi)
        _add_blob(young, cx0 + d * math.cos(ang), cy0 + d * math.sin(ang), rng.uniform(1.5, 3.0),
                  0.2 * other * galaxy)
    if merger > _MIN_STRENGTH:
        # A companion galaxy close by, with a faint bridge towards the main one.
        d, ang = rng.uniform(1.3, 2.5) * re, rng.uniform(0, 2 * math.pi)
        cx, cy = cx0 + d * math.cos(ang), cy0 + d * math.sin(ang)
        sig = rng.uniform(0.25, 0.5) * re
        _add_blob(old, cx, cy, sig, 0.45 * merger * galaxy, q=rng.uniform(0.5, 1.0), angle=rng.uniform(0, math.pi))
        _add_blob(old, cx, cy, 0.3 * sig, 0.15 * merger * galaxy)
        for t in (0.3, 0.5, 0.7):
            _add_blob(young, cx0 + t * (cx - cx0), cy0 + t * (cy - cy0), 0.25 * re, 0.04 * merger * galaxy)


def _to_display(old: np.ndarray, young: np.ndarray, point: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour, asinh stretch (Lupton et al. 2004, as SDSS colour images: keeps colours in bright cores) and sky."""
    f32 = np.float32
    intensity = old * f32(_OLD.mean()) + young * f32(_YOUNG.mean()) + point * f32(_POINT.mean())
    stretch = np.arcsinh(intensity * f32(1 / _STRETCH_BETA)) / (intensity * f32(1 / _STRETCH_BETA) + f32(1e-6))
    stretch *= f32(255.0 / (_STRETCH_BETA * math.asinh(_STRETCH_MAX / _STRETCH_BETA)))
    size = old.shape[0]
    sky, noise = rng.uniform(3.0, 12.0), rng.uniform(2.5, 6.0)
    out = rng.standard_normal((size, size, 3), dtype=np.float32)
    out *= f32(noise)
    out += f32(sky)
    for ch in range(3):
        out[..., ch] += (old * _OLD[ch] + young * _YOUNG[ch] + point * _POINT[ch]) * stretch
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------
# The data set
# --------------------------------------------------------------------------------------------------------------

_TRAIN, _TEST = 0, 1  # the split enters each image's seed


def galaxy_ids(n: int, test: bool = False) -> np.ndarray:
    """GalaxyIDs of the first ``n`` training (or test) images: 6-digit, unique, the two splits disjoint."""
    return _ID_BASE + (_TEST_ID_SHIFT if test else 0) + _ID_STEP * np.arange(n, dtype=np.int64)


def _render_to_file(task: tuple[np.ndarray, int, int, int, str]) -> None:
    """One image (top-level so that a spawned worker can unpickle it)."""
    labels, seed, split, index, path = task
    rng = np.random.default_rng([seed, split, index])
    Image.fromarray(render_galaxy(labels, rng)).save(path, format="JPEG", quality=JPEG_QUALITY)


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise BadArgument(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise BadArgument(f"{name} must be at least {minimum}, got {value}")
    if value > MAX_IMAGES_PER_SPLIT:
        raise BadArgument(f"{name} must be at most {MAX_IMAGES_PER_SPLIT} (6-digit GalaxyIDs), got {value}")
    return int(value)


def make_synthetic(out_dir: str | Path, n: int, n_test: int | None = None, seed: int = 0,
                   workers: int = 1) -> Path:
    """Write a synthetic data set in the Kaggle layout and return ``out_dir``.

    Writes out_dir/images_training_rev1/<GalaxyID>.jpg (n images), out_dir/training_solutions_rev1.csv,
    out_dir/images_test_rev1/<GalaxyID>.jpg (n_test unlabelled images, default max(1, n // 10)) and
    out_dir/README.md. Existing files of the same names are overwritten; nothing else is touched. The same seed
    gives byte-identical files whatever ``workers`` is.
    """
    n = _check_count("n (number of training images)", n, 1)
    n_test = max(1, n // 10) if n_test is None else _check_count("n_test (number of test images)", n_test, 0)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BadArgument(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise BadArgument(f"workers must be a positive integer, got {workers!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadData(f"{out} exists and is not a directory; choose another output directory")
    train_dir, test_dir = out / TRAIN_IMAGES, out / TEST_IMAGES
    try:
        train_dir.mkdir(parents=True, exist_ok=True)
        test_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadData(f"cannot create the synthetic data directories under {out}: {e}") from e

    # Labels for both splits come from one generator; the test labels are used for rendering only, never written.
    labels, _ = sample_labels(n + n_test, np.random.default_rng([seed, 2]))
    labels = np.round(labels, DECIMALS)  # render from exactly what the CSV says
    train_ids, test_ids = galaxy_ids(n), galaxy_ids(n_test, test=True)

    lines = [",".join((ID_COLUMN, *tree.COLUMNS))]
    fmt = f"{{:.{DECIMALS}f}}"
    for gid, row in zip(train_ids, labels[:n]):
        lines.append(f"{gid}," + ",".join(fmt.format(v) for v in row))
    (out / SOLUTIONS).write_text("\n".join(lines) + "\n", encoding="ascii", newline="\n")

    tasks = [(labels[i], seed, _TRAIN, i, str(train_dir / f"{gid}.jpg")) for i, gid in enumerate(train_ids)]
    tasks += [(labels[n + i], seed, _TEST, i, str(test_dir / f"{gid}.jpg")) for i, gid in enumerate(test_ids)]
    if workers == 1:
        for t in tasks:
            _render_to_file(t)
    else:
        with multiprocessing.get_context().Pool(min(workers, len(tasks))) as pool:
            for _ in pool.imap_unordered(_render_to_file, tasks, chunksize=8):
                pass

    (out / "README.md").write_text(
        "# Synthetic Galaxy Zoo data (not real galaxies)\n\n"
        f"Made by `gzmorph.synth.make_synthetic(n={n}, n_test={n_test}, seed={seed})` in the layout of Kaggle's\n"
        "\"Galaxy Zoo - The Galaxy Challenge\": images_training_rev1/, training_solutions_rev1.csv, "
        "images_test_rev1/.\n\n"
        "Each galaxy has a latent kind (elliptical, face-on or edge-on disk, star/artifact) and odd features; its\n"
        "37 vote fractions are Dirichlet draws around the true answers, weighted down the decision tree. The\n"
        "424x424 JPEGs are drawn with numpy from those fractions (profiles, bulges, bars, log-spiral arms, rings,\n"
        "mergers, dust lanes, point sources) on a noisy dark sky, so their look follows the labels.\n"
        "Use them for demos and tests only; scores on them say nothing about real galaxies.\n",
        encoding="utf-8",
    )
    return out
