"""The on-disk cache of decoded images: the result of preparing a set of files is one uint8 ``.npy`` array keyed by
the files and the preparation, so a second run memory-maps it and starts in seconds.

The key covers each file's path, size and modification time (a replaced or edited file gets a new key without
hashing image bytes), the crop and size, and :data:`DECODE_VERSION`. The array is written to a temporary file and
renamed into place with its ``.json`` (which records the files that could not be decoded), so a killed run never
leaves a cache that looks complete; a damaged one is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import BadData
from ..fsio import atomic_write_json, replace_atomically
from .decoder import decode_chunks
from .images import Preprocess

log = logging.getLogger("gzmorph")

# Bump when decoding changes, so old caches are not reused.
DECODE_VERSION = 2  # 2: a picture whose 64 px crop is one value is refused as blank (it was the whole picture)


def default_cache_dir() -> Path:
    return Path(os.environ.get("GZMORPH_CACHE") or Path.home() / ".cache" / "gzmorph")


def _cache_key(paths: Sequence[Path], prep: Preprocess) -> str:
    h = hashlib.sha256(f"v{DECODE_VERSION} crop={prep.crop} size={prep.size}\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{os.path.abspath(p)}\tmissing\n".encode())
    return h.hexdigest()[:24]


@dataclass
class DecodedImages:
    """Decoded images in file order; ``ok[i]`` is False for files that could not be decoded (``errors[i]`` why)."""

    pixels: np.ndarray  # (N, size, size, 3) uint8, usually a read-only memmap
    ok: np.ndarray  # (N,) bool
    errors: dict[int, str]
    cache_path: Path | None = None


def _load(array_path: Path, meta_path: Path, n: int, prep: Preprocess) -> DecodedImages | None:
    if not (array_path.exists() and meta_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        pixels = np.load(array_path, mmap_mode="r")
        if pixels.shape == (n, prep.size, prep.size, 3) and meta.get("n") == n:
            errors = {int(k): v for k, v in meta["errors"].items()}
            ok = np.ones(n, bool)
            ok[list(errors)] = False
            log.info("image cache hit: %s (%d images)", array_path, n)
            return DecodedImages(pixels, ok, errors, array_path)
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring unreadable image cache %s (%s); rebuilding it", array_path, e)
    return None


def decode_all(paths: Sequence[Path], prep: Preprocess, *, cache_dir: str | Path | None = None,
               workers: int | None = None, progress: bool = True) -> DecodedImages:
    """Decode ``paths`` into one uint8 array, in parallel, through the on-disk cache."""
    paths = [Path(p) for p in paths]
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    array_path = cache_dir / f"{_cache_key(paths, prep)}-{prep.crop}-{prep.size}.npy"
    meta_path = array_path.with_suffix(".json")
    hit = _load(array_path, meta_path, len(paths), prep)
    if hit is not None:
        return hit

    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadData(f"cannot create the image cache folder {cache_dir} ({e}); set GZMORPH_CACHE to a writable "
                      f"folder") from None
    tmp = array_path.with_name(f"{array_path.name}.tmp-{os.getpid()}")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), prep.size, prep.size, 3))
    except OSError as e:
        raise BadData(f"cannot write the image cache {tmp} ({e}); free some space or set GZMORPH_CACHE") from None
    workers = workers or min(len(os.sched_getaffinity(0)), 16)
    chunk = max(16, min(256, len(paths) // (workers * 8) + 1))
    errors: dict[int, str] = {}
    from tqdm.auto import tqdm

    bar = tqdm(total=len(paths), desc=f"decoding {len(paths)} images", unit="img", disable=not progress or None,
               leave=False)
    try:
        for c in decode_chunks(paths, prep, chunk=chunk, workers=workers if len(paths) > chunk else 1):
            out[c.good] = c.pixels
            errors.update(c.bad)
            bar.update(c.size)
        out.flush()
        del out
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    replace_atomically(tmp, array_path)
    atomic_write_json(meta_path, {"n": len(paths), "crop": prep.crop, "size": prep.size,
                                  "decode_version": DECODE_VERSION,
                                  "errors": {str(k): v for k, v in sorted(errors.items())}})
    ok = np.ones(len(paths), bool)
    ok[list(errors)] = False
    return DecodedImages(np.load(array_path, mmap_mode="r"), ok, errors, array_path)
