"""FITS cutouts as inputs: shapes, the asinh stretch, orientation, bad files, suffixes, and a predict end to end."""

from __future__ import annotations

import csv
import gzip
import sys

import numpy as np
import pytest

pytest.importorskip("astropy")
from astropy.io import fits  # noqa: E402

import gzmorph  # noqa: E402
from gzmorph.data import fits as images  # noqa: E402
from gzmorph.data.fits import asinh_rgb  # noqa: E402
from gzmorph.data.images import Preprocess, decode, image_stem, image_suffix, list_images  # noqa: E402
from gzmorph.errors import BadImage  # noqa: E402
from gzmorph.inference.tta import predict_array  # noqa: E402
from gzmorph.runs import load_model  # noqa: E402

from helpers import make_fake_run, random_image, write_image  # noqa: E402

PREP = Preprocess(148, 74)


def galaxy_bands(side: int = 424, seed: int = 0, colour=(1.4, 1.0, 0.6), noise: float = 1.0) -> np.ndarray:
    """(3, side, side) float32 fluxes: sky 50 with ``noise`` per band, and an exponential disk plus a bulge."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] - (side - 1) / 2
    r = np.hypot(x, y * 1.5) * 424 / side
    galaxy = 300 * np.exp(-r / 25) + 2000 * np.exp(-r / 4)
    return np.stack([50 + c * galaxy + rng.normal(0, noise, galaxy.shape) for c in colour]).astype(np.float32)


def write_fits(path, data, *, extension: bool = False):
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(data)] if extension else [fits.PrimaryHDU(data)]
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(float).ravel(), b.astype(float).ravel())[0, 1])


# ------------------------------------------------------------------------------------------------------------------
# Shapes
# ------------------------------------------------------------------------------------------------------------------

def test_one_band_is_grey(tmp_path):
    path = write_fits(tmp_path / "g.fits", galaxy_bands()[1])
    out = decode(path, PREP)
    assert out.shape == (74, 74, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert out[37, 37, 0] > 150 and out[:4, :4].mean() < 30  # bright centre, dark sky


def test_three_bands_are_red_green_blue(tmp_path):
    bands = galaxy_bands(colour=(1.5, 1.0, 0.5))  # redder in the first band
    out = decode(write_fits(tmp_path / "c.fits", bands), PREP).astype(int)
    centre = out[27:47, 27:47].reshape(-1, 3).mean(0)
    assert centre[0] > centre[1] > centre[2]
    # (H, W, 3) is read as the same three bands.
    same = decode(write_fits(tmp_path / "hwc.fits", np.moveaxis(bands, 0, -1)), PREP)
    assert np.array_equal(same, out)


def test_image_in_the_first_extension(tmp_path):
    bands = galaxy_bands()
    primary = decode(write_fits(tmp_path / "p.fits", bands), PREP)
    assert np.array_equal(decode(write_fits(tmp_path / "e.fits", bands, extension=True), PREP), primary)


def test_gzipped_fits(tmp_path):
    path = write_fits(tmp_path / "g.fits", galaxy_bands())
    gz = tmp_path / "g.fits.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert np.array_equal(decode(gz, PREP), decode(path, PREP))


def test_other_image_sizes_are_cropped_in_proportion(tmp_path):
    big = decode(write_fits(tmp_path / "big.fits", galaxy_bands(848)), PREP).astype(int)
    ref = decode(write_fits(tmp_path / "ref.fits", galaxy_bands(424)), PREP).astype(int)
    assert correlation(big, ref) > 0.95


@pytest.mark.parametrize("shape", [(4, 32, 32), (2, 32, 32), (32, 32, 4)])
def test_wrong_cube_shape(tmp_path, shape):
    path = write_fits(tmp_path / "cube.fits", np.ones(shape, np.float32))
    with pytest.raises(BadImage, match=r"shape \(" + ", ".join(map(str, shape)) + r"\)"):
        decode(path, PREP)


def test_no_image_hdu(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.ones(3))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "t.fits")
    with pytest.raises(BadImage, match="no 2-D or 3-D image"):
        decode(tmp_path / "t.fits", PREP)


# ------------------------------------------------------------------------------------------------------------------
# Stretch and bad pixels
# ------------------------------------------------------------------------------------------------------------------

def test_stretch_lands_where_the_kaggle_jpegs_do():
    rgb = asinh_rgb(galaxy_bands()).astype(float)
    intensity = rgb.mean(-1)
    sky = intensity[:60, :60]
    assert abs(np.median(sky) - images.SKY_GREY) <= 1.5
    assert abs(np.percentile(intensity, images.BRIGHT_PERCENTILE) - images.BRIGHT_GREY) <= 3
    # The stretch is the same whatever the flux unit: multiplying the data by 1000 changes nothing visible.
    np.testing.assert_allclose(asinh_rgb(galaxy_bands() * 1000.0).astype(int), rgb, atol=1)


def test_noise_free_and_blank_images():
    clean = asinh_rgb(galaxy_bands(noise=0.0)).astype(float)  # a simulation: no noise to set the softening by
    assert abs(np.percentile(clean.mean(-1), images.BRIGHT_PERCENTILE) - images.BRIGHT_GREY) <= 3
    assert clean[:60, :60].max() <= images.SKY_GREY + 1 and clean[212, 212].mean() > 150
    blank = asinh_rgb(np.zeros((3, 16, 16)))  # nothing above the sky: a plain dark picture, not an error
    assert (blank == round(images.SKY_GREY)).all()


def test_nan_pixels_become_sky(tmp_path):
    bands = galaxy_bands()
    holed = bands.copy()
    holed[:, :40, :40] = np.nan  # a masked corner
    holed[0, 300, 300] = np.inf
    out = decode(write_fits(tmp_path / "nan.fits", holed), Preprocess(424, 424)).astype(int)
    # FITS rows are flipped: the masked bottom-left corner of the FITS array is the picture's bottom-left.
    assert out[-40:, :40].max() <= round(images.SKY_GREY)
    assert out[212, 212].mean() > 150


def test_all_nan_is_a_bad_image(tmp_path):
    path = write_fits(tmp_path / "nan.fits", np.full((3, 32, 32), np.nan, np.float32))
    with pytest.raises(BadImage, match="NaN"):
        decode(path, PREP)


# ------------------------------------------------------------------------------------------------------------------
# Orientation
# ------------------------------------------------------------------------------------------------------------------

def test_fits_and_png_of_the_same_field_look_the_same_way_up(tmp_path):
    rgb = random_image(424, seed=3).astype(np.float32)
    rgb[40:120, 60:140] += 150  # something bright near the top left of the picture
    rgb = np.clip(rgb, 0, 255)
    png = decode(write_image(tmp_path / "field.png", pixels=rgb.astype(np.uint8)), Preprocess(424, 106))
    # A FITS of that field stores its bottom row first.
    fits_path = write_fits(tmp_path / "field.fits", np.moveaxis(rgb, -1, 0)[:, ::-1, :].copy())
    got = decode(fits_path, Preprocess(424, 106))
    assert correlation(got, png) > 0.8
    assert correlation(got, png[::-1]) < 0.5
    top, bottom = got[10:30, 15:35].mean(), got[-30:-10, 15:35].mean()
    assert top > bottom + 50


# ------------------------------------------------------------------------------------------------------------------
# Bad files
# ------------------------------------------------------------------------------------------------------------------

def test_corrupt_files_are_bad_images(tmp_path):
    good = write_fits(tmp_path / "good.fits", galaxy_bands(64))
    data = good.read_bytes()
    cases = {
        "garbage.fits": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "empty.fits": b"",
        "header-only.fits": data[:2880],
        "truncated.fits": data[: len(data) // 2],
        "bad.fits.gz": gzip.compress(data)[:200],
        "not-gzip.fits.gz": data,  # plain FITS under a .gz name is read (astropy sniffs), so corrupt it differently
        "text.fit": b"SIMPLE  = this is not a FITS header" * 100,
    }
    readable = set()
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        try:
            decode(path, PREP)
            readable.add(name)
        except BadImage as e:
            assert str(e)
    assert readable <= {"not-gzip.fits.gz"}, readable
    with pytest.raises(BadImage, match="not found"):
        decode(tmp_path / "missing.fits", PREP)


def test_fits_under_another_name_is_still_stretched(tmp_path):
    """Pillow also opens FITS files (and would clip raw fluxes to 0..255): decode() hands them to the FITS reader."""
    bands = galaxy_bands() * 1e-3  # fluxes far below 1: Pillow alone would give a black picture
    want = decode(write_fits(tmp_path / "g.fits", bands), PREP)
    disguised = tmp_path / "g.png"
    disguised.write_bytes((tmp_path / "g.fits").read_bytes())
    assert np.array_equal(decode(disguised, PREP), want)


def test_without_astropy(tmp_path, monkeypatch):
    path = write_fits(tmp_path / "g.fits", galaxy_bands(32))
    monkeypatch.setitem(sys.modules, "astropy", None)  # `import astropy...` now raises ImportError
    monkeypatch.setitem(sys.modules, "astropy.io", None)
    with pytest.raises(BadImage, match=r"pip install 'gzmorph\[fits\]'"):
        decode(path, PREP)


# ------------------------------------------------------------------------------------------------------------------
# Names and the predict path
# ------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, suffix, stem", [
    ("123.fits.gz", ".fits.gz", "123"), ("123.FITS", ".fits", "123"), ("1.fit.gz", ".fit.gz", "1"),
    ("7.fts", ".fts", "7"), ("9.jpg", ".jpg", "9"), ("a.b.png", ".png", "a.b"), ("x.tar.gz", ".gz", "x.tar"),
    (".fits", "", ".fits"),
])
def test_suffix_and_stem(name, suffix, stem):
    assert image_suffix(name) == suffix
    assert image_stem(name) == stem


def test_list_images_finds_fits(tmp_path):
    write_fits(tmp_path / "a.fits", np.ones((8, 8), np.float32))
    write_fits(tmp_path / "b.fit", np.ones((8, 8), np.float32))
    (tmp_path / "c.fits.gz").write_bytes(gzip.compress((tmp_path / "a.fits").read_bytes()))
    write_image(tmp_path / "d.jpg", 64)
    (tmp_path / "notes.txt.gz").write_bytes(b"")
    (tmp_path / "e.gz").write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.fits", "b.fit", "c.fits.gz", "d.jpg"]


def test_predict_a_folder_with_fits(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write_fits(folder / "587722.fits", galaxy_bands(seed=1))
    plain = write_fits(tmp_path / "587723.fits", galaxy_bands(seed=2, colour=(0.6, 1.0, 1.4)))
    (folder / "587723.fits.gz").write_bytes(gzip.compress(plain.read_bytes()))
    write_image(folder / "100008.jpg", 424, seed=4)
    run = make_fake_run(tmp_path / "run", model="seed-cnn")
    summary = gzmorph.predict(run, folder, tmp_path / "out.csv", workers=1, progress=False)
    assert summary.n_predicted == 3 and not summary.skipped
    with open(tmp_path / "out.csv", newline="") as f:
        rows = {r["GalaxyID"]: r for r in csv.DictReader(f)}
    # The GalaxyID drops the whole image suffix: 587723.fits.gz is galaxy 587723 (prediction.galaxy_id must use
    # images.image_stem, since Path.stem leaves "587723.fits").
    assert sorted(rows) == ["100008", "587722", "587723"], sorted(rows)
    loaded = load_model(run)
    want = np.clip(predict_array(loaded.model, decode(folder / "587722.fits", loaded.prep)[None], policy=loaded.policy), 0, 1)[0]
    got = np.array([float(rows["587722"][c]) for c in gzmorph.tree.COLUMNS])
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_a_training_folder_may_hold_fits_cutouts(tmp_path, kaggle):
    """Kaggle's layout with some training images as FITS (e.g. cutouts fetched from a survey): found by GalaxyID and
    trained on like the JPEGs."""
    import gzmorph
    from gzmorph.data.layout import open_layout

    gids = sorted(kaggle.ids_of("train"))[:2]
    for k, gid in enumerate(gids):
        write_fits(kaggle.training_images / (f"{gid}.fits" + ("" if k else ".gz")), galaxy_bands(seed=k))
        kaggle.image(gid).unlink()
    layout = open_layout(kaggle.root)
    assert [layout.image_path(g).name for g in gids] == [f"{gids[0]}.fits.gz", f"{gids[1]}.fits"]
    run = gzmorph.train(gzmorph.TrainConfig(data=str(kaggle.root), out=str(tmp_path / "run"), model="seed-cnn",
                                            epochs=1, batch_size=4, threads=1, workers=1), progress=False)
    assert len(gzmorph.runs.read_metrics(run)) == 1
