"""The synthetic Kaggle-layout data set: layout, tree-consistent labels, determinism, and looks that follow labels."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gzmorph import tree
from gzmorph.errors import GzmorphError

from gzmorph.data import synth
from gzmorph.data.layout import SOLUTIONS


def read_solutions(root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with open(root / SOLUTIONS, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    ids = np.array([int(r[0]) for r in body])
    labels = np.array([[float(v) for v in r[1:]] for r in body])
    return header, ids, labels


def image_ids(folder: Path) -> list[int]:
    return sorted(int(p.stem) for p in folder.glob("*.jpg"))


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return synth.make_synthetic(tmp_path_factory.mktemp("small") / "gz", n=40, seed=3)


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Path:
    return synth.make_synthetic(tmp_path_factory.mktemp("large"), n=150, n_test=2, seed=11)


# ---------------------------------------------------------------------------------------------------------------
# Layout and labels
# ---------------------------------------------------------------------------------------------------------------

def test_layout_and_header(small):
    assert (small / "README.md").read_text().lower().count("synthetic") >= 1
    first_line = (small / SOLUTIONS).read_text().splitlines()[0]
    assert first_line == "GalaxyID," + ",".join(tree.COLUMNS)
    header, ids, labels = read_solutions(small)
    assert labels.shape == (40, tree.N_OUTPUTS)
    assert image_ids(small / synth.TRAIN_IMAGES) == sorted(ids.tolist())
    assert len(image_ids(small / synth.TEST_IMAGES)) == 4  # default: n // 10


def test_values_have_six_decimals(small):
    body = (small / SOLUTIONS).read_text().splitlines()[1:]
    for line in body:
        gid, *values = line.split(",")
        assert len(gid) == 6 and gid.isdigit()
        assert all(len(v.split(".")[1]) == 6 for v in values)


def test_ids_unique_six_digit_and_disjoint(small):
    _, ids, _ = read_solutions(small)
    test_ids = image_ids(small / synth.TEST_IMAGES)
    assert len(set(ids.tolist())) == len(ids)
    assert not set(ids.tolist()) & set(test_ids)
    assert all(100000 <= i <= 999999 for i in [*ids.tolist(), *test_ids])


def test_images_decode_as_424_rgb(small):
    paths = sorted((small / synth.TRAIN_IMAGES).glob("*.jpg")) + sorted((small / synth.TEST_IMAGES).glob("*.jpg"))
    assert len(paths) == 44
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (424, 424)
            im.load()


def test_labels_in_range_and_tree_consistent(small):
    _, _, labels = read_solutions(small)
    assert labels.min() >= 0.0 and labels.max() <= 1.0
    assert not tree.tree_violations(labels).any()
    # Q1 and Q6 both sum to 1 (Q6 hangs from nothing in Kaggle's file).
    np.testing.assert_allclose(labels[:, tree.question(1).slice].sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(labels[:, tree.question(6).slice].sum(1), 1.0, atol=1e-5)


def test_sampled_labels_look_like_votes():
    labels, latent = synth.sample_labels(2000, np.random.default_rng(0))
    assert labels.shape == (2000, tree.N_OUTPUTS)
    assert not tree.tree_violations(labels, tolerance=1e-9).any()
    q1 = labels[:, tree.QUESTION_BY_NAME["shape"].slice]
    # Votes concentrate on the latent answer but are rarely unanimous, and some galaxies are ambiguous.
    assert (q1.argmax(1) == latent["true_answer"][:, 0]).mean() > 0.85
    assert (q1.max(1) > 0.999).mean() < 0.08
    assert (q1.max(1) < 0.6).mean() > 0.04
    for k in range(len(synth.KINDS)):
        assert (latent["kind"] == k).sum() > 100


# ---------------------------------------------------------------------------------------------------------------
# Determinism and workers
# ---------------------------------------------------------------------------------------------------------------

def test_same_seed_gives_identical_files(small, tmp_path):
    again = all_files(synth.make_synthetic(tmp_path, n=40, seed=3))
    first = all_files(small)
    assert again.keys() == first.keys()
    assert all(again[k] == first[k] for k in first)


def test_different_seed_gives_different_data(small, tmp_path):
    other = synth.make_synthetic(tmp_path, n=40, seed=4)
    assert (other / SOLUTIONS).read_bytes() != (small / SOLUTIONS).read_bytes()
    name = f"{synth.TRAIN_IMAGES}/{synth.galaxy_ids(1)[0]}.jpg"
    assert (other / name).read_bytes() != (small / name).read_bytes()


def test_workers_do_not_change_output(small, tmp_path):
    parallel = all_files(synth.make_synthetic(tmp_path, n=40, seed=3, workers=2))
    assert parallel == all_files(small)


def test_overwrites_its_own_files_and_keeps_others(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    synth.make_synthetic(tmp_path, n=3, seed=1)
    csv_before = (tmp_path / SOLUTIONS).read_bytes()
    synth.make_synthetic(tmp_path, n=3, seed=2)
    assert (tmp_path / SOLUTIONS).read_bytes() != csv_before
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"n": -5}, {"n": 2.5}, {"n": 3, "n_test": -1}, {"n": 3, "workers": 0},
                                    {"n": 3, "seed": -1}])
def test_bad_arguments_raise_gzmorph_error(tmp_path, kwargs):
    with pytest.raises(GzmorphError):
        synth.make_synthetic(tmp_path, **kwargs)
    assert not (tmp_path / SOLUTIONS).exists()


# ---------------------------------------------------------------------------------------------------------------
# The look follows the labels (no ML: simple image statistics against the labels that should drive them)
# ---------------------------------------------------------------------------------------------------------------

def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks = [np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def shape_stats(path: Path) -> tuple[float, float, float]:
    """Elongation (1 - minor/major axis from second moments), size (rms radius, px) and red/blue flux ratio of the
    pixels clearly above the sky within 140 px of the centre (field objects are put farther out)."""
    with Image.open(path) as im:
        f = np.asarray(im.convert("RGB"), dtype=np.float64)
    border = np.concatenate([f[:10], f[-10:], f[:, :10].transpose(1, 0, 2), f[:, -10:].transpose(1, 0, 2)])
    border = border.reshape(-1, 3)
    sky = np.median(border, axis=0)
    grey = border.mean(1)
    noise = max(1.4826 * np.median(np.abs(grey - np.median(grey))), 1.0)
    lum = (f - sky).mean(axis=2)
    n = f.shape[0]
    yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2
    w = np.where((lum > 5 * noise) & (xx ** 2 + yy ** 2 < 140 ** 2), lum, 0.0)
    total = w.sum()
    mx, my = (w * xx).sum() / total, (w * yy).sum() / total
    dx, dy = xx - mx, yy - my
    cxx, cyy, cxy = (w * dx * dx).sum() / total, (w * dy * dy).sum() / total, (w * dx * dy).sum() / total
    half_tr, root = (cxx + cyy) / 2, np.sqrt(max(((cxx - cyy) / 2) ** 2 + cxy ** 2, 0.0))
    major, minor = half_tr + root, max(half_tr - root, 0.0)
    on = w > 0
    red_over_blue = ((f[..., 0] - sky[0]) * on).sum() / ((f[..., 2] - sky[2]) * on).sum()
    return 1 - np.sqrt(minor / major), np.sqrt(cxx + cyy), red_over_blue


@pytest.fixture(scope="module")
def looks(large):
    _, ids, labels = read_solutions(large)
    stats = np.array([shape_stats(large / synth.TRAIN_IMAGES / f"{i}.jpg") for i in ids])
    return labels, stats


def col(labels: np.ndarray, name: str) -> np.ndarray:
    return labels[:, tree.answer(name).index]


def test_elongation_follows_cigar_and_edge_on_votes(looks):
    labels, stats = looks
    elongated = col(labels, "round_cigar") + col(labels, "edge_on_yes")
    assert spearman(stats[:, 0], elongated) > 0.4
    # ... and round smooth galaxies are the roundest.
    round_ = col(labels, "round_completely")
    assert np.median(stats[round_ > 0.5, 0]) < np.median(stats[elongated > 0.5, 0]) - 0.2


def test_stars_are_compact(looks):
    labels, stats = looks
    star = col(labels, "star_or_artifact")
    assert (star > 0.5).sum() >= 5
    assert np.median(stats[star > 0.5, 1]) < 0.6 * np.median(stats[star < 0.2, 1])


def test_smooth_galaxies_are_redder_than_disks(looks):
    labels, stats = looks
    assert spearman(stats[:, 2], col(labels, "smooth")) > 0.4
    assert spearman(stats[:, 2], col(labels, "features_or_disk")) < -0.4


def test_render_galaxy_shape_and_dtype():
    labels, _ = synth.sample_labels(2, np.random.default_rng(5))
    img = synth.render_galaxy(labels[0], np.random.default_rng(1))
    assert img.shape == (424, 424, 3) and img.dtype == np.uint8
    again = synth.render_galaxy(labels[0], np.random.default_rng(1))
    assert np.array_equal(img, again)
