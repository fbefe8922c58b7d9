"""The masked training losses: the mean over known answers only, so partially labelled galaxies train the questions
they have and never learn an unknown answer as zero votes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean loss over the known answers only (partially labelled galaxies train the questions they have)."""
    m = mask.to(pred.dtype)
    if kind == "mse":
        per = (pred - target) ** 2
    elif kind == "bce":
        # Soft-target binary cross-entropy per output, as Keras' binary_crossentropy on sigmoid outputs.
        p = pred.float().clamp(1e-7, 1 - 1e-7)
        per = F.binary_cross_entropy(p, target.float(), reduction="none").to(pred.dtype)
    else:
        raise ValueError(f"unknown loss {kind!r}")
    return (per * m).sum() / m.sum().clamp_min(1)


def task_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, blocks: list[tuple[str, int]],
              fraction_loss: str = "mse") -> torch.Tensor:
    """A fine-tuning task's loss (``gzmorph.tasks``): per column, cross-entropy on a class column's softmax, MSE
    (or BCE) on a fraction, MSE on a standardised number; the mean over the (galaxy, column) cells that are known."""
    total, cells, start = pred.new_zeros(()), pred.new_zeros(()), 0
    for kind, width in blocks:
        p, y, m = pred[:, start:start + width], target[:, start:start + width], mask[:, start:start + width]
        known = m[:, 0].to(pred.dtype)  # a column is known or unknown for all of its outputs at once
        if kind == "classes":
            per = -(y * torch.log(p.clamp_min(1e-7))).sum(-1)
        elif kind == "fraction" and fraction_loss == "bce":
            per = F.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), y, reduction="none")[:, 0]
        else:
            per = ((p - y) ** 2)[:, 0]
        total = total + (per * known).sum()
        cells = cells + known.sum()
        start += width
    return total / cells.clamp_min(1)
