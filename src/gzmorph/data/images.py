"""One image file -> the (size, size, 3) uint8 array a model reads: decode, centre crop, resize.

Decoding dominates data preparation, so JPEGs are decoded at reduced size by libjpeg itself (Pillow's ``draft``
picks a 1/2, 1/4 or 1/8 DCT scale), which is several times faster than decoding 424 px and resizing. FITS cutouts
are stretched into the same kind of picture first (``fits.py``); every format then goes through the same crop and
resize. Decoding many files in parallel and caching them is ``decoder.py`` and ``cache.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import BadArgument, BadData, BadImage
from .fits import FITS_SUFFIXES, read_fits_rgb

REFERENCE_SIDE = 424  # Kaggle images are 424x424; crops are given in these pixels
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", *FITS_SUFFIXES)
_LONGEST_FIRST = sorted(IMAGE_SUFFIXES, key=len, reverse=True)  # a two-part suffix before any one-part one it ends in

Image.MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs early with a clear error, not an OOM


@dataclass(frozen=True)
class Preprocess:
    """Centre ``crop`` x ``crop`` pixels (in 424 px units) of each image, resized to ``size`` x ``size``."""

    crop: int
    size: int

    def __post_init__(self):
        if not (1 <= self.size <= self.crop <= REFERENCE_SIDE):
            raise BadArgument(f"bad preprocessing: need 1 <= size ({self.size}) <= crop ({self.crop}) <= 424")


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


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise BadData(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if image_suffix(p) in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise BadData(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


