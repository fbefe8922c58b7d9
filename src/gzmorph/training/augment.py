"""Batched, on-device augmentation: one random affine warp per image (rotation, flip, zoom, shift) + colour.

Galaxy morphology does not depend on orientation, mirror image or (within limits) distance, so these transforms
leave the labels unchanged. Everything is one ``grid_sample`` call on the whole batch, so it runs the same on CPU and
GPU with no per-image Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import AUGMENTATIONS, Augment
from ..errors import BadArgument


def get_augment(name: str) -> Augment:
    try:
        return AUGMENTATIONS[name]
    except KeyError:
        raise BadArgument(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}") from None


def random_affine(n: int, aug: Augment, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, 2, 3) matrices mapping output to input coordinates in [-1, 1] (``affine_grid``'s convention)."""
    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    if aug.rotation == "any":
        angle = uniform(0, 2 * math.pi)
        cos, sin = torch.cos(angle), torch.sin(angle)
    elif aug.rotation == "90":  # exact 0/+-1 entries, so quarter turns move whole pixels
        k = torch.randint(0, 4, (n,), generator=generator)
        cos, sin = torch.tensor([1.0, 0.0, -1.0, 0.0])[k], torch.tensor([0.0, 1.0, 0.0, -1.0])[k]
    elif aug.rotation == "none":
        cos, sin = torch.ones(n), torch.zeros(n)
    else:
        raise BadArgument(f"unknown rotation {aug.rotation!r}; use none, 90 or any")
    scale = torch.exp(uniform(-math.log(aug.zoom), math.log(aug.zoom))) if aug.zoom > 1 else torch.ones(n)
    mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if aug.flip else torch.ones(n)
    # Sampling at coordinates divided by the scale enlarges the image by that scale.
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * mirror / scale
    theta[:, 0, 1] = -sin / scale
    theta[:, 1, 0] = sin * mirror / scale
    theta[:, 1, 1] = cos / scale
    if aug.shift > 0:
        theta[:, :, 2] = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 * aug.shift)
    return theta.to(device)


@dataclass
class AugmentDraw:
    """The random numbers of one batch's augmentation: its affine matrices and colour gains (None: no colour
    change; both None: no augmentation). Drawn apart from the images so that a whole epoch's draws can be made in
    one go on the CPU and copied to a GPU at once (a small copy per step would stall it: a copy from pageable
    memory waits for the GPU's queue), in the very order a step-by-step draw makes them."""

    theta: torch.Tensor | None  # (n, 2, 3)
    gain: torch.Tensor | None  # (n, C, 1, 1)

    def to(self, device: torch.device | str) -> "AugmentDraw":
        return AugmentDraw(*(None if t is None else t.to(device) for t in (self.theta, self.gain)))

    @staticmethod
    def cat(draws: list["AugmentDraw"]) -> "AugmentDraw":
        def join(ts):
            return None if not ts or ts[0] is None else torch.cat(ts)
        return AugmentDraw(join([d.theta for d in draws]), join([d.gain for d in draws]))

    def rows(self, start: int, stop: int) -> "AugmentDraw":
        return AugmentDraw(*(None if t is None else t[start:stop] for t in (self.theta, self.gain)))


def draw_augment(n: int, aug: Augment, generator: torch.Generator | None = None, channels: int = 3) -> AugmentDraw:
    """The random numbers of ``n`` images' augmentation, on the CPU, from ``generator``."""
    if aug.is_identity:
        return AugmentDraw(None, None)
    theta = random_affine(n, aug, generator)
    gain = torch.exp((torch.rand(n, channels, 1, 1, generator=generator) * 2 - 1) * aug.brightness) \
        if aug.brightness > 0 else None
    return AugmentDraw(theta, gain)


def apply_augment(x: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
    """A float batch (B, C, H, W) warped and recoloured as ``draw`` says. Pixels warped in from outside the image are
    filled by reflection."""
    if draw.theta is None:
        return x
    out = warp(x, draw.theta.to(x.device, x.dtype))
    if draw.gain is not None:
        out = out * draw.gain.to(x.device, x.dtype)
    return out


def augment_batch(x: torch.Tensor, aug: Augment, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a float batch (B, C, H, W) with random numbers from ``generator``."""
    return apply_augment(x, draw_augment(x.shape[0], aug, generator, x.shape[1]))


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample a (B, C, H, W) batch through (B, 2, 3) affine matrices; pixels from outside come by reflection
    (a galaxy image's edges are sky, so a mirrored border is more sky, not a black frame the model never saw)."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """The whole batch turned by ``degrees`` about the image centre, with the interpolation training used."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=x.dtype)
    return warp(x, theta.to(x.device).expand(x.shape[0], 2, 3))
