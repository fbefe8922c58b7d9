"""Where training batches come from: the decoded uint8 set in host memory (the CPU), or the whole set copied to the
GPU once (``on_device``), so that a step copies no images: its batch is gathered, cast and normalised there.

Both give the same batches from the same index arrays -- the same rows, the same uint8 values, the same float
conversion -- so a run's numbers do not depend on which one fed it; ``tests/test_train.py`` checks that bitwise on
the CPU, where ``on_device`` simply keeps a torch copy of the set.

Why it matters on a GPU: at batch 512 an H200 trains gznet on ~20k images a second, and gathering 512 rows of a
memory-mapped array then copying 6 MB from pageable memory every 25 ms is a large share of that. The set is small
(11k galaxies at 64 px = 140 MB; a million = 12 GB, under an H200's 141 GB).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..data.batches import to_input
from ..data.labelled import LabelledImages
from .augment import AugmentDraw, apply_augment

log = logging.getLogger("gzmorph")

# Leave this share of the GPU's free memory to the model, its activations and the optimizer.
DEVICE_SHARE = 0.5


@dataclass
class EpochPlan:
    """An epoch's batches, decided before its first step (``loop._epoch_plan``): their optimizer step numbers, the
    rows of each, and each one's augmentation draw."""

    steps: list[int]
    rows: list[np.ndarray]
    draws: list[AugmentDraw]


class TrainingBatches:
    """An epoch's batches of (step, augmented images as float on the device, labels, mask)."""

    def __init__(self, data: LabelledImages, device: torch.device, channels_last: bool, on_device: bool):
        self.n = len(data)
        self.device, self.channels_last, self.on_device = device, channels_last, on_device
        cat = data.catalogue
        if on_device:
            self.pixels = _copy_to(data.pixels, device)  # once, for the whole run
            self.labels = torch.from_numpy(cat.labels).to(device)
            self.mask = torch.from_numpy(cat.mask).to(device)
            log.info("the training set (%d galaxies, %.2f GB) is on %s", self.n, data.pixels.nbytes / 1e9, device)
        else:
            self.pixels_host = data.pixels
            self.labels, self.mask = torch.from_numpy(cat.labels), torch.from_numpy(cat.mask)

    def epoch(self, plan: EpochPlan) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        if not plan.steps:
            return
        if not self.on_device:
            for step, idx, draw in zip(plan.steps, plan.rows, plan.draws):
                rows = torch.from_numpy(idx)
                x = apply_augment(to_input(self.pixels_host[idx], self.device, self.channels_last), draw)
                yield (step, x, self.labels[rows].to(self.device, non_blocking=True),
                       self.mask[rows].to(self.device, non_blocking=True))
            return
        # Two copies for the whole epoch (its rows, its augmentation), not two per step.
        rows_all = torch.from_numpy(np.concatenate(plan.rows)).to(self.device)
        draws_all = AugmentDraw.cat(plan.draws).to(self.device)
        start = 0
        for step, idx in zip(plan.steps, plan.rows):
            stop = start + len(idx)
            rows = rows_all[start:stop]
            x = self.pixels.index_select(0, rows).permute(0, 3, 1, 2).float().div_(255.0)
            x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
            yield (step, apply_augment(x, draws_all.rows(start, stop)), self.labels.index_select(0, rows),
                   self.mask.index_select(0, rows))
            start = stop


def _copy_to(pixels: np.ndarray, device: torch.device, chunk_bytes: int = 1 << 26) -> torch.Tensor:
    """The (usually memory-mapped, read-only) uint8 array on ``device``, copied 64 MB at a time: never a second
    whole copy in host memory (12 GB for a million galaxies)."""
    out = torch.empty(pixels.shape, dtype=torch.uint8, device=device)
    step = max(1, chunk_bytes // max(1, pixels[0].nbytes if len(pixels) else 1))
    for a in range(0, len(pixels), step):
        out[a:a + step].copy_(torch.from_numpy(np.array(pixels[a:a + step])))
    return out


def keep_on_device(data: LabelledImages, device: torch.device) -> bool:
    """Whether the set goes to the GPU whole: on a CUDA device with room for it, never on the CPU."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    need = data.pixels.nbytes + data.catalogue.labels.nbytes + data.catalogue.mask.nbytes
    if need > DEVICE_SHARE * free:
        log.info("the training set (%.1f GB) stays in host memory: more than %.0f%% of the GPU's free %.1f GB",
                 need / 1e9, 100 * DEVICE_SHARE, free / 1e9)
        return False
    return True
