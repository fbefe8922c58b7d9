"""Heads: pooled features (B, D) -> the task's outputs, and the output functions that end them.

A head is dropout, one linear layer from D to the task's number of outputs, and an output function:

* ``tree``: per-question softmax times the parent answer, so every output satisfies the decision tree (default).
* ``tree-relu``: Dieleman's variant, ReLU then divide by the question's sum.
* ``sigmoid``: independent sigmoids (the report's Keras model; outputs may break the tree sums).
* ``identity``: the raw scores.
* ``task``: a fine-tuning task's blocks (``gzmorph.tasks``): a softmax over each class column's outputs, a sigmoid
  for each fraction column, the raw value for each number column.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import tree
from ..config import HEADS

OUTPUTS = (*HEADS, "identity", "task")


class OutputFunction(nn.Module):
    def __init__(self, kind: str = "tree", blocks: list[tuple[str, int]] | None = None):
        super().__init__()
        if kind not in OUTPUTS:
            raise ValueError(f"unknown head {kind!r}; choose one of {OUTPUTS}")
        if (kind == "task") != (blocks is not None):
            raise ValueError("the task output takes the task's blocks, and only it does")
        self.kind, self.blocks = kind, [tuple(b) for b in blocks or []]

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        # Always float32, also under bf16 autocast: bf16's 8-bit mantissa would break the tree's sums by ~4e-3.
        scores = scores.float()
        if self.kind == "identity":
            return scores
        if self.kind == "task":
            parts, start = [], 0
            for kind, width in self.blocks:
                block = scores[..., start:start + width]
                parts.append(torch.softmax(block, -1) if kind == "classes" else
                             torch.sigmoid(block) if kind == "fraction" else block)
                start += width
            return torch.cat(parts, -1)
        if self.kind == "sigmoid":
            return torch.sigmoid(scores)
        return tree.normalise(scores, mode="softmax" if self.kind == "tree" else "relu")

    def extra_repr(self) -> str:
        return self.kind


class Head(nn.Module):
    """Dropout, linear (``in_features`` -> ``n_outputs``), output function. The tree outputs need 37 outputs."""

    def __init__(self, in_features: int, n_outputs: int = tree.N_OUTPUTS, kind: str = "tree", dropout: float = 0.0,
                 blocks: list[tuple[str, int]] | None = None):
        super().__init__()
        if kind in ("tree", "tree-relu") and n_outputs != tree.N_OUTPUTS:
            raise ValueError(f"the {kind} output is the {tree.N_OUTPUTS}-answer decision tree; got {n_outputs} "
                             f"outputs")
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.linear = nn.Linear(in_features, n_outputs)
        self.output = OutputFunction(kind, blocks)

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.output(self.linear(self.dropout(features)))
