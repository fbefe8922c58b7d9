"""FITS cutouts -> 8-bit RGB pictures like the SDSS colour JPEGs the Kaggle images are (then cropped and resized
exactly like a JPEG by ``images.decode``).

FITS files (``.fits``, ``.fit``, ``.fts``, optionally gzipped: ``.fits.gz`` ...) are read with astropy (the
``gzmorph[fits]`` extra, imported only when a FITS file comes):

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

import logging
import math
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BadImage

log = logging.getLogger("gzmorph")

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")

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


