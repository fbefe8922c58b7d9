"""Batches from a uint8 image array without per-sample Python: index arrays in, device tensors out."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def to_input(pixels: np.ndarray, device: torch.device | str = "cpu",
             channels_last: bool = False) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1] on ``device`` (uint8 travels; the cast happens there)."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def batch_indices(n: int, batch_size: int, rng: np.random.Generator | None = None,
                  drop_last: bool = False) -> Iterator[np.ndarray]:
    """Row indices per batch: shuffled with ``rng`` (training) or in order (evaluation).

    Each batch's indices are sorted so that reads from a memory-mapped array go forward through the file.
    """
    order = rng.permutation(n) if rng is not None else np.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield np.sort(idx) if rng is not None else idx
