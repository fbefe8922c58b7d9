"""Running a trained model over a uint8 image array, with optional test-time augmentation (TTA).

TTA averages the model's outputs over the 8 symmetries of the square (4 quarter turns x mirror): a galaxy's
morphology does not depend on them, so each view is an equally valid look and the average has less noise. Quarter
turns and flips move whole pixels, so no view is blurred by interpolation. The average of tree-consistent outputs
is tree-consistent (the tree's sums are linear).
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import GzmorphError
from .loader import batch_indices, to_input

TTA_VIEWS = (1, 2, 4, 8)


def pick_device(name: str) -> torch.device:
    """``auto`` = the CUDA GPU if there is one, else the CPU; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GzmorphError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise GzmorphError(f"--device {name!r}: not a device name; use auto, cpu, cuda or cuda:N") from None


def dihedral_views(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The first ``n`` of the 8 symmetries of the square applied to a (B, C, H, W) batch: identity, mirror, then the
    quarter turns of both (so n=2 is flips only, n=4 adds the half turn, n=8 is the whole group)."""
    if n not in TTA_VIEWS:
        raise GzmorphError(f"--tta must be one of {', '.join(map(str, TTA_VIEWS))} (views averaged), got {n}")
    order = [(0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True)]
    return [torch.rot90(x.flip(-1) if mirror else x, k, dims=(-2, -1)) for k, mirror in order[:n]]


@torch.no_grad()
def predict_array(model: torch.nn.Module, pixels: np.ndarray, batch_size: int = 256,
                  device: torch.device | str = "cpu", tta: int = 1) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, 37) float32 predictions, in order, averaged over ``tta`` symmetric views."""
    model.eval()
    out = []
    for idx in batch_indices(len(pixels), batch_size):
        x = to_input(pixels[idx], device)
        views = dihedral_views(x, tta)
        out.append(torch.stack([model(v).float() for v in views]).mean(0).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 37), np.float32)
