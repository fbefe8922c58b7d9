"""Image decoding (draft DCT downscale, centre crop, resize), bad files, and the decoded-image cache."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from gzmorph.data import cache as images_cache, decoder, images
from gzmorph.errors import GzmorphError
from gzmorph.data.cache import decode_all
from gzmorph.data.images import Preprocess, decode, list_images
from gzmorph.errors import BadImage

from helpers import cli_fails, random_image, write_image


def centre_square(side: int = 424, square: int = 148, value: int = 255) -> np.ndarray:
    img = np.zeros((side, side, 3), np.uint8)
    a = (side - square) // 2
    img[a:a + square, a:a + square] = value
    return img


def reference_decode(path, prep: Preprocess) -> np.ndarray:
    """Full-resolution decode, crop and bilinear resize: what decode() must match without its draft shortcut."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        crop = prep.crop * min(w, h) / images.REFERENCE_SIDE
        box = (w / 2 - crop / 2, h / 2 - crop / 2, w / 2 + crop / 2, h / 2 + crop / 2)
        return np.asarray(im.resize((prep.size, prep.size), Image.Resampling.BILINEAR, box=box))


# ------------------------------------------------------------------------------------------------------------------
# decode
# ------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("crop, size", [(148, 74), (424, 53), (212, 106), (148, 20), (424, 424)])
def test_decode_shape_and_dtype(tmp_path, crop, size):
    path = write_image(tmp_path / "g.jpg", 424, seed=1)
    out = decode(path, Preprocess(crop, size))
    assert out.shape == (size, size, 3) and out.dtype == np.uint8


def test_preprocess_validation():
    for crop, size in [(148, 0), (100, 148), (425, 74), (0, 0)]:
        with pytest.raises(GzmorphError, match="424"):
            Preprocess(crop, size)


def test_crop_is_the_centre(tmp_path):
    path = write_image(tmp_path / "sq.jpg", pixels=centre_square(), quality=95)
    # crop=148 is exactly the bright square: everything is bright.
    out = decode(path, Preprocess(148, 74)).astype(int)
    assert out[2:-2, 2:-2].min() > 220 and out.mean() > 240
    # The whole 424 field: bright in the middle third, dark in the corners.
    out = decode(path, Preprocess(424, 106)).astype(int)
    assert out[45:61, 45:61].min() > 220
    for corner in (out[:25, :25], out[:25, -25:], out[-25:, :25], out[-25:, -25:]):
        assert corner.max() < 30
    bright = (out.mean(axis=2) > 128).mean()
    assert abs(bright - (148 / 424) ** 2) < 0.02


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("crop, size", [(148, 74), (424, 53), (212, 106), (148, 20)])
def test_draft_matches_full_decode(tmp_path, monkeypatch, seed, crop, size):
    path = write_image(tmp_path / "g.jpg", 424, seed=seed)
    prep = Preprocess(crop, size)
    drafts = []
    from PIL import JpegImagePlugin

    jpeg_draft = JpegImagePlugin.JpegImageFile.draft

    def jpeg_spy(self, mode, size):
        drafts.append(size)
        return jpeg_draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", jpeg_spy)
    got = decode(path, prep).astype(int)
    assert drafts, "decode() did not ask libjpeg for a reduced-size decode"
    want = reference_decode(path, prep).astype(int)
    diff = np.abs(got - want)
    assert diff.mean() < 2 and diff.max() < 40, (diff.mean(), diff.max())


def test_png_decodes_exactly(tmp_path):
    pixels = random_image(424, seed=3)
    path = write_image(tmp_path / "g.png", pixels=pixels)
    out = decode(path, Preprocess(424, 424))
    assert np.array_equal(out, pixels)
    np.testing.assert_array_equal(decode(path, Preprocess(148, 74)), reference_decode(path, Preprocess(148, 74)))


def test_greyscale_jpeg_becomes_rgb(tmp_path):
    path = write_image(tmp_path / "grey.jpg", 424, seed=4, grey=True)
    with Image.open(path) as im:
        assert im.mode == "L"
    out = decode(path, Preprocess(148, 74))
    assert out.shape == (74, 74, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_other_sizes_are_cropped_in_proportion(tmp_path):
    # A 212 px image of the same field: its bright centre square is 74 px, and crop=148 (in 424 px units) is it.
    path = write_image(tmp_path / "half.jpg", pixels=centre_square(212, 74), quality=95)
    out = decode(path, Preprocess(148, 74)).astype(int)
    assert out.shape == (74, 74, 3)
    assert out[2:-2, 2:-2].min() > 200 and out.mean() > 230
    # A non-square image is cropped around its centre, in proportion to its short side.
    wide = np.zeros((212, 300, 3), np.uint8)
    wide[69:143, 113:187] = 255
    wide[69:143, 150] = 230  # not one value throughout: a crop the model would see as blank is refused
    out = decode(write_image(tmp_path / "wide.png", pixels=wide), Preprocess(148, 74)).astype(int)
    assert out[2:-2, 2:-2].min() > 200
    # And an image larger than 424 too.
    out = decode(write_image(tmp_path / "big.jpg", pixels=centre_square(848, 296), quality=95), Preprocess(148, 37))
    assert out.astype(int)[2:-2, 2:-2].min() > 200


def _truncated(tmp_path):
    data = write_image(tmp_path / "src.jpg", 424, seed=5).read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    return path


def _bad_files(tmp_path) -> dict[str, tuple[object, str]]:
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a JPEG, just text\n")
    return {
        "truncated": (_truncated(tmp_path), "truncated"),
        "zero-byte": (tmp_path / "zero.jpg", "not an image"),
        "text": (tmp_path / "text.jpg", "not an image"),
        "missing": (tmp_path / "missing.jpg", "file not found"),
    }


@pytest.mark.parametrize("kind", ["truncated", "zero-byte", "text", "missing"])
def test_bad_files_raise_bad_image_with_a_reason(tmp_path, kind):
    path, reason = _bad_files(tmp_path)[kind]
    with pytest.raises(BadImage) as e:
        decode(path, Preprocess(148, 74))
    assert reason in str(e.value)
    assert not isinstance(e.value, GzmorphError)


def test_list_images(tmp_path):
    with pytest.raises(GzmorphError, match="not a folder"):
        list_images(tmp_path / "nope")
    with pytest.raises(GzmorphError, match="no images"):
        list_images(tmp_path)
    for name in ("b.jpg", "a.PNG", "c.jpeg"):
        write_image(tmp_path / name, 16, 0)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "dir.jpg").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.jpg", "c.jpeg"]


def image_tree(root):
    """root/{2.jpg, 1.TIF, notes.txt}, root/a/3.tiff, root/a/empty/, root/b/4.png, root/b/deep/5.fits.gz, hidden
    files and folders, and a symlink from root/a/loop back up to root. (list_images never reads the files.)"""
    for name in ("2.jpg", "1.TIF", "notes.txt", "a/3.tiff", "b/4.png", "b/deep/5.fits.gz", ".DS_Store",
                 ".thumbnails/2.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (root / "a" / "empty").mkdir()
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    return root


def test_list_images_warns_once_about_subfolders_and_other_files(tmp_path, caplog):
    root = image_tree(tmp_path / "imgs")
    caplog.set_level("INFO", logger="gzmorph")
    assert [p.name for p in list_images(root)] == ["1.TIF", "2.jpg"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, warnings
    assert "1 file that is not an image was left out" in warnings[0] and warnings[0].endswith(": notes.txt")
    # 3.tiff and 4.png, one level down only (a large tree below is not walked just to count it); the hidden folder
    # not at all.
    assert "2 images in 2 subfolders not searched (and maybe more below them); pass --recursive" in warnings[1]


def test_list_images_recursive(tmp_path, caplog):
    root = image_tree(tmp_path / "imgs")
    caplog.set_level("INFO", logger="gzmorph")
    got = [p.relative_to(root).as_posix() for p in list_images(root, recursive=True)]
    # Each folder's images, then its subfolders in name order; the symlink loop is walked into at most once.
    assert got == ["1.TIF", "2.jpg", "a/3.tiff", "b/4.png", "b/deep/5.fits.gz"]
    assert list_images(root, recursive=True) == list_images(str(root), True)  # the same order every time
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(set(warnings)) == 1 and "notes.txt" in warnings[0] and "--recursive" not in warnings[0]


def test_list_images_names_at_most_five_other_files(tmp_path, caplog):
    write_image(tmp_path / "1.jpg", 16, 0)
    for k in range(7):
        (tmp_path / f"{k}.csv").write_text("x")
    caplog.set_level("WARNING", logger="gzmorph")
    list_images(tmp_path)
    (message,) = [r.getMessage() for r in caplog.records]
    assert "7 files that are not images were left out" in message
    assert message.endswith(": 0.csv, 1.csv, 2.csv, 3.csv, 4.csv, ...")


def test_a_folder_without_images_is_one_error_saying_what_is_there(tmp_path, caplog):
    caplog.set_level("INFO", logger="gzmorph")
    for k in range(3):
        write_image(tmp_path / f"run{k}" / f"{k}.jpg", 16, 0)
    (tmp_path / "labels.csv").write_text("x")
    with pytest.raises(GzmorphError) as e:
        list_images(tmp_path)
    assert str(e.value) == (f"{tmp_path}: no images in this folder (1 file that is not an image was left out (images "
                            f"are {' '.join(images.IMAGE_SUFFIXES)}): labels.csv; 3 images in 3 subfolders not "
                            f"searched (and maybe more below them); pass --recursive to include them)")
    assert not caplog.records  # the error says it all: no warnings before it
    assert len(list_images(tmp_path, recursive=True)) == 3


# ------------------------------------------------------------------------------------------------------------------
# High bit depth, TIFF, and the modes that are refused
# ------------------------------------------------------------------------------------------------------------------

FULL = Preprocess(424, 424)  # the whole 424 px field at 424 px: decode() gives the decoded pixels themselves
PREP_SMALL = Preprocess(148, 74)


def write_png16(path, values: np.ndarray):
    """A 16-bit PNG of (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA uint16 values. Pillow writes 16-bit grey PNGs
    but not 48/64-bit colour ones, so this writes the PNG chunks itself (PNG stores samples big-endian)."""
    import struct
    import zlib

    h, w = values.shape[:2]
    colour_type = {2: 0, 3: 2, 4: 6}[values.ndim if values.ndim == 2 else values.shape[2]]
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))  # filter 0 before each row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def write_grey16_png(path, values: np.ndarray):
    Image.fromarray(values.astype(np.uint16)).save(path)  # Pillow mode "I;16": a 16-bit grey PNG
    return path


def write_tiff(path, values: np.ndarray, **options):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(path, values, **options)
    return path


def x257(pixels: np.ndarray) -> np.ndarray:
    """The 16-bit copy of 8-bit pixels an image tool writes: 0 -> 0, 255 -> 65535."""
    return pixels.astype(np.uint16) * 257


def sixteen_bit_copies(folder, rgb: np.ndarray) -> dict[str, tuple]:
    """name -> (16-bit file of ``rgb`` or its grey, the 8-bit PNG it must decode to exactly)."""
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    rgb8 = write_image(folder / "rgb8.png", pixels=rgb)
    grey8 = folder / "grey8.png"
    Image.fromarray(grey).save(grey8)
    return {
        "grey PNG (I;16)": (write_grey16_png(folder / "g16.png", x257(grey)), grey8),
        "RGB PNG (48-bit)": (write_png16(folder / "rgb48.png", x257(rgb)), rgb8),
        "RGBA PNG (64-bit)": (write_png16(folder / "rgba64.png", x257(np.dstack([rgb, grey]))), rgb8),
        "RGB TIFF": (write_tiff(folder / "rgb16.tif", x257(rgb), photometric="rgb"), rgb8),
        "RGB TIFF, big-endian": (write_tiff(folder / "rgb16be.tiff", x257(rgb), photometric="rgb", byteorder=">"),
                                 rgb8),
        "grey TIFF (I;16)": (write_tiff(folder / "g16.tif", x257(grey)), grey8),
        "grey TIFF, big-endian (I;16B)": (write_tiff(folder / "g16be.tif", x257(grey), byteorder=">"), grey8),
    }


def test_pillow_reads_16_bit_colour_as_its_high_bytes(tmp_path):
    """What decode() leaves to Pillow: 16-bit RGB(A) TIFF and 48/64-bit PNG open as 8-bit "RGB"/"RGBA" holding each
    sample's high byte (within one level of the exact x 255 / 65535, and exact for x257 copies). A Pillow that
    changes this (to a 16-bit RGB mode, or keeping the low byte) fails here first."""
    rgb = random_image(64, seed=21)
    low = np.random.default_rng(21).integers(0, 256, rgb.shape)
    rgb16 = (rgb.astype(np.uint16) * 256 + low).astype(np.uint16)  # high bytes rgb, low bytes noise
    for path in (write_tiff(tmp_path / "c.tif", rgb16, photometric="rgb"), write_png16(tmp_path / "c.png", rgb16)):
        with Image.open(path) as im:
            assert im.mode == "RGB", (path.name, im.mode)
            assert np.array_equal(np.asarray(im), rgb), path.name


@pytest.mark.parametrize("name", ["grey PNG (I;16)", "RGB PNG (48-bit)", "RGBA PNG (64-bit)", "RGB TIFF",
                                  "RGB TIFF, big-endian", "grey TIFF (I;16)", "grey TIFF, big-endian (I;16B)"])
def test_16_bit_copies_decode_to_the_8_bit_pixels(tmp_path, name):
    path, eight_bit = sixteen_bit_copies(tmp_path, random_image(424, seed=22))[name]
    assert np.array_equal(decode(path, FULL), decode(eight_bit, FULL))
    assert np.array_equal(decode(path, Preprocess(148, 74)), decode(eight_bit, Preprocess(148, 74)))


def test_16_bit_grey_is_scaled_by_its_full_range(tmp_path):
    # Every 16-bit value, not only multiples of 257: round(v x 255 / 65535). v / 257 is never a half (65535 = 255 x
    # 257), so there is no tie to round either way.
    values = np.random.default_rng(23).integers(0, 65536, (424, 424)).astype(np.uint16)
    values[0, :4] = (0, 128, 129, 65535)
    out = decode(write_grey16_png(tmp_path / "v.png", values), FULL)
    want = np.rint(values / 257.0).astype(np.uint8)
    assert np.array_equal(out[..., 0], want) and np.array_equal(out[..., 1], want) and np.array_equal(out[..., 2], want)
    assert list(out[0, :4, 0]) == [0, 0, 1, 255]


def flux_map(side: int = 424, seed: int = 24) -> np.ndarray:
    """(side, side) float32 fluxes: sky 100 with noise 2 and a galaxy peaking at 5000 (a linear image)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] - (side - 1) / 2
    galaxy = 800 * np.exp(-np.hypot(x, 1.6 * y) / 20) + 4200 * np.exp(-np.hypot(x, y) / 3)
    return (100 + galaxy + rng.normal(0, 2, galaxy.shape)).astype(np.float32)


def test_float_tiff_is_stretched_like_a_single_band_fits(tmp_path):
    flux = flux_map()
    out = decode(write_tiff(tmp_path / "f.tif", flux), FULL)
    assert np.array_equal(out, images.asinh_rgb(np.repeat(flux[None].astype(np.float64), 3, axis=0)))
    # Not Pillow's convert, which clips fluxes into 0..255 (the sky alone would be 100, the galaxy 255).
    assert np.median(out) < 10 and out.max() > 200
    pytest.importorskip("astropy")
    from astropy.io import fits

    fits.PrimaryHDU(flux[::-1]).writeto(tmp_path / "f.fits")  # FITS stores the bottom row first
    assert np.array_equal(out, decode(tmp_path / "f.fits", FULL))


def test_32_bit_integer_tiffs_are_fluxes_even_within_16_bits(tmp_path):
    """A TIFF of 32-bit integers holds counts (a 12-bit camera's 0..3000, say): read as 16-bit display values they
    would be near black, so they are stretched like a FITS image whatever their range."""
    counts = np.rint(flux_map() * 0.6).astype(np.int32)  # about 0..3000
    assert 0 <= counts.min() and counts.max() < 4096
    out = decode(write_tiff(tmp_path / "c.tif", counts), FULL)
    assert np.array_equal(out, images.asinh_rgb(np.repeat(counts[None].astype(np.float64), 3, axis=0)))
    assert out.mean() > 5 * (counts.mean() * 255 / 65535)  # not the near-black 16-bit reading


def test_32_bit_integers_beyond_16_bits_are_fluxes(tmp_path):
    flux = flux_map()
    counts = np.rint(flux * 100).astype(np.int32)  # up to 500,000: beyond any 16-bit range
    assert counts.max() > 65535
    out = decode(write_tiff(tmp_path / "counts.tif", counts), FULL)
    assert np.array_equal(out, images.asinh_rgb(np.repeat(counts[None].astype(np.float64), 3, axis=0)))
    # Negative counts (a sky-subtracted image) are fluxes too, whatever their range.
    sky_subtracted = np.rint(flux - 100).astype(np.int32)
    assert sky_subtracted.min() < 0 and sky_subtracted.max() <= 65535
    out = decode(write_tiff(tmp_path / "sub.tif", sky_subtracted), FULL)
    assert np.array_equal(out, images.asinh_rgb(np.repeat(sky_subtracted[None].astype(np.float64), 3, axis=0)))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped(tmp_path, mode):
    rgb = random_image(424, seed=25)
    alpha = np.random.default_rng(25).integers(0, 256, (424, 424)).astype(np.uint8)
    colour = Image.fromarray(rgb) if mode == "RGBA" else Image.fromarray(rgb).convert("L")
    with_alpha = colour.convert(mode)
    with_alpha.putalpha(Image.fromarray(alpha))
    with_alpha.save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode == mode
    colour.save(tmp_path / "no-alpha.png")
    assert np.array_equal(decode(tmp_path / "a.png", FULL), decode(tmp_path / "no-alpha.png", FULL))


def test_alpha_of_the_modes_no_file_format_writes_is_dropped():
    # PA, La and RGBa come from Pillow operations rather than files (PNG cannot hold PA): as_rgb still drops alpha.
    rgb = Image.fromarray(random_image(32, seed=26))
    opaque = np.full((32, 32), 255, np.uint8)
    half = Image.fromarray(np.full((32, 32), 128, np.uint8))
    palette = rgb.convert("P")
    pa = palette.convert("PA")
    pa.putalpha(half)
    assert np.array_equal(np.asarray(images.as_rgb(pa)), np.asarray(palette.convert("RGB")))
    la = rgb.convert("LA")
    la.putalpha(Image.fromarray(opaque))  # premultiplying by an opaque alpha changes nothing to compare against
    assert np.array_equal(np.asarray(images.as_rgb(la.convert("La"))), np.asarray(rgb.convert("L").convert("RGB")))
    rgba = rgb.convert("RGBA")
    assert np.array_equal(np.asarray(images.as_rgb(rgba.convert("RGBa"))), np.asarray(rgb))


def test_every_pillow_mode_has_one_decision():
    assert set(Image.MODES) <= set(images.MODE_RULES), set(Image.MODES) - set(images.MODE_RULES)
    for mode, (rule, why) in images.MODE_RULES.items():
        assert rule in (images.CONVERT, images.DROP_ALPHA, images.SCALE_16_BIT, images.INTEGER, images.FLUX,
                        images.REFUSE) and why, mode


@pytest.mark.parametrize("mode", ["CMYK", "LAB", "HSV"])
def test_modes_that_are_no_sky_picture_are_refused(mode):
    with pytest.raises(BadImage, match=f"mode '{mode}'.*save it as RGB"):
        images.as_rgb(Image.new(mode, (8, 8)))


def test_cmyk_files_are_refused(tmp_path):
    cmyk = Image.fromarray(random_image(64, seed=26)).convert("CMYK")
    for name in ("c.jpg", "c.tif"):
        cmyk.save(tmp_path / name)
        with pytest.raises(BadImage, match="'CMYK'"):
            decode(tmp_path / name, PREP_SMALL)



@pytest.mark.parametrize("layout, needles", [
    ("4 bands, one page", ("4 samples of 8-bit unsigned integer", "min-is-black")),
    ("2 bands, one page", ("2 bands", "min-is-black")),
    ("3 float bands", ("3 samples of 32-bit float", "RGB")),
    ("64-bit float", ("1 sample of 64-bit float",)),
    ("16-bit colour planes", ("separate planes",)),
    ("4 full-size pages", ("4 pages",)),
    ("16-bit min-is-white", ("16-bit min-is-white", "negative")),
])
def test_tiff_layouts_that_are_no_picture_are_refused(tmp_path, layout, needles):
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(27)
    bands = rng.integers(0, 256, (64, 64, 4)).astype(np.uint8)
    path = tmp_path / "t.tif"
    if layout == "4 bands, one page":
        tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="contig")
    elif layout == "2 bands, one page":  # Pillow opens it as grey and would silently drop the second band
        tifffile.imwrite(path, bands[..., :2], photometric="minisblack", planarconfig="contig")
    elif layout == "3 float bands":
        tifffile.imwrite(path, bands[..., :3].astype(np.float32), photometric="rgb")
    elif layout == "64-bit float":
        tifffile.imwrite(path, bands[..., 0].astype(np.float64))
    elif layout == "16-bit colour planes":  # Pillow opens it as RGB of garbage
        tifffile.imwrite(path, x257(np.moveaxis(bands[..., :3], -1, 0)), photometric="rgb", planarconfig="separate")
    elif layout == "16-bit min-is-white":  # Pillow reads it as its negative
        tifffile.imwrite(path, x257(bands[..., 0]), photometric="miniswhite")
    else:  # one band per page, as some survey tools write them: Pillow would read only the first
        tifffile.imwrite(path, np.moveaxis(bands, -1, 0), photometric="minisblack")
    with pytest.raises(BadImage) as e:
        decode(path, PREP_SMALL)
    for needle in needles:
        assert needle in str(e.value)
    assert "save it as" in str(e.value)


def test_tiff_layouts_that_are_pictures_are_read(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rgb = random_image(424, seed=28)
    want = decode(write_image(tmp_path / "rgb.png", pixels=rgb), FULL)
    # 8-bit colour planes (Pillow reads these right), RGB + an unspecified extra band (the file says the first three
    # are red, green, blue), and a smaller second page (a preview or pyramid level, not another picture).
    tifffile.imwrite(tmp_path / "planes.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "extra.tif", np.dstack([rgb, rgb[..., :1]]), photometric="rgb",
                     extrasamples=["unspecified"])
    with tifffile.TiffWriter(tmp_path / "preview.tif") as tif:
        tif.write(rgb, photometric="rgb")
        tif.write(rgb[::4, ::4], photometric="rgb", subfiletype=1)
    for name in ("planes.tif", "extra.tif", "preview.tif"):
        assert np.array_equal(decode(tmp_path / name, FULL), want), name
    # 8-bit min-is-white (0 is white), which Pillow inverts itself.
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    tifffile.imwrite(tmp_path / "white.tif", 255 - grey, photometric="miniswhite")
    assert np.array_equal(decode(tmp_path / "white.tif", FULL), np.repeat(grey[..., None], 3, axis=2))


def test_a_multi_band_tiff_is_one_line_from_the_cli(tmp_path, capsys):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "that.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 4), np.uint8), photometric="minisblack", planarconfig="contig")
    cli_fails(capsys, ["predict", path, "-o", tmp_path / "x.csv", "-q", "--workers", 1], "that.tif", "4 samples",
              "save it as")
    assert not (tmp_path / "x.csv").exists()


def test_a_real_galaxy_gets_the_same_answers_from_every_format(tmp_path, real_data):
    """The same galaxy as 8-bit JPEG and PNG and as 16-bit PNG and TIFF copies: the packaged model's 37 answers
    agree within 0.02, in colour and in grey. Pillow's own convert of the 16-bit grey copy (the old decode) does not:
    it clips the galaxy white."""
    from gzmorph.inference.tta import predict_answers
    from gzmorph.runs import load_model

    jpeg = real_data / "images_training_rev1" / "100008.jpg"
    if not jpeg.is_file():
        pytest.skip(f"{jpeg} not in this copy of the data")
    with Image.open(jpeg) as im:
        rgb = np.asarray(im.convert("RGB"))
    copies = sixteen_bit_copies(tmp_path, rgb)
    colour = [jpeg, copies["RGB PNG (48-bit)"][1]] + [copies[k][0] for k in ("RGB PNG (48-bit)", "RGB TIFF")]
    grey = [copies["grey PNG (I;16)"][1]] + [copies[k][0] for k in ("grey PNG (I;16)", "grey TIFF (I;16)")]
    loaded = load_model("pretrained", precision="fp32")
    prep = loaded.prep
    with Image.open(copies["grey PNG (I;16)"][0]) as im:
        clipped = np.asarray(im.convert("RGB").resize((prep.size, prep.size), Image.Resampling.BILINEAR,
                                                      box=_centre_box(im.size[0], prep.crop)))
    pixels = np.stack([decode(p, prep) for p in colour + grey] + [clipped])
    answers = predict_answers(loaded, pixels, batch_size=8, tta=1)
    assert answers.shape == (len(pixels), 37)
    for group in (answers[:len(colour)], answers[len(colour):-1]):
        assert np.abs(group - group[0]).max() < 0.02, np.abs(group - group[0]).max(axis=1)
    assert np.abs(answers[-1] - answers[len(colour)]).max() > 0.1  # what the fix fixed


def _centre_box(side: int, crop: int) -> tuple[float, float, float, float]:
    half = crop * side / images.REFERENCE_SIDE / 2
    return (side / 2 - half, side / 2 - half, side / 2 + half, side / 2 + half)


# ------------------------------------------------------------------------------------------------------------------
# decode_all and its cache
# ------------------------------------------------------------------------------------------------------------------

PREP = Preprocess(148, 32)


@pytest.fixture
def files(tmp_path):
    """20 small JPEGs (more than one 16-file chunk, so two workers really share the work)."""
    return [write_image(tmp_path / "img" / f"{k:03d}.jpg", 96, seed=k) for k in range(20)]


def test_decode_all_matches_decode_and_parallel_equals_serial(tmp_path, files):
    serial = decode_all(files, PREP, cache_dir=tmp_path / "c1", workers=1, progress=False)
    parallel = decode_all(files, PREP, cache_dir=tmp_path / "c2", workers=2, progress=False)
    assert serial.pixels.shape == (20, 32, 32, 3) and serial.pixels.dtype == np.uint8
    assert serial.ok.all() and parallel.ok.all() and serial.errors == {} == parallel.errors
    assert np.array_equal(np.asarray(serial.pixels), np.asarray(parallel.pixels))
    for k in (0, 7, 19):
        assert np.array_equal(serial.pixels[k], decode(files[k], PREP))
    assert serial.cache_path.parent == tmp_path / "c1" and serial.cache_path.exists()
    assert not list((tmp_path / "c1").glob("*.tmp-*"))


def test_cache_hit_returns_the_same_pixels_without_decoding(tmp_path, files, monkeypatch):
    first = decode_all(files, PREP, cache_dir=tmp_path / "c", workers=1, progress=False)
    mtime = first.cache_path.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("decode() called on a cache hit")

    monkeypatch.setattr(decoder, "decode", boom)
    started = time.perf_counter()
    second = decode_all(files, PREP, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert time.perf_counter() - started < 1.0
    assert second.cache_path == first.cache_path and second.cache_path.stat().st_mtime_ns == mtime
    assert np.array_equal(np.asarray(first.pixels), np.asarray(second.pixels))
    assert second.ok.all()
    # Other parameters or another file list are another cache entry.
    monkeypatch.undo()
    other = decode_all(files, Preprocess(148, 16), cache_dir=tmp_path / "c", workers=1, progress=False)
    fewer = decode_all(files[:5], PREP, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert len({first.cache_path, other.cache_path, fewer.cache_path}) == 3
    assert np.array_equal(np.asarray(fewer.pixels), np.asarray(first.pixels[:5]))


def test_changed_file_invalidates_the_cache(tmp_path, files):
    first = decode_all(files, PREP, cache_dir=tmp_path / "c", workers=1, progress=False)
    before = np.array(first.pixels)
    write_image(files[3], 96, seed=999)  # new content, new size
    st = files[3].stat()
    os.utime(files[3], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    second = decode_all(files, PREP, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert second.cache_path != first.cache_path
    assert np.array_equal(second.pixels[3], decode(files[3], PREP))
    assert not np.array_equal(second.pixels[3], before[3])
    assert np.array_equal(np.delete(np.asarray(second.pixels), 3, 0), np.delete(before, 3, 0))
    # Touching alone (same bytes, new mtime) is also a change.
    os.utime(files[5], ns=(st.st_atime_ns, st.st_mtime_ns + 9_000_000_000))
    third = decode_all(files, PREP, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert third.cache_path not in (first.cache_path, second.cache_path)


def test_damaged_cache_is_rebuilt(tmp_path, files):
    first = decode_all(files, PREP, cache_dir=tmp_path / "c", workers=1, progress=False)
    expected = np.array(first.pixels)
    first.cache_path.write_bytes(b"garbage")
    again = decode_all(files, PREP, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert np.array_equal(np.asarray(again.pixels), expected)


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_files_are_recorded_not_raised(tmp_path, files, workers):
    bad = _bad_files(tmp_path)
    paths = list(files)
    where = {}
    for k, (name, (path, reason)) in zip((2, 9, 17, 19), bad.items()):
        paths[k] = path
        where[k] = reason
    out = decode_all(paths, PREP, cache_dir=tmp_path / f"c{workers}", workers=workers, progress=False)
    assert list(np.flatnonzero(~out.ok)) == sorted(where)
    assert sorted(out.errors) == sorted(where)
    for k, reason in where.items():
        assert reason in out.errors[k]
    assert np.array_equal(out.pixels[0], decode(files[0], PREP))
    # The errors are cached too.
    again = decode_all(paths, PREP, cache_dir=tmp_path / f"c{workers}", workers=workers, progress=False)
    assert again.cache_path == out.cache_path and again.errors == out.errors
    assert np.array_equal(again.ok, out.ok)


def test_unwritable_cache_dir_is_a_gzmorph_error(tmp_path, files):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(GzmorphError) as e:
        decode_all(files, PREP, cache_dir=blocker / "cache", workers=1, progress=False)
    assert str(blocker / "cache") in str(e.value) and "GZMORPH_CACHE" in str(e.value)


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GZMORPH_CACHE", str(tmp_path / "env-cache"))
    assert images_cache.default_cache_dir() == tmp_path / "env-cache"


@pytest.mark.parametrize("make", ["jpg", "png", "fits", "array"])
def test_a_blank_picture_is_refused_not_answered(tmp_path, make):
    """An all-zero cutout (off a survey's footprint) would get answers as confident as a galaxy's."""
    blank = np.zeros((200, 200, 3), np.uint8)
    if make == "array":
        import gzmorph
        from gzmorph.errors import GzmorphError

        with pytest.raises(GzmorphError, match="blank"):
            gzmorph.load_model().predict(blank)
        return
    if make == "fits":
        fits = pytest.importorskip("astropy.io.fits")
        path = tmp_path / "b.fits"
        fits.PrimaryHDU(np.zeros((200, 200), np.float32)).writeto(path)
    else:
        path = write_image(tmp_path / f"b.{make}", pixels=blank)
    with pytest.raises(BadImage, match="blank"):
        decode(path, FULL)


# ------------------------------------------------------------------------------------------------------------------
# decode_chunks: pixels through a shared-memory ring, or pickled through pipes where it cannot be had
# ------------------------------------------------------------------------------------------------------------------

def _shm_segments() -> set[str]:
    return {p.name for p in Path(decoder.SHM_FOLDER).glob("psm_*")} if Path(decoder.SHM_FOLDER).is_dir() else set()


def _chunks(paths, **kw) -> list[decoder.Chunk]:
    return list(decoder.decode_chunks(paths, PREP, chunk=3, **kw))


@pytest.mark.parametrize("ahead", [0, 2])
def test_the_shared_ring_gives_what_one_process_decodes_bad_files_included(tmp_path, files, ahead, monkeypatch):
    paths = list(files)
    paths[4] = _bad_files(tmp_path)["truncated"][0]
    serial = _chunks(paths, workers=1)
    opened = []
    real_open = decoder._SharedRing.open
    monkeypatch.setattr(decoder._SharedRing, "open", staticmethod(lambda *a: opened.append(real_open(*a)) or opened[-1]))
    before = _shm_segments()
    ring = _chunks(paths, workers=2, ahead=ahead)
    assert opened and opened[0] is not None  # the ring was used, not the pipes
    assert [(c.start, c.size, c.good, c.bad) for c in ring] == [(c.start, c.size, c.good, c.bad) for c in serial]
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(ring, serial))
    assert ring[1].good == [3, 5] and ring[1].pixels.shape == (2, 32, 32, 3)  # the bad file left out of its chunk
    # every chunk owns its pixels: none is a view of a slot that the next chunk overwrites
    assert all(c.pixels.base is None or c.pixels.base.flags.owndata for c in ring)
    assert _shm_segments() == before  # unlinked once the generator is done
    # asked for pipes (the benchmarks' comparison), it opens no ring and gives the same chunks
    piped = _chunks(paths, workers=2, ahead=ahead, shared_memory=False)
    assert len(opened) == 1 and [c.good for c in piped] == [c.good for c in serial]
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(piped, serial))
    assert decoder.shared_memory_works(3, PREP) and _shm_segments() == before


def test_a_consumer_that_stops_early_leaves_no_shared_memory(files):
    before = _shm_segments()
    stream = decoder.decode_chunks(files, PREP, chunk=2, workers=2)
    next(stream)
    stream.close()
    assert _shm_segments() == before


def test_without_room_in_dev_shm_chunks_travel_through_pipes(files, monkeypatch):
    """Writing past a full /dev/shm (Docker gives 64 MB) kills the writer with SIGBUS: the ring must fit first."""
    free = SimpleNamespace(f_bavail=10, f_frsize=4096)
    monkeypatch.setattr(decoder.os, "statvfs", lambda path: free)
    assert decoder._SharedRing.open(4, (3, 32, 32, 3)) is None
    assert not decoder.shared_memory_works(256, PREP)
    piped = _chunks(files, workers=2)
    assert np.array_equal(np.concatenate([c.pixels for c in piped]), np.stack([decode(f, PREP) for f in files]))


def test_a_dev_shm_filled_by_others_since_the_check_falls_back_to_pipes(files, monkeypatch):
    """The pages are reserved when the ring is made: no room is an error then (pipes instead), not a worker's SIGBUS."""
    import errno

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(decoder.os, "posix_fallocate", full)
    before = _shm_segments()
    assert decoder._SharedRing.open(4, (3, 32, 32, 3)) is None
    assert _shm_segments() == before  # the segment it made is gone again
    assert len(np.concatenate([c.pixels for c in _chunks(files, workers=2)])) == len(files)


def test_two_threads_decoding_at_once_each_get_their_own_pixels(tmp_path, files):
    import threading

    others = [write_image(tmp_path / "other" / f"{k:03d}.jpg", 96, seed=100 + k) for k in range(20)]
    results = {}

    def run(name, paths):
        results[name] = np.concatenate([c.pixels for c in _chunks(paths, workers=2)])

    threads = [threading.Thread(target=run, args=(n, p)) for n, p in (("a", files), ("b", others))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.array_equal(results["a"], np.stack([decode(f, PREP) for f in files]))
    assert np.array_equal(results["b"], np.stack([decode(f, PREP) for f in others]))
