"""``dieleman``: the Kaggle winner's rotation-invariant convnet (Sander Dieleman, 2014), in PyTorch.

How it sees a galaxy (his "viewpoint extraction"): the central 207 px of the 424 px image at 69 px, and the same
rotated by 45 degrees; both, and their mirror images, make 4 copies. Each copy is cut into its four overlapping
45 x 45 corners, and every corner is turned so that the galaxy's centre lies in the same corner of each view:
16 views. One stack of convolutions (shared weights) looks at every view; the 16 feature vectors are concatenated
and go through two maxout dense layers to 37 scores and his output layer, which enforces the decision tree
(ReLU, divide by the question's sum, times the parent answer: ``head="tree-relu"``).

Because all 16 views share the convolutions, a feature learned at one orientation is applied at 8 orientations
(multiples of 45 degrees, mirrored or not) at once: that is the model's data efficiency.

Layer sizes follow his write-up: conv 6x6/32, max-pool 2; conv 5x5/64, max-pool 2; conv 3x3/128; conv 3x3/128,
max-pool 2 -> 2 x 2 x 128 = 512 features per view, 8192 in all; dense maxout 2048 (two pieces), dropout 0.5, twice;
dense 37. ``dense`` makes the dense layers smaller for quick runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..tree import N_OUTPUTS
from .heads import Head
from .net import Net
from .registry import register

VIEW = 45  # side of each corner view, in pixels of the 69 px input
N_VIEWS = 16


def _rotation_grid(size: int, degrees: float) -> torch.Tensor:
    """The sampling grid that rotates a (size x size) image about its centre (affine_grid's convention)."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]).unsqueeze(0)
    return F.affine_grid(theta, [1, 3, size, size], align_corners=False)


class ViewpointExtraction(nn.Module):
    """(B, C, S, S) -> (16 * B, C, 45, 45), view-major: views[v * B + b] is view ``v`` of image ``b``."""

    def __init__(self, size: int = 69, view: int = VIEW):
        super().__init__()
        if not size // 2 < view <= size:
            raise ValueError(f"corner views of {view} px must overlap the centre of a {size} px image")
        self.size, self.view = size, view
        self.register_buffer("grid45", _rotation_grid(size, 45.0), persistent=False)

    def corners(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four corner crops, each turned so that the image centre lies at its bottom-right."""
        s, v = self.size, self.view
        return [
            x[..., :v, :v],  # top-left: the centre is already at its bottom-right
            torch.rot90(x[..., :v, s - v:], 1, dims=(-2, -1)),  # top-right: a quarter turn anticlockwise
            torch.rot90(x[..., s - v:, s - v:], 2, dims=(-2, -1)),  # bottom-right: half a turn
            torch.rot90(x[..., s - v:, :v], 3, dims=(-2, -1)),  # bottom-left: a quarter turn clockwise
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.grid45.to(x.dtype).expand(x.shape[0], -1, -1, -1)
        rotated = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        copies = [x, rotated, x.flip(-1), rotated.flip(-1)]
        return torch.cat([c for copy in copies for c in self.corners(copy)], dim=0)


class Maxout(nn.Module):
    """A dense layer of ``units`` maxout units, each the max of ``pieces`` linear pieces."""

    def __init__(self, in_features: int, units: int, pieces: int = 2):
        super().__init__()
        self.units, self.pieces = units, pieces
        self.linear = nn.Linear(in_features, units * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).view(*x.shape[:-1], self.units, self.pieces).amax(-1)


class DielemanBackbone(nn.Module):
    """(B, 3, 69, 69) -> (B, dense): the 16 views through shared convolutions, side by side, then two maxout layers."""

    def __init__(self, dense: int = 2048, dropout: float = 0.5):
        super().__init__()
        self.views = ViewpointExtraction(69, VIEW)
        self.convs = nn.Sequential(
            nn.Conv2d(3, 32, 6), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # 45 -> 40 -> 20
            nn.Conv2d(32, 64, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # 20 -> 16 -> 8
            nn.Conv2d(64, 128, 3), nn.ReLU(inplace=True),  # 8 -> 6
            nn.Conv2d(128, 128, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # 6 -> 4 -> 2
        )
        per_view = 128 * 2 * 2
        self.dense = nn.Sequential(
            nn.Dropout(dropout), Maxout(N_VIEWS * per_view, dense),
            nn.Dropout(dropout), Maxout(dense, dense),
        )
        self.out_features = dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        features = torch.flatten(self.convs(self.views(x)), 1)  # (16 B, 512), view-major
        # Back to one row per galaxy: the 16 views' features side by side, in view order.
        return self.dense(features.view(N_VIEWS, b, -1).transpose(0, 1).reshape(b, -1))


@register("dieleman", crop=207, size=69, legacy_head="dense.5",
          description="Dieleman 2014 (Kaggle winner): 16 rotated/flipped 45 px viewpoints of the central 207 px at "
                      "69 px through shared convs, maxout dense layers, tree-enforcing ReLU output layer.",
          options=("dense", "dropout"),
          loss="mse", lr=1e-3, epochs=40, batch_size=64, head="tree-relu", augment="strong", schedule="cosine",
          warmup_epochs=1, weight_decay=0.0, ema=0.999)
def dieleman(head: str = "tree-relu", n_outputs: int = N_OUTPUTS, dense: int = 2048, dropout: float = 0.5) -> Net:
    backbone = DielemanBackbone(dense, dropout)
    net = Net(backbone, Head(dense, n_outputs, head, dropout))
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    last = net.head.linear
    nn.init.normal_(last.weight, std=0.001)
    # His output layer starts from ReLU(0.1): every answer on at first, none stuck at zero.
    nn.init.constant_(last.bias, 0.1)
    return net
