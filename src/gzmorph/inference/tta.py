"""Running a trained model over a uint8 image array, with optional test-time augmentation (TTA).

TTA averages the model's outputs over symmetric views of each galaxy: its morphology does not depend on
orientation or mirroring, so each view is an equally valid look and the average has less noise. Up to 8 views are
the symmetries of the square (4 quarter turns x mirror), which move whole pixels, so no view is blurred by
interpolation. 16 and 32 views add the same 8 symmetries of copies turned by 45 degrees (16) or by 22.5, 45 and
67.5 degrees (32), resampled as training's any-angle augmentation resamples, so the model has seen such inputs.
Dieleman (2014) averaged 60 views. The average of tree-consistent outputs is tree-consistent (the tree's sums are
linear).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from .. import runs
from ..config import TTA_VIEWS
from ..data.batches import DeviceFeed, batch_indices, to_input
from ..errors import BadArgument
from ..precision import Policy
from ..training.augment import rotate


def dihedral_views(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The first ``n`` of the 8 symmetries of the square applied to a (B, C, H, W) batch: identity, mirror, then the
    quarter turns of both (so n=2 is flips only, n=4 adds the half turn, n=8 is the whole group)."""
    if n not in (1, 2, 4, 8):
        raise BadArgument(f"dihedral views are 1, 2, 4 or 8, got {n}")
    order = [(0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True)]
    return [torch.rot90(x.flip(-1) if mirror else x, k, dims=(-2, -1)) for k, mirror in order[:n]]


def check_tta(n: int) -> None:
    """Called before any work is done, so a wrong ``--tta`` fails at once, not after the images are decoded."""
    if n not in TTA_VIEWS:
        raise BadArgument(f"--tta must be one of {', '.join(map(str, TTA_VIEWS))} (views averaged), got {n}")


def tta_views(x: torch.Tensor, n: int) -> Iterator[torch.Tensor]:
    """The ``n`` views averaged by test-time augmentation, made one at a time (32 copies of a large batch need not
    be in memory at once): the 8 dihedral views of ``x``, then of each in-between turn of it."""
    check_tta(n)
    yield from dihedral_views(x, min(n, 8))
    turns = n // 8
    for j in range(1, turns):
        yield from dihedral_views(rotate(x, 90 * j / turns), 8)


@torch.no_grad()
def predict_on_device(model: torch.nn.Module, pixels: np.ndarray, batch_size: int = 256,
                      policy: Policy | None = None, tta: int = 1, spread: bool = False,
                      feed: DeviceFeed | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The work of :func:`predict_array`, queued: (means, spreads or None) as tensors on the policy's device, not
    yet waited for. A caller with more images queues their work before reading these (``.cpu()`` waits), so a GPU
    never idles while the host writes answers. ``feed``: the caller's :class:`DeviceFeed`, kept between calls (its
    pinned buffers are slow to allocate)."""
    policy = policy or Policy(torch.device("cpu"), "fp32")
    feed = feed or DeviceFeed(policy.device, policy.channels_last)
    model.eval()
    means, stds = [], []
    for idx in batch_indices(len(pixels), batch_size):
        x = feed(pixels[idx])
        total, squares = 0.0, 0.0
        with policy.autocast():
            for v in tta_views(x, tta):
                out = model(v).float()
                total = total + out
                if spread:
                    squares = squares + out.double() ** 2
        mean = total / tta
        means.append(mean)
        if spread:
            stds.append((squares / tta - mean.double() ** 2).clamp_min(0).sqrt().float())
    if not means:
        empty = torch.zeros((0, _n_outputs(model)), dtype=torch.float32)
        return empty, (empty.clone() if spread else None)
    return torch.cat(means), (torch.cat(stds) if spread else None)


def predict_array(model: torch.nn.Module, pixels: np.ndarray, batch_size: int = 256, policy: Policy | None = None,
                  tta: int = 1, spread: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """(N, S, S, 3) uint8 -> (N, outputs) float32 predictions, in order, averaged over ``tta`` symmetric views;
    with ``spread``, also each output's standard deviation over the views (how much the answer depends on the
    view: a measure of how sure it is).

    ``policy`` says where and in which precision the model runs (default: fp32 on the CPU); the model must already
    be placed by it (``policy.place(model)``)."""
    mean, sd = predict_on_device(model, pixels, batch_size, policy, tta, spread)
    return (mean.cpu().numpy(), sd.cpu().numpy()) if spread else mean.cpu().numpy()


@torch.no_grad()
def embed_array(model: torch.nn.Module, pixels: np.ndarray, batch_size: int = 256,
                policy: Policy | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S, 3) uint8 -> (pooled features (N, D), outputs (N, outputs)), float32, one forward pass each."""
    policy = policy or Policy(torch.device("cpu"), "fp32")
    model.eval()
    feats, outs = [], []
    for idx in batch_indices(len(pixels), batch_size):
        x = to_input(pixels[idx], policy.device, policy.channels_last)
        with policy.autocast():
            f = model.features(x)
            o = model.head(f)
        feats.append(f.float().cpu().numpy())
        outs.append(o.float().cpu().numpy())
    if not feats:
        return np.zeros((0, model.feature_dim), np.float32), np.zeros((0, _n_outputs(model)), np.float32)
    return np.concatenate(feats), np.concatenate(outs)


def _n_outputs(model: torch.nn.Module) -> int:
    head = getattr(model, "head", None)
    return head.linear.out_features if head is not None else 37


def predict_answers(loaded, pixels: np.ndarray, batch_size: int = 256, tta: int = 1,
                    spread: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The answers of a loaded run (``runs.LoadedModel``) for uint8 images: its outputs under its precision policy,
    vote fractions and probabilities clipped to [0, 1] (the heads already give values in [0, 1]; the clip only
    guards the written numbers against rounding), a fine-tuned number column back in its own units. What predict,
    evaluate, serve and the galleries all report. With ``spread``, also each answer's spread over the views."""
    return queue_answers(loaded, pixels, batch_size, tta, spread)()


def queue_answers(loaded, pixels: np.ndarray, batch_size: int = 256, tta: int = 1, spread: bool = False,
                  feed: DeviceFeed | None = None) -> Callable[[], np.ndarray | tuple[np.ndarray, np.ndarray]]:
    """:func:`predict_answers` in two halves: the model's work is queued now, and the function returned waits for
    it and gives the answers. What ``predict`` pipelines: the next chunk is queued before this one is written."""
    mean, sd = predict_on_device(loaded.model, pixels, batch_size, loaded.policy, tta=tta, spread=spread, feed=feed)

    def answers():
        sd_np = None if sd is None else sd.cpu().numpy()
        out = finish_answers(loaded.config, mean.cpu().numpy(), sd_np)  # scales a number column's spread in place
        return (out, sd_np) if spread else out
    return answers


def finish_answers(cfg, out: np.ndarray, spread: np.ndarray | None = None) -> np.ndarray:
    """Raw model outputs -> the answers written: clipped to [0, 1], a fine-tuned number column (and its spread)
    back in the column's units."""
    task = runs.task_of(cfg)
    if task is None:
        return np.clip(out, 0.0, 1.0)
    for col, sl in zip(task.columns, task.slices()):  # a fine-tuned run: its columns in their own units
        if col.kind == "number":
            out[:, sl] = out[:, sl] * col.std + col.mean
            if spread is not None:
                spread[:, sl] *= col.std
        else:
            out[:, sl] = np.clip(out[:, sl], 0.0, 1.0)
    return out
