"""``seed-cnn``: the student report's small Keras CNN (its Table 1), reproduced layer for layer.

The report downscaled the 424 px images to 212 px and kept the central 74 px, i.e. the central 148 px of the
original at half resolution: crop=148, size=74. Shapes through the network (valid 3x3 convs, 2x2 pools):

    74 -> 72 -> 70 -> pool 35 -> 33 -> 31 -> pool 15 -> 13 -> 11 -> pool 5;  5 * 5 * 32 = 800 features.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..tree import N_OUTPUTS
from .heads import Head
from .net import Net
from .registry import register

FILTERS = (128, 64, 32)
FLATTEN_FEATURES = 5 * 5 * FILTERS[-1]  # 800


def _keras_init(module: nn.Module) -> None:
    # Keras' defaults for Conv2D and Dense are glorot_uniform weights and zero biases; PyTorch's defaults differ
    # (kaiming_uniform with a=sqrt(5)). We use Keras' so the model starts where the report's did.
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


@register("seed-cnn", crop=148, size=74, legacy_head="fc3",
          description="The student report's Keras CNN (Table 1): 6 valid 3x3 convs, 3 max-pools, 3 dense layers; "
                      "74 px input from the central 148 px.",
          loss="bce", lr=1e-3, epochs=10, batch_size=32, head="sigmoid", augment="report")
def seed_cnn(head: str = "sigmoid", n_outputs: int = N_OUTPUTS) -> Net:
    layers: list[tuple[str, nn.Module]] = [
        # Keras' BatchNormalization defaults: epsilon 1e-3 and moving-average momentum 0.99, which is PyTorch's
        # momentum 0.01 (PyTorch weights the new batch by `momentum`, Keras weights the old average by it).
        ("input_bn", nn.BatchNorm2d(3, eps=1e-3, momentum=0.01)),
    ]
    in_channels = 3
    for group, filters in enumerate(FILTERS, start=1):
        layers += [
            (f"conv{group}a", nn.Conv2d(in_channels, filters, 3, padding=0)),
            (f"relu{group}a", nn.ReLU()),
            (f"conv{group}b", nn.Conv2d(filters, filters, 3, padding=0)),
            (f"relu{group}b", nn.ReLU()),
            (f"pool{group}", nn.MaxPool2d(2)),  # floor, like Keras' 'valid' pooling: 31 -> 15
        ]
        in_channels = filters
    layers += [
        # Keras flattens channels-last (H, W, C), PyTorch channels-first (C, H, W). The order only matters when
        # porting trained Keras weights into fc1, which we never do, so plain torch flatten is used.
        ("flatten", nn.Flatten()),
        ("dropout", nn.Dropout(0.5)),
        ("fc1", nn.Linear(FLATTEN_FEATURES, 256)),
        ("relu_fc1", nn.ReLU()),
        ("fc2", nn.Linear(256, 128)),
        ("relu_fc2", nn.ReLU()),
    ]
    # The report's last Dense(37) + sigmoid is the head; the 128 features before it are the backbone's output.
    model = Net(nn.Sequential(OrderedDict(layers)), Head(128, n_outputs, head))
    model.apply(_keras_init)
    return model
