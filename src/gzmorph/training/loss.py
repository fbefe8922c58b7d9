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
