"""``gzmorph plot RUN --gallery``: the worst-galaxy choice, the PNGs, their layout, and the CLI's errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from gzmorph import runs, tree
from gzmorph.inference import gallery as plots
from gzmorph.cli import main
from gzmorph.data.labelled import load_labelled
from gzmorph.errors import GzmorphError
from gzmorph.inference.tta import predict_array
from gzmorph.metrics import rmse
from gzmorph.inference.gallery import galaxy_rmse, plot_gallery, sample_galaxies, worst_galaxies

from helpers import cli_fails, make_fake_run, random_image, tree_labels


# ------------------------------------------------------------------------------------------------------------------
# Choosing galaxies
# ------------------------------------------------------------------------------------------------------------------

def test_galaxy_rmse_is_the_kaggle_rmse_of_each_row():
    labels, pred = tree_labels(6, seed=1), tree_labels(6, seed=2)
    mask = np.ones_like(labels, bool)
    mask[2, :20] = False
    got = galaxy_rmse(pred, labels, mask)
    for i in range(6):
        assert got[i] == pytest.approx(rmse(pred[i:i + 1], labels[i:i + 1], mask[i:i + 1]))


def test_worst_galaxies():
    labels = np.zeros((6, 37))
    pred = np.zeros((6, 37))
    for row, err in enumerate([0.1, 0.5, 0.0, 0.3, 0.5, 0.2]):
        pred[row] = err
    mask = np.ones((6, 37), bool)
    assert worst_galaxies(pred, labels, mask, 3).tolist() == [1, 4, 3]  # ties in row order
    assert worst_galaxies(pred, labels, None, 10).tolist() == [1, 4, 3, 5, 0, 2]  # n > N: all of them
    # Only known answers count, and a galaxy with none never ranks as bad.
    pred[0, 0] = 5.0
    mask[0, 0] = False
    mask[2] = False
    assert worst_galaxies(pred, labels, mask, 6).tolist() == [1, 4, 3, 5, 0, 2]


def test_sample_is_seeded():
    first = sample_galaxies(100, 16)
    assert np.array_equal(first, sample_galaxies(100, 16))
    assert len(set(first.tolist())) == 16 and np.all(np.diff(first) > 0)
    assert sample_galaxies(5, 16).tolist() == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------------------------------------
# The PNGs
# ------------------------------------------------------------------------------------------------------------------

def test_gallery_pngs(tmp_path, kaggle, monkeypatch):
    run = make_fake_run(tmp_path / "run", model="seed-cnn")
    grids = []
    real_grid = plots.plot_grid

    def spy(panels, title, legend, out):
        grids.append([p["id"] for p in panels])
        return real_grid(panels, title, legend, out)

    monkeypatch.setattr(plots, "plot_grid", spy)
    paths = plot_gallery(run, kaggle.root, split="train", n=3, device="cpu", workers=1, progress=False)
    assert paths == [run / "gallery_train.png", run / "gallery_train_worst.png"]
    for path in paths:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG"
            # 3 galaxies: a 2 x 2 grid of 3.5 in cells at 110 dpi, plus the header.
            assert 700 <= im.width <= 900 and 800 <= im.height <= 1300, im.size

    # The worst grid holds the highest-RMSE galaxies, computed here independently of plot_gallery.
    loaded = runs.load_model(run)
    train = load_labelled(kaggle.root, loaded.prep, ("train",), use_partial=False, workers=1, progress=False)["train"]
    pred = predict_array(loaded.model, train.pixels, policy=loaded.policy)
    err = np.sqrt(((pred - train.catalogue.labels) ** 2).mean(axis=1))
    assert sorted(train.catalogue.ids.tolist()) == sorted(kaggle.ids_of("train"))
    assert grids[1] == [int(train.catalogue.ids[i]) for i in np.argsort(-err)[:3]]
    assert len(grids[0]) == 3 and set(grids[0]) <= set(kaggle.ids_of("train"))
    # The random grid is the same galaxies every time.
    plot_gallery(run, kaggle.root, split="train", n=3, device="cpu", workers=1, progress=False,
                 out_dir=tmp_path / "again")
    assert grids[2] == grids[0]
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["gallery_train.png", "gallery_train_worst.png"]


def test_gallery_on_synthetic_data(tmp_path, synthetic_data):
    run = make_fake_run(tmp_path / "run", model="seed-cnn")
    paths = plot_gallery(run, synthetic_data, n=16, out_dir=tmp_path / "out", device="cpu", workers=1,
                         progress=False)
    for path in paths:
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width >= 4 * 3.5 * 100 and im.height >= 4 * 3 * 100


def longest_line() -> str:
    """The widest line a panel can get: the longest question name, answer and mismatched answer."""
    lines = (f"Q{q.number} {plots.question_label(q)}: {a.text} 100% | 100% \u2192 {b.text}"
             for q in tree.QUESTIONS for a in q.answers for b in q.answers if a != b)
    return max(lines, key=len)


@pytest.mark.parametrize("n", [1, 5, 16])
def test_no_text_overlaps(n):
    """Worst-case text in every panel: no two texts overlap, no text covers an image, all inside the figure."""
    long_line = longest_line()
    panels = [{"id": 999999, "rmse": 0.123, "image": random_image(148, seed=k),
               "lines": [(long_line, False)] * plots.PATH_STEPS} for k in range(n)]
    title = "gznet (best.safetensors, 8-view TTA): 16 random valid galaxies of 1004, RMSE 0.0965 (all 1004: 0.0938)"
    fig = plots._grid_figure(panels, title, "a legend that is long enough to wrap " * 8)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        frame = fig.bbox
        texts = [t.get_window_extent(renderer) for t in fig.texts]
        texts += [ax.title.get_window_extent(renderer) for ax in fig.axes]
        images = [ax.get_window_extent(renderer) for ax in fig.axes]
        for box in texts + images:
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        for a, b in itertools.combinations(texts, 2):
            assert not a.overlaps(b), (a, b)
        for t, im in itertools.product(texts, images):
            assert not t.overlaps(im), (t, im)
    finally:
        plots._pyplot().close(fig)


# ------------------------------------------------------------------------------------------------------------------
# Errors and the CLI
# ------------------------------------------------------------------------------------------------------------------

def test_bad_n(tmp_path, kaggle):
    run = make_fake_run(tmp_path / "run")
    for n in (0, -3, plots.MAX_GALLERY + 1):
        with pytest.raises(GzmorphError, match=f"--n {n}"):
            plot_gallery(run, kaggle.root, n=n, progress=False)


def test_cli_gallery(tmp_path, kaggle, capsys):
    run = make_fake_run(tmp_path / "run")
    assert main(["plot", str(run), "--gallery", "--data", str(kaggle.root), "--n", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run / 'gallery_valid.png'}" in out and f"wrote {run / 'gallery_valid_worst.png'}" in out


def test_cli_gallery_errors(tmp_path, kaggle, capsys):
    run = make_fake_run(tmp_path / "run")
    cli_fails(capsys, ["plot", run, "--gallery"], "--data")
    cli_fails(capsys, ["plot", run, "--gallery", "--data", kaggle.root, "--n", "0"], "--n 0")
    cli_fails(capsys, ["plot", tmp_path / "norun", "--gallery", "--data", kaggle.root], "not a gzmorph run folder")
    cli_fails(capsys, ["plot", run, "--gallery", "--data", tmp_path / "nowhere"], "data folder not found")
    (kaggle.root / "splits.csv").unlink()  # a seeded train/valid split: no test split
    cli_fails(capsys, ["plot", run, "--gallery", "--data", kaggle.root, "--split", "test"], "test split is empty")
