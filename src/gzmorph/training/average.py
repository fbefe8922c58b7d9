"""The weight average: an exponential moving average of the weights, evaluated and saved instead of the raw weights
(it smooths the noise of the last optimizer steps)."""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    """Exponential moving average of a model's weights and buffers (evaluated and saved instead of the raw weights).

    The decay ramps up from 0 (``min(decay, (1 + t) / (10 + t))``) so that the average does not drag the random
    initial weights along for thousands of steps in a short run.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0
        self._pairs: tuple[list[torch.Tensor], ...] | None = None

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        if self._pairs is None:
            # Paired once, at the first step: rebuilding two state_dicts every step costs more than the update on a
            # GPU. Not at construction: moving the model (.to(device), channels_last) swaps parameter storage.
            avg, live = self.model.state_dict().values(), model.state_dict().values()
            pairs = list(zip(avg, live))
            self._pairs = ([a for a, _ in pairs if a.dtype.is_floating_point],
                           [b for a, b in pairs if a.dtype.is_floating_point],
                           [a for a, _ in pairs if not a.dtype.is_floating_point],  # BatchNorm's step counters
                           [b for a, b in pairs if not a.dtype.is_floating_point])
        avg_f, live_f, avg_i, live_i = self._pairs
        torch._foreach_lerp_(avg_f, live_f, 1 - d)
        for a, b in zip(avg_i, live_i):
            a.copy_(b)
