"""Image decoding (DCT-domain downscale), centre crop + resize, and the on-disk cache of decoded uint8 arrays.

Decoding dominates data preparation, so JPEGs are decoded at reduced size by libjpeg itself (Pillow's ``draft``
picks a 1/2, 1/4 or 1/8 DCT scale), which is several times faster than decoding 424 px and resizing. The result of
preparing a set of files is cached as one ``.npy`` array keyed by the files and the preparation parameters, so the
second run memory-maps it and starts in seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
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
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
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


def decode(path: str | Path, prep: Preprocess) -> np.ndarray:
    """Decode one image file to a (size, size, 3) uint8 array. Raises :class:`BadImage`."""
    try:
        with Image.open(path) as im:
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
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can read (corrupt, empty or unknown format)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"image too large ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated JPEG data, bad headers, ...
        raise BadImage(f"cannot decode ({e})") from None


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise GzmorphError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
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
