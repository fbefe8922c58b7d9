"""Output heads: the last step from 37 raw scores to 37 outputs in [0, 1]."""

from __future__ import annotations

import torch
from torch import nn

from .. import tree

HEADS = ("sigmoid", "tree", "tree-relu")


class OutputHead(nn.Module):
    """``sigmoid``: 37 independent sigmoids (the report's Keras model; outputs may break the tree sums).
    ``tree``: per-question softmax times the parent answer, so every output satisfies the tree (the default).
    ``tree-relu``: Dieleman's variant, ReLU then divide by the question's sum.
    """

    def __init__(self, kind: str = "tree"):
        super().__init__()
        if kind not in HEADS:
            raise ValueError(f"unknown head {kind!r}; choose one of {HEADS}")
        self.kind = kind

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        # Always float32, also under bf16 autocast: bf16's 8-bit mantissa would break the tree's sums by ~4e-3.
        scores = scores.float()
        if self.kind == "sigmoid":
            return torch.sigmoid(scores)
        return tree.normalise(scores, mode="softmax" if self.kind == "tree" else "relu")

    def extra_repr(self) -> str:
        return self.kind
