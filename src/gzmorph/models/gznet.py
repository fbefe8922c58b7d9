"""``gznet``: gzmorph's own compact residual CNN, built for accuracy per CPU-second on Galaxy Zoo.

Why it looks like this:

* Input: the central 192 px of the 424 px image at 64 px (a 3x downscale, as Dieleman's 207 -> 69). Nearly all of
  the score lives in the galaxy's overall shape (Q1, Q6, Q7 carry the largest errors), which 64 px resolves; each
  doubling of the side would cost 4x the compute.
* A 3x3 stem at full resolution, then residual stages that halve the side and double the width: the cost of every
  stage is about the same, none dominates.
* Basic residual blocks (two 3x3 convs) with batch norm: cheap on CPUs (oneDNN runs dense 3x3 convs well; depthwise
  convs are memory-bound there) and stable at high learning rates. The last BN of each block starts at zero so every
  block starts as the identity, which lets a short schedule train deep-ish nets.
* Global average pooling: galaxies are centred, and a pooled feature is unchanged by the rotations and flips the
  training augmentation applies, so the head does not have to learn each orientation separately.
* The tree head (per-question softmax times the parent answer) by default, so every output is a valid set of
  Galaxy Zoo vote fractions.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..tree import N_OUTPUTS
from .heads import Head
from .net import Net
from .registry import register


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        nn.init.zeros_(self.bn2.weight)  # the block starts as the identity (Goyal et al. 2017)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            # Average-pool then 1x1 conv ("ResNet-D"): the shortcut sees every pixel, not one in four.
            self.shortcut = nn.Sequential(
                nn.AvgPool2d(stride) if stride > 1 else nn.Identity(),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class GZNetBackbone(nn.Module):
    """(B, 3, S, S) -> (B, widths[-1]) pooled features."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), depths: Sequence[int] = (1, 2, 2, 1),
                 stem: int = 24):
        super().__init__()
        if len(widths) != len(depths) or not widths:
            raise ValueError(f"widths {widths} and depths {depths} must be non-empty and of the same length")
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True))
        stages, channels = [], stem
        for width, depth in zip(widths, depths):
            blocks = [BasicBlock(channels, width, stride=2)]
            blocks += [BasicBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)


@register("gznet", crop=192, size=64, legacy_head="fc",
          description="gzmorph's compact residual CNN (default): 64 px from the central 192 px, 3x3 stem, 4 "
                      "residual stages 32-256 wide, global pooling, tree head. Best accuracy per CPU-second.",
          options=("widths", "depths", "stem", "dropout"),
          loss="mse", head="tree", augment="strong", schedule="cosine", weight_decay=5e-4, ema=0.999,
          batch_size=64, lr=2e-3, warmup_epochs=1,
          # 56 epochs: the 15 minutes of 2 CPU cores (issue 20) on a Zen 5 in bf16, where an epoch takes 13-17 s;
          # test 0.0886 with 8 views (30 until 2026-12-05: 0.0925; benchmarks/accuracy.py rows gznet, gznet/b64).
          epochs=56,
          # On a GPU, batch 64 keeps an H200 a tenth busy (4k img/s against 15k at batch 256, the step alone): batch
          # 256 with the rate scaled linearly (8e-3) and three epochs of warm-up, since the first large steps from
          # random weights are what diverges. At 30 epochs, on the CPU: 0.0935 with 8 views against batch 64's
          # 0.0925 (rows gznet/b256-30ep, gznet/b64). Batch 512 lost 0.0025-0.004 at every rate tried (5.6e-3 to
          # 1.6e-2): 11k galaxies give it too few steps. Not on the CPU: there batch 256 is no faster in the loop
          # (16.4 s an epoch against 13.2 s on a Zen 5) and loses accuracy per epoch.
          gpu_recipe={"batch_size": 256, "lr": 8e-3, "warmup_epochs": 3})
def gznet(head: str = "tree", n_outputs: int = N_OUTPUTS, widths: Sequence[int] = (32, 64, 128, 256),
          depths: Sequence[int] = (1, 2, 2, 1), stem: int = 24, dropout: float = 0.1) -> Net:
    backbone = GZNetBackbone(tuple(widths), tuple(depths), stem)
    net = Net(backbone, Head(backbone.out_features, n_outputs, head, dropout))
    # Initialised after both parts exist, in this order, so that a seed gives the weights it gave gzmorph 0.1.
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    # Small initial scores: the tree head then starts near uniform answers, close to the label means.
    nn.init.normal_(net.head.linear.weight, std=0.01)
    nn.init.zeros_(net.head.linear.bias)
    return net
