"""Image decoding (draft DCT downscale, centre crop, resize), bad files, and the decoded-image cache."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

from gzmorph.data import cache as images_cache, decoder, images
from gzmorph.errors import GzmorphError
from gzmorph.data.cache import decode_all
from gzmorph.data.images import Preprocess, decode, list_images
from gzmorph.errors import BadImage

from helpers import random_image, write_image


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
