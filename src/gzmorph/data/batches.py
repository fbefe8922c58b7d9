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


class DeviceFeed:
    """uint8 batches to a device as :func:`to_input` makes them, through two page-locked (pinned) host buffers on a
    GPU: a copy from pinned memory runs beside the GPU's work, where one from ordinary memory first waits for the GPU
    to finish everything queued (CUDA's rule for pageable copies), so every batch would stall it. Buffer k is
    refilled only once the copy that last read it has finished. On the CPU it is :func:`to_input`."""

    def __init__(self, device: torch.device, channels_last: bool = False):
        self.device, self.channels_last = torch.device(device), channels_last
        self.pinned = self.device.type == "cuda"
        self._buffers: list[torch.Tensor | None] = [None, None]
        self._copied: list = [None, None]  # the CUDA event after the copy that last read each buffer
        self._next = 0

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        if not self.pinned:
            return to_input(pixels, self.device, self.channels_last)
        k, self._next = self._next, 1 - self._next
        if self._copied[k] is not None:
            self._copied[k].synchronize()
        buf = self._buffers[k]
        if buf is None or buf.numel() < pixels.size:
            buf = self._buffers[k] = torch.empty(pixels.size, dtype=torch.uint8).pin_memory()
        staged = buf[:pixels.size].view(pixels.shape)
        staged.numpy()[...] = pixels
        x = staged.to(self.device, non_blocking=True)
        self._copied[k] = torch.cuda.Event()
        self._copied[k].record()
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)


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
