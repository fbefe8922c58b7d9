"""One image file -> the (size, size, 3) uint8 array a model reads: decode, centre crop, resize.

Decoding dominates data preparation, so JPEGs are decoded at reduced size by libjpeg itself (Pillow's ``draft``
picks a 1/2, 1/4 or 1/8 DCT scale), which is several times faster than decoding 424 px and resizing. FITS cutouts
are stretched into the same kind of picture first (``fits.py``); every format then goes through the same crop and
resize. Decoding many files in parallel and caching them is ``decoder.py`` and ``cache.py``.

Every Pillow mode has one decision in :data:`MODE_RULES`: 8-bit pictures are converted as they are, 16-bit ones
scaled by their type's range (as any image viewer shows them), float and 32-bit fluxes stretched like a FITS
band, and modes that are no picture of the sky (CMYK, LAB, HSV, multi-band TIFFs) refused with a
:class:`BadImage` that says what to save instead: never a picture decoded into a plausible wrong one.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, TiffImagePlugin, UnidentifiedImageError

from ..errors import BadArgument, BadData, BadImage
from .fits import FITS_SUFFIXES, asinh_rgb, read_fits_rgb

log = logging.getLogger("gzmorph")

REFERENCE_SIDE = 424  # Kaggle images are 424x424; crops are given in these pixels
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", *FITS_SUFFIXES)
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
    name = _name(path).lower()
    for suffix in _LONGEST_FIRST:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return Path(name).suffix


def image_stem(path: str | Path) -> str:
    """The file name without its image suffix: the GalaxyID of ``123.jpg``, ``123.fits`` and ``123.fits.gz`` alike.
    Names without an image suffix keep ``Path.stem``'s meaning."""
    name = _name(path)
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix in IMAGE_SUFFIXES else Path(name).stem


def _name(path: str | Path) -> str:
    """``Path(path).name`` without building a Path (a job lists millions of files, and this runs three times for
    each: Python 3.11's Path construction was most of the time `predict` spent reading a list of files)."""
    text = os.fspath(path)
    base = os.path.basename(text)
    return base if base not in ("", ".") else Path(text).name  # ("a/" and "a/.": Path's rules)


# What each Pillow mode (``PIL.Image.MODES``, all 20 of Pillow 13) becomes: (rule, why). Pillow reads 16-bit RGB(A)
# TIFFs and 48/64-bit PNGs as 8-bit "RGB"/"RGBA" itself, keeping each sample's high byte (x257 data exactly), so the
# 16-bit cases below are the single-band ones, which Pillow's own convert("RGB") would clip at 255 (a galaxy turns
# white and the model answers "star or artifact").
CONVERT = "convert"  # Pillow's convert("RGB") is the right picture
DROP_ALPHA = "drop alpha"  # the colour bands as they are; the alpha band goes
SCALE_16_BIT = "scale 16-bit"  # value x 255 / 65535, rounded: the type's full range, as image viewers show it
INTEGER = "integer"  # 16-bit data (0..65535) scaled as above, anything else stretched as a flux
FLUX = "flux"  # linear fluxes: the asinh stretch of a single-band FITS image (fits.asinh_rgb)
REFUSE = "refuse"

MODE_RULES: dict[str, tuple[str, str]] = {
    "RGB": (CONVERT, "8-bit colour"),
    "RGBX": (CONVERT, "8-bit colour and a padding band"),
    "L": (CONVERT, "8-bit grey, repeated into red, green and blue"),
    "1": (CONVERT, "1-bit black and white, as 0 and 255"),
    "P": (CONVERT, "palette colours"),
    "YCbCr": (CONVERT, "8-bit colour in JPEG's encoding; Pillow's conversion to RGB is the standard one"),
    # Alpha is a cutout tool's mask (transparent off the survey's footprint), not light: the colour under it is what
    # the sky looked like, and blending it onto black or white would invent a background the model never saw.
    "RGBA": (DROP_ALPHA, "8-bit colour and alpha"),
    "RGBa": (DROP_ALPHA, "8-bit colour premultiplied by alpha (Pillow divides it back out)"),
    "LA": (DROP_ALPHA, "8-bit grey and alpha"),
    "La": (DROP_ALPHA, "8-bit grey premultiplied by alpha (Pillow divides it back out)"),
    "PA": (DROP_ALPHA, "palette colours and alpha"),
    "I;16": (SCALE_16_BIT, "16-bit grey"),
    "I;16L": (SCALE_16_BIT, "16-bit grey, little-endian"),
    "I;16B": (SCALE_16_BIT, "16-bit grey, big-endian"),
    "I;16N": (SCALE_16_BIT, "16-bit grey, this machine's byte order"),
    # "I" is 32-bit signed: 16-bit PNGs opened by older Pillows, signed 16-bit and 32-bit integer TIFFs. A TIFF's are
    # counts (fluxes); otherwise values within 0..65535 are 16-bit display data, and negative or larger ones counts.
    "I": (INTEGER, "32-bit integer grey"),
    "F": (FLUX, "32-bit float grey (a flux map, like a FITS band)"),
    "CMYK": (REFUSE, "print colours (cyan, magenta, yellow, black), which map to screen RGB only through the file's "
                     "colour profile; save it as RGB"),
    "LAB": (REFUSE, "CIE L*a*b* colour; save it as RGB"),
    "HSV": (REFUSE, "hue, saturation, value; save it as RGB"),
}

# TIFF tags read to tell layouts apart (TIFF 6.0 numbers) and the names of their values, for messages.
_BITS, _PHOTOMETRIC, _SAMPLES, _PLANAR, _EXTRA, _SAMPLE_FORMAT = 258, 262, 277, 284, 338, 339
_PHOTOMETRIC_NAMES = {0: "min-is-white", 1: "min-is-black", 2: "RGB", 3: "palette", 4: "mask", 5: "CMYK", 6: "YCbCr",
                      8: "CIE L*a*b*"}
_SAMPLE_FORMAT_NAMES = {1: "unsigned integer", 2: "signed integer", 3: "float", 4: "undefined", 5: "complex integer",
                        6: "complex float"}
_ALPHA = (1, 2)  # ExtraSamples values for associated and unassociated alpha; 0 is "unspecified data"
_SAVE_INSTEAD = ("save it as an 8- or 16-bit greyscale or RGB TIFF or PNG, or put fluxes in a FITS file (one band, "
                 "or three ordered red to blue)")


def as_rgb(im: Image.Image) -> Image.Image:
    """The 8-bit RGB picture of an opened image, by :data:`MODE_RULES`. Raises :class:`BadImage` for a refused mode.

    Only reads pixels for the modes that need their values, so a JPEG's ``draft`` still applies."""
    rule, why = MODE_RULES.get(im.mode, (REFUSE, "a mode gzmorph does not know; save it as RGB"))
    if rule == REFUSE:
        raise BadImage(f"Pillow mode {im.mode!r}: {why}")
    if rule == CONVERT:
        return im.convert("RGB")
    if rule == DROP_ALPHA:
        # Pillow converts "La" only to "LA" (it has no direct La -> RGB conversion).
        return (im.convert("LA") if im.mode == "La" else im).convert("RGB")
    values = np.asarray(im)
    # A TIFF reaches "I" only as 32-bit or signed 16-bit samples (unsigned 16-bit opens as "I;16"): counts, so a flux
    # even when they happen to fit in 0..65535 (a 12-bit camera's 0..3000 read as 16-bit display values would be
    # near black). Elsewhere (an older Pillow's 16-bit PNG) the range decides.
    if rule == INTEGER and (im.format == "TIFF" or (values.size and (values.min() < 0 or values.max() > 65535))):
        rule = FLUX
    if rule == FLUX:
        return Image.fromarray(asinh_rgb(np.repeat(values[None].astype(np.float64), 3, axis=0)), "RGB")
    return Image.fromarray(np.repeat(scale_16_bit(values)[..., None], 3, axis=2), "RGB")


def scale_16_bit(values: np.ndarray) -> np.ndarray:
    """16-bit display values (0..65535) as 8-bit ones by the type's full range, as image viewers show them:
    round(v x 255 / 65535) in integers (v x 255 < 2^24, exact in uint32), so v = 257 k gives back k."""
    return ((values.astype(np.uint32) * 255 + 65535 // 2) // 65535).astype(np.uint8)


def _check_tiff_layout(im: Image.Image) -> None:
    """Refuse the TIFF layouts Pillow opens but decodes into a wrong picture. Raises :class:`BadImage`."""
    tags = im.tag_v2
    samples = _tag_values(tags, _SAMPLES, 1)[0]
    bits = max(_tag_values(tags, _BITS, 1))
    if samples > 1 and _tag_values(tags, _PLANAR, 1)[0] == 2 and bits > 8:
        # Pillow 13 reads each 16-bit plane as 8-bit samples: a picture of garbage with nothing to say so.
        raise BadImage(f"TIFF of {samples} {bits}-bit bands stored as separate planes, which Pillow decodes wrongly; "
                       f"save it with the bands interleaved (most tools' default), or {_SAVE_INSTEAD}")
    photometric = _tag_values(tags, _PHOTOMETRIC, 1)[0]
    if photometric == 0 and bits > 8:
        # Pillow 13 inverts 1- and 8-bit min-is-white TIFFs (0 is white) but reads deeper ones as if 0 were black:
        # the galaxy's negative.
        raise BadImage(f"{bits}-bit min-is-white TIFF (0 is white), which Pillow reads as its negative; save it "
                       f"min-is-black (the usual greyscale), or {_SAVE_INSTEAD}")
    grey = photometric in (0, 1)
    if grey and samples > 1 and not all(e in _ALPHA for e in _tag_values(tags, _EXTRA)):
        # Pillow shows the first band as grey and drops the others: two survey bands would become one.
        raise BadImage(f"TIFF of {samples} bands that are not grey and alpha ({_tiff_layout(tags)}): which band, or "
                       f"which mix of them, is the picture would be a guess; {_SAVE_INSTEAD}")
    n_pages = getattr(im, "n_frames", 1)
    if n_pages > 1:
        first = im.size
        full_size = 1
        for page in range(1, n_pages):
            im.seek(page)
            full_size += im.size == first
        im.seek(0)
        if full_size > 1:
            # Smaller pages are previews or a resolution pyramid of the first; full-size ones are more bands or more
            # pictures, and Pillow would silently read only the first.
            raise BadImage(f"TIFF of {n_pages} pages, {full_size} of them full size (bands, or a stack of pictures): "
                           f"which one is the galaxy would be a guess; {_SAVE_INSTEAD}")


def _tag_values(tags, tag: int, default: int | None = None) -> tuple:
    """A TIFF tag's values as a tuple (Pillow gives one value bare, several as a tuple)."""
    value = tags.get(tag, default)
    return () if value is None else tuple(value) if isinstance(value, tuple) else (value,)


def _tiff_layout(tags) -> str:
    """A TIFF's sample layout in words, e.g. "4 samples of 8-bit unsigned integer, min-is-black, interleaved"."""
    samples = _tag_values(tags, _SAMPLES, 1)[0]
    bits = "/".join(str(b) for b in sorted(set(_tag_values(tags, _BITS, 1))))
    kind = _SAMPLE_FORMAT_NAMES.get(_tag_values(tags, _SAMPLE_FORMAT, 1)[0], "unknown format")
    photometric = (_tag_values(tags, _PHOTOMETRIC) or (None,))[0]
    colour = _PHOTOMETRIC_NAMES.get(photometric, f"photometric {photometric}")
    planes = "separate planes" if _tag_values(tags, _PLANAR, 1)[0] == 2 else "interleaved"
    return f"{samples} sample{'s' if samples > 1 else ''} of {bits}-bit {kind}, {colour}, {planes}"


def _unreadable_tiff(path: str | Path) -> str | None:
    """Why a file that starts like a TIFF is not one Pillow can read (its first page's layout), or None when it does
    not start like a TIFF or its header is broken too."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            if head[:4] not in TiffImagePlugin.PREFIXES:
                return None
            tags = TiffImagePlugin.ImageFileDirectory_v2(head if head[2] == 43 else head[:8])  # 43: BigTIFF's header
            f.seek(tags.next)
            tags.load(f)
    except (OSError, ValueError, SyntaxError, IndexError, KeyError, OverflowError, struct.error):  # a broken header
        return None
    return f"TIFF layout Pillow cannot read ({_tiff_layout(tags)}); {_SAVE_INSTEAD}"


def decode(path: str | Path, prep: Preprocess) -> np.ndarray:
    """Decode one image file to a (size, size, 3) uint8 array. Raises :class:`BadImage`."""
    if image_suffix(path) in FITS_SUFFIXES:
        return crop_resize(Image.fromarray(read_fits_rgb(path), "RGB"), prep)
    try:
        with Image.open(path) as im:
            if im.format == "FITS":  # a FITS file under another name: Pillow would clip its raw values to 0..255
                return crop_resize(Image.fromarray(read_fits_rgb(path), "RGB"), prep)
            if im.format == "TIFF":
                _check_tiff_layout(im)
            return crop_resize(im, prep)
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except UnidentifiedImageError:
        # Pillow says the same for a multi-band or float RGB TIFF as for a corrupt file: tell them apart.
        why = _unreadable_tiff(path) or "not an image Pillow can read (corrupt, empty or unknown format)"
        raise BadImage(why) from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"image too large ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated JPEG data, bad headers, ...
        raise BadImage(f"cannot decode ({e})") from None


def crop_resize(im: Image.Image, prep: Preprocess) -> np.ndarray:
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
    im = as_rgb(im)
    # draft() may have shrunk the image: redo the crop box in the decoded pixels.
    f = im.size[0] / w
    cx, cy, half = im.size[0] / 2, im.size[1] / 2, crop * f / 2
    box = (cx - half, cy - half, cx + half, cy + half)
    out = np.asarray(im.resize((prep.size, prep.size), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)
    # A picture of one value (a blank cutout off a survey's footprint, an all-zero FITS) holds no galaxy, yet the model
    # would answer it as confidently as any other: refused, not a plausible number. Checked on what the model sees
    # (the crop at its size: 12k values, where the decoded picture's extrema cost a quarter of a JPEG's decode).
    flat = out.reshape(-1, 3)
    if (flat == flat[0]).all():
        raise BadImage(f"blank: every pixel the model sees is {int(flat[0, 0])} (a cutout off the survey's "
                       f"footprint?); there is no galaxy to classify")
    return out


@dataclass
class Listing:
    """What a folder holds for prediction: its images, and what is left out (files that are not images; with
    ``recursive`` off, images in the first level of subfolders)."""

    images: list[Path]
    others: list[Path]
    unsearched: list[list[Path]]  # per subfolder not searched, its images

    def left_out(self) -> list[tuple[str, str]]:
        """Every file left out, with why: what predict lists in its .json."""
        return ([(str(p), "not an image (images are " + " ".join(IMAGE_SUFFIXES) + ")") for p in self.others]
                + [(str(p), "in a subfolder; pass --recursive to include it") for files in self.unsearched
                   for p in files])


def find_images(folder: str | Path, recursive: bool = False) -> Listing:
    """The image files (by :data:`IMAGE_SUFFIXES`, any case) in ``folder``, sorted; with ``recursive`` those of its
    subfolders too, each folder's images before its subfolders', subfolders in name order. What is left out is said
    once, counted (a warning naming ``--recursive`` for images in subfolders), and kept in the listing. Hidden files
    and folders (``.DS_Store``, ``.thumbnails``) are neither searched nor counted: they are the file manager's, and a
    thumbnail folder would list each galaxy twice. Raises :class:`BadData`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadData(f"{folder}: not a folder of images")
    # Without --recursive only the first level of subfolders is looked into, to count what is left out: a folder of
    # images under a large data root must not cost a walk of the whole tree.
    found = list(_walk(folder, None if recursive else 1))
    searched = found if recursive else found[:1]
    images = [p for _, files, _ in searched for p in files]
    others = [p for _, _, rest in searched for p in rest]
    unsearched = [files for _, files, _ in found[1:] if files] if not recursive else []
    n_unsearched = sum(len(files) for files in unsearched)
    left_out = []
    if others:
        names = ", ".join(str(p.relative_to(folder)) for p in others[:5]) + (", ..." if len(others) > 5 else "")
        left_out.append(f"{_count(len(others), 'file that is not an image was', 'files that are not images were')} "
                        f"left out (images are {' '.join(IMAGE_SUFFIXES)}): {names}")
    if unsearched:
        left_out.append(f"{_count(n_unsearched, 'image', 'images')} in "
                        f"{_count(len(unsearched), 'subfolder', 'subfolders')} not searched (and maybe more below "
                        f"them); pass --recursive to include them")
    if not images:  # one error that says it all, rather than warnings before it
        raise BadData(f"{folder}: no images in this folder" + (f" ({'; '.join(left_out)})" if left_out else
                                                              f" (images are {' '.join(IMAGE_SUFFIXES)})"))
    for message in left_out:
        log.warning("%s: %s", folder, message)
    return Listing(images, others, unsearched)


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The images of :func:`find_images`."""
    return find_images(folder, recursive).images


def _walk(folder: Path, max_depth: int | None = None):
    """(folder, its image files, its other files) for ``folder`` and every subfolder below it (down to ``max_depth``
    levels), depth first in name order. A symlinked folder is followed once: a link back up the tree (a loop) or to a
    folder already walked is skipped, so no image is listed twice."""
    seen: set[tuple[int, int]] = set()
    pending = [(folder, 0)]
    while pending:
        here, depth = pending.pop()
        try:
            st = here.stat()
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError as e:
            if here == folder:
                raise BadData(f"{folder}: cannot list this folder ({e.strerror or e})") from None
            log.warning("%s: cannot list this folder (%s); its images are left out", here, e.strerror or e)
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        images, others, subfolders = [], [], []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if _is_dir(entry):
                subfolders.append(path)
            elif image_suffix(path) in IMAGE_SUFFIXES and path.is_file():  # not a dangling link named 1.jpg
                images.append(path)
            else:
                others.append(path)
        yield here, images, others
        if max_depth is None or depth < max_depth:
            pending.extend((sub, depth + 1) for sub in reversed(subfolders))  # popped in name order


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows a symlink; a dangling one is not a folder
    except OSError:
        return False


