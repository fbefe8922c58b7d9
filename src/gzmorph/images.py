"""Image decoding (DCT-domain downscale), centre crop + resize, and the on-disk cache of decoded uint8 arrays.

Decoding dominates data preparation, so JPEGs are decoded at reduced size by libjpeg itself (Pillow's ``draft``
picks a 1/2, 1/4 or 1/8 DCT scale), which is several times faster than decoding 424 px and resizing. The result of
preparing a set of files is cached as one ``.npy`` array keyed by the files and the preparation parameters, so the
second run memory-maps it and starts in seconds.

FITS cutouts (``.fits``, ``.fit``, ``.fts``, optionally gzipped: ``.fits.gz`` ...) are read with astropy (the
``gzmorph[fits]`` extra, imported only when a FITS file comes) and turned into the same kind of 8-bit RGB picture as
the SDSS colour JPEGs the Kaggle images are, then cropped and resized exactly like a JPEG:

* Data: the first HDU holding a 2-D or 3-D image (the primary HDU, or an extension when the primary is empty).
  ``(H, W)`` is one band, shown grey; ``(3, H, W)`` or ``(H, W, 3)`` are three bands used as red, green, blue in that
  order, so give them ordered red to blue (e.g. SDSS i, r, g, as its colour JPEGs use). Bands are taken as fluxes in
  one unit (e.g. calibrated nanomaggies): their ratios, the colours, are kept.
* Stretch (after Lupton et al. 2004, the method behind SDSS's colour JPEGs): per band, the median (the sky) is
  subtracted; NaN/inf pixels become sky. The intensity I (mean of the bands) goes through ``asinh(I / b)``, linear
  for faint pixels and logarithmic for bright ones, and every band is multiplied by the same factor
  ``k asinh(I / b) / I``, so colours are kept. ``k`` and the softening ``b`` are chosen per image so that the sky noise
  (a robust MAD estimate) and the 99.5th percentile of I land where they lie in the Kaggle JPEGs the models learnt
  from (measured over 1,035 of them: sky about 3 grey levels with noise 3, 99.5th percentile of I at 120); values are
  clipped to 0..255.
* Orientation: FITS stores the bottom row first, image files the top row first; FITS rows are flipped so that a FITS
  and a JPEG of the same field look the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import warnings
import zlib
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import GzmorphError
from .fsio import atomic_write_json, replace_atomically

log = logging.getLogger("gzmorph")

REFERENCE_SIDE = 424  # Kaggle images are 424x424; crops are given in these pixels
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", *FITS_SUFFIXES)
_LONGEST_FIRST = sorted(IMAGE_SUFFIXES, key=len, reverse=True)  # a two-part suffix before any one-part one it ends in
# Bump when decoding changes, so old caches are not reused.
DECODE_VERSION = 1

Image.MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs early with a clear error, not an OOM


@dataclass(frozen=True)
class Preprocess:
    """Centre ``crop`` x ``crop`` pixels (in 424 px units) of each image, resized to ``size`` x ``size``."""

    crop: int
    size: int

    def __post_init__(self):
        if not (1 <= self.size <= self.crop <= REFERENCE_SIDE):
            raise GzmorphError(f"bad preprocessing: need 1 <= size ({self.size}) <= crop ({self.crop}) <= 424")


class BadImage(Exception):
    """An image that cannot be used; the message says why."""


def image_suffix(path: str | Path) -> str:
    """The file-type suffix, lower-cased; two parts for a gzipped FITS file (``x.fits.gz`` -> ``.fits.gz``, where
    ``Path.suffix`` says ``.gz``)."""
    name = Path(path).name.lower()
    for suffix in _LONGEST_FIRST:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return Path(path).suffix.lower()


def image_stem(path: str | Path) -> str:
    """The file name without its image suffix: the GalaxyID of ``123.jpg``, ``123.fits`` and ``123.fits.gz`` alike.
    Names without an image suffix keep ``Path.stem``'s meaning."""
    path = Path(path)
    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix in IMAGE_SUFFIXES else path.stem


def decode(path: str | Path, prep: Preprocess) -> np.ndarray:
    """Decode one image file to a (size, size, 3) uint8 array. Raises :class:`BadImage`."""
    if image_suffix(path) in FITS_SUFFIXES:
        return _crop_resize(Image.fromarray(read_fits_rgb(path), "RGB"), prep)
    try:
        with Image.open(path) as im:
            if im.format == "FITS":  # a FITS file under another name: Pillow would clip its raw values to 0..255
                return _crop_resize(Image.fromarray(read_fits_rgb(path), "RGB"), prep)
            return _crop_resize(im, prep)
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can read (corrupt, empty or unknown format)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"image too large ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated JPEG data, bad headers, ...
        raise BadImage(f"cannot decode ({e})") from None


def _crop_resize(im: Image.Image, prep: Preprocess) -> np.ndarray:
    """The centre crop of ``prep`` (in proportion to the 424 px reference) resized to ``prep.size``: the one crop and
    resize every input format goes through."""
    w, h = im.size
    # Images of another size are cropped in proportion (the crop means the same part of the field).
    scale = min(w, h) / REFERENCE_SIDE
    crop = prep.crop * scale
    if im.format == "JPEG":
        # Ask libjpeg for the smallest DCT scale whose crop still has >= size pixels.
        want = math.ceil(min(w, h) * prep.size / crop)
        im.draft("RGB", (want, want))
    im = im.convert("RGB")
    # draft() may have shrunk the image: redo the crop box in the decoded pixels.
    f = im.size[0] / w
    cx, cy, half = im.size[0] / 2, im.size[1] / 2, crop * f / 2
    box = (cx - half, cy - half, cx + half, cy + half)
    out = im.resize((prep.size, prep.size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# FITS cutouts: raw fluxes -> an 8-bit RGB picture like the SDSS colour JPEGs (see the module docstring)
# ----------------------------------------------------------------------------------------------------------------

# Where the Kaggle JPEGs put things, in grey levels, measured over 1,035 of the shared training images (every 11th):
# median sky level of the corners, the sky's noise (1.4826 x MAD of the intensity there), and the median over images
# of the 99.5th percentile of the intensity (mean of R, G, B).
SKY_GREY = 3.0
NOISE_GREY = 3.0
BRIGHT_GREY = 120.0
BRIGHT_PERCENTILE = 99.5
# A noise-free image (a simulation) has no noise to set the softening by: it is then 1/1000 of the bright level.
MAX_STRETCH = 1e3


def read_fits_rgb(path: str | Path) -> np.ndarray:
    """A FITS cutout as an (H, W, 3) uint8 picture, top row first. Raises :class:`BadImage`."""
    try:
        from astropy.io import fits
    except ImportError:
        raise BadImage("FITS input needs `pip install 'gzmorph[fits]'`") from None
    try:
        with warnings.catch_warnings():
            # Non-standard but readable headers are common in cutout services' files; astropy warns and reads them.
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False) as hdul:
                data = _first_image(hdul)
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except BadImage:
        raise
    except (OSError, EOFError, ValueError, TypeError, IndexError, KeyError, zlib.error, fits.VerifyError) as e:
        # Not FITS, truncated data, a broken header or gzip stream: astropy's errors vary with where it breaks.
        raise BadImage(f"cannot read as FITS ({e or type(e).__name__})") from None
    bands = _bands(np.asarray(data))
    # FITS row 0 is the bottom of the picture, JPEG row 0 the top: flip so both show the field the same way up.
    return asinh_rgb(bands[:, ::-1, :])


def _first_image(hdul) -> np.ndarray:
    shapes = []
    for hdu in hdul:
        shape = tuple(hdu.shape) if hdu.is_image else ()
        shapes.append(f"{hdu.name or type(hdu).__name__} {shape or '(no image)'}")
        if len(shape) in (2, 3):
            if math.prod(shape) > 3 * Image.MAX_IMAGE_PIXELS:  # checked on the header, before reading the data
                raise BadImage(f"image too large ({shape}: more than {Image.MAX_IMAGE_PIXELS} pixels per band)")
            return hdu.data
    raise BadImage(f"no 2-D or 3-D image in any HDU ({'; '.join(shapes) or 'no HDUs'}); a truncated file reads "
                   f"like this too")


def _bands(data: np.ndarray) -> np.ndarray:
    """(3, H, W) float64 bands ordered red, green, blue from a 2-D or 3-D FITS image."""
    if data.ndim == 2:
        return np.repeat(data[None].astype(np.float64), 3, axis=0)  # one band: grey
    if data.ndim == 3 and data.shape[0] == 1:
        return np.repeat(data.astype(np.float64), 3, axis=0)
    if data.ndim == 3 and data.shape[0] == 3:
        return data.astype(np.float64)
    if data.ndim == 3 and data.shape[-1] == 3:
        return np.moveaxis(data, -1, 0).astype(np.float64)
    raise BadImage(f"FITS image of shape {data.shape}: expected (H, W) for one band, or (3, H, W) / (H, W, 3) for "
                   f"three bands ordered red, green, blue")


def asinh_rgb(bands: np.ndarray) -> np.ndarray:
    """(3, H, W) fluxes ordered red, green, blue -> (H, W, 3) uint8, stretched as the module docstring says."""
    x = np.array(bands, dtype=np.float64)
    finite = np.isfinite(x)
    n_bad = x.size - int(finite.sum())
    if not finite.any():
        raise BadImage(f"no data: all {x.size} pixel values are NaN or infinite")
    if n_bad:
        log.debug("%d NaN/inf pixel values (masked or off the footprint) shown as sky", n_bad)
    for band, ok in zip(x, finite):
        band -= np.median(band[ok]) if ok.any() else 0.0
    x[~finite] = 0.0
    intensity = x.mean(axis=0)
    noise = 1.4826 * float(np.median(np.abs(intensity - np.median(intensity))))
    bright = float(np.percentile(intensity, BRIGHT_PERCENTILE))
    if bright <= 0:  # nothing above the sky (a blank field)
        return np.full((*intensity.shape, 3), round(SKY_GREY), np.uint8)
    t = _stretch(bright, noise)
    # k asinh(I / b) puts the bright percentile at BRIGHT_GREY; each band gets the factor k asinh(I / b) / I, an even
    # function of I that is k / b at I = 0 (so the sky's noise stays symmetric around SKY_GREY, as in the JPEGs).
    b = bright / t
    k = (BRIGHT_GREY - SKY_GREY) / np.arcsinh(t)
    u = intensity / b
    small = np.abs(u) < 1e-6
    gain = np.where(small, k / b, k * np.arcsinh(u) / np.where(small, 1.0, intensity))
    rgb = SKY_GREY + gain * x
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def _stretch(bright: float, noise: float) -> float:
    """``t`` = bright / softening such that the sky noise comes out as NOISE_GREY grey levels.

    With k = (BRIGHT_GREY - SKY_GREY) / asinh(t), faint pixels get the gain k / b = k t / bright, so the noise shows
    as noise * k t / bright; setting that to NOISE_GREY asks t / asinh(t) = r below. t / asinh(t) grows from 1 at
    t = 0, so an image too noisy for r > 1 gets the linear limit (t -> 0), and a noise-free one MAX_STRETCH.
    """
    if noise <= 0:
        return MAX_STRETCH
    r = NOISE_GREY * bright / ((BRIGHT_GREY - SKY_GREY) * noise)
    if r <= 1.0 + 1e-9:
        return 1e-6
    lo, hi = 1e-6, MAX_STRETCH
    if hi / np.arcsinh(hi) <= r:
        return hi
    for _ in range(100):  # bisection in log t: t / asinh(t) is increasing
        mid = math.sqrt(lo * hi)
        if mid / np.arcsinh(mid) < r:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise GzmorphError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if image_suffix(p) in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise GzmorphError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def default_cache_dir() -> Path:
    return Path(os.environ.get("GZMORPH_CACHE") or Path.home() / ".cache" / "gzmorph")


def _cache_key(paths: Sequence[Path], prep: Preprocess) -> str:
    h = hashlib.sha256(f"v{DECODE_VERSION} crop={prep.crop} size={prep.size}\n".encode())
    for p in paths:
        # Path + size + mtime: a replaced or edited file gets a new key without hashing image bytes.
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{os.path.abspath(p)}\tmissing\n".encode())
    return h.hexdigest()[:24]


# Worker state for the process pool: each worker opens the output memmap once.
_worker: dict = {}


def _init_worker(array_path: str, shape: tuple, prep: Preprocess) -> None:
    _worker["out"] = np.lib.format.open_memmap(array_path, mode="r+")
    _worker["prep"] = prep


def _decode_chunk(chunk: list[tuple[int, str]]) -> list[tuple[int, str]]:
    out, prep, bad = _worker["out"], _worker["prep"], []
    for i, path in chunk:
        try:
            out[i] = decode(path, prep)
        except BadImage as e:
            bad.append((i, str(e)))
    out.flush()
    return bad


@dataclass
class DecodedImages:
    """Decoded images in file order; ``ok[i]`` is False for files that could not be decoded (``errors[i]`` why)."""

    pixels: np.ndarray  # (N, size, size, 3) uint8, usually a read-only memmap
    ok: np.ndarray  # (N,) bool
    errors: dict[int, str]
    cache_path: Path | None = None


def decode_all(paths: Sequence[Path], prep: Preprocess, *, cache_dir: str | Path | None = None,
               workers: int | None = None, progress: bool = True) -> DecodedImages:
    """Decode ``paths`` into one uint8 array, in parallel, through the on-disk cache."""
    paths = [Path(p) for p in paths]
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = _cache_key(paths, prep)
    array_path = cache_dir / f"{key}-{prep.crop}-{prep.size}.npy"
    meta_path = array_path.with_suffix(".json")
    if array_path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            pixels = np.load(array_path, mmap_mode="r")
            if pixels.shape == (len(paths), prep.size, prep.size, 3) and meta.get("n") == len(paths):
                errors = {int(k): v for k, v in meta["errors"].items()}
                ok = np.ones(len(paths), bool)
                ok[list(errors)] = False
                log.info("image cache hit: %s (%d images)", array_path, len(paths))
                return DecodedImages(pixels, ok, errors, array_path)
        except (OSError, ValueError, KeyError) as e:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring unreadable image cache %s (%s); rebuilding it", array_path, e)

    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GzmorphError(f"cannot create the image cache folder {cache_dir} ({e}); set GZMORPH_CACHE to a "
                           f"writable folder") from None
    tmp = array_path.with_name(f"{array_path.name}.tmp-{os.getpid()}")
    shape = (len(paths), prep.size, prep.size, 3)
    try:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
    except OSError as e:
        raise GzmorphError(f"cannot write the image cache {tmp} ({e}); free some space or set GZMORPH_CACHE") from None
    workers = workers or min(len(os.sched_getaffinity(0)), 16)
    items = [(i, str(p)) for i, p in enumerate(paths)]
    chunk = max(16, min(256, len(items) // (workers * 8) + 1))
    chunks = [items[k:k + chunk] for k in range(0, len(items), chunk)]
    errors: dict[int, str] = {}
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), desc=f"decoding {len(items)} images", unit="img", disable=not progress or None,
               leave=False)
    try:
        if workers <= 1 or len(chunks) == 1:
            _init_worker(str(tmp), shape, prep)
            results = map(_decode_chunk, chunks)
            for c, bad in zip(chunks, results):
                errors.update(bad)
                bar.update(len(c))
        else:
            # fork is fastest on Linux; spawn elsewhere. Workers write straight into the shared memmap.
            method = "fork" if "fork" in __import__("multiprocessing").get_all_start_methods() else "spawn"
            with get_context(method).Pool(workers, _init_worker, (str(tmp), shape, prep)) as pool:
                for c, bad in zip(chunks, pool.imap(_decode_chunk, chunks)):
                    errors.update(bad)
                    bar.update(len(c))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
        _worker.clear()
    replace_atomically(tmp, array_path)
    atomic_write_json(meta_path, {"n": len(paths), "crop": prep.crop, "size": prep.size,
                                  "decode_version": DECODE_VERSION,
                                  "errors": {str(k): v for k, v in sorted(errors.items())}})
    ok = np.ones(len(paths), bool)
    ok[list(errors)] = False
    return DecodedImages(np.load(array_path, mmap_mode="r"), ok, errors, array_path)
