"""ResNet in plain PyTorch with torchvision's layout, and ``seed-resnet50``: the report's transfer-learning model.

Module and parameter names are torchvision's (``conv1``, ``bn1``, ``layer1``..``layer4`` of ``Bottleneck`` blocks
with ``conv1..3``, ``bn1..3``, ``downsample``; stride on the 3x3 conv, "ResNet v1.5"), so torchvision's published
ImageNet weights load by name without torchvision installed. The classifier ``fc`` is deliberately absent:
models built on this backbone put their own head beside it (``head.linear``), which loading never touches.

The report built its model with ``tf.keras.applications.ResNet50`` and froze the first 143 Keras layers.
``keras_layer_plan`` lists Keras' layers in Keras' order with the torch module each one corresponds to, so that
``freeze_layers=N`` freezes exactly what ``for layer in base.layers[:N]: layer.trainable = False`` froze.
(Keras' ResNet50 is v1, stride on the first 1x1 conv; torchvision's is v1.5. The layers correspond one to one
all the same, so freezing "the same layers" is well defined even though the weights differ.)
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import BadArgument, BadData, GzmorphError
from ..tree import N_OUTPUTS
from .heads import Head
from .net import Net
from .registry import register

log = logging.getLogger("gzmorph")

# torchvision's ResNet50_Weights.IMAGENET1K_V2 (top-1 80.858 %). The "-11ad3fa6" in the name is the start of the
# file's SHA-256, which torch.hub checks after downloading.
IMAGENET_URL = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
PRETRAINED_ALIASES = {"imagenet": IMAGENET_URL}

# torchvision's weights expect inputs normalised with ImageNet's channel statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESNET50_BLOCKS = (3, 4, 6, 3)
BACKBONE_MODULES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


# --------------------------------------------------------------------------------------------------------------
# The network (torchvision's architecture and initialisation)
# --------------------------------------------------------------------------------------------------------------

class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)  # v1.5: stride here
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A Bottleneck ResNet backbone without pooling or classifier: ``features(x)`` gives the last feature map.

    ``x`` is the package's usual [0, 1] input; the model normalises it with ImageNet's statistics itself (held as
    non-persistent buffers, so they are not part of checkpoints), because that is what pretrained weights expect.
    Subclasses pool or flatten that map into the features a head reads; see ``FlatResNet`` and ``PooledResNet``.
    """

    def __init__(self, blocks: Sequence[int] = RESNET50_BLOCKS, zero_init_residual: bool = False):
        super().__init__()
        self.blocks = tuple(blocks)
        self._frozen_bn: tuple[str, ...] = ()  # names of BatchNorm modules frozen by freeze_keras_layers
        self.register_buffer("input_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for stage, n_blocks in enumerate(self.blocks):
            width = 64 * 2 ** stage
            stride = 1 if stage == 0 else 2
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, width * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(width * Bottleneck.expansion),
            )
            layer = [Bottleneck(in_channels, width, stride, downsample)]
            in_channels = width * Bottleneck.expansion
            layer += [Bottleneck(in_channels, width) for _ in range(n_blocks - 1)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        self.out_channels = in_channels

        # torchvision's initialisation (matters when training from scratch; pretrained weights overwrite it).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each block starts as the identity (Goyal et al. 2017)
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    @staticmethod
    def feature_side(size: int, n_stages: int = 4) -> int:
        """Side of the last feature map for a ``size`` px input: conv1 and maxpool halve it (rounding up), and so
        does the first block of every stage after the first (3x3 conv, stride 2, padding 1). 74 -> 37 -> 19 ->
        19 -> 10 -> 5 -> 3."""
        side = (size - 1) // 2 + 1  # conv1: 7x7, stride 2, padding 3
        side = (side - 1) // 2 + 1  # maxpool: 3x3, stride 2, padding 1
        for _ in range(n_stages - 1):
            side = (side - 1) // 2 + 1
        return side

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.input_mean) / self.input_std
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone's parameters and buffers under torchvision's names (tensors share storage with the model)."""
        return {f"{name}.{key}": value
                for name in BACKBONE_MODULES for key, value in getattr(self, name).state_dict().items()}

    # ---- Keras-style freezing ----

    def freeze_keras_layers(self, n: int) -> None:
        """Freeze what Keras' ``for layer in ResNet50(include_top=False).layers[:n]: layer.trainable = False`` froze.

        Frozen parameters stop requiring gradients, and frozen BatchNorm layers run in inference mode (running
        statistics used and never updated) even in ``train()`` mode: that is what TF2 Keras does for a
        BatchNormalization layer with ``trainable = False``.
        """
        plan = keras_layer_plan(self.blocks)
        if isinstance(n, str) and n.strip().isdigit():  # the CLI may hand options over as text
            n = int(n)
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(plan):
            raise BadArgument(f"freeze_layers must be a whole number from 0 to {len(plan)} (Keras layers of this "
                               f"ResNet; the report froze 143, i.e. everything before conv5), got {n!r}")
        frozen_bn = []
        for _, path in plan[:n]:
            if path is None:  # padding, activation, pooling, add: nothing to freeze
                continue
            module = self.get_submodule(path)
            for p in module.parameters():
                p.requires_grad_(False)
            if isinstance(module, nn.BatchNorm2d):
                frozen_bn.append(path)
        self._frozen_bn = tuple(frozen_bn)
        self.train(self.training)

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        for path in self._frozen_bn:
            self.get_submodule(path).eval()
        return self


def keras_layer_plan(blocks: Sequence[int] = RESNET50_BLOCKS) -> list[tuple[str, str | None]]:
    """``tf.keras.applications`` ResNet's layers (``include_top=False``) in ``model.layers`` order, each with the
    name of the corresponding torch module in ``ResNet`` (None for layers without weights).

    Keras' functional model lists a stage's first block as _1_conv, _1_bn, _1_relu, _2_conv, _2_bn, _2_relu,
    _0_conv, _3_conv, _0_bn, _3_bn, _add, _out (the shortcut conv is built first but is listed where Keras'
    topological sort puts it). For ResNet50 that is 7 stem layers + 32 + 42 + 62 + 32 = 175 layers:
    conv2 = 7..38, conv3 = 39..80, conv4 = 81..142, conv5 = 143..174. With include_top=True Keras would add
    avg_pool and predictions (177); the report used include_top=False, so they are not listed.
    """
    plan: list[tuple[str, str | None]] = [
        ("input_1", None), ("conv1_pad", None), ("conv1_conv", "conv1"), ("conv1_bn", "bn1"),
        ("conv1_relu", None), ("pool1_pad", None), ("pool1_pool", None),
    ]
    for stage, n_blocks in enumerate(blocks):
        for block in range(n_blocks):
            k = f"conv{stage + 2}_block{block + 1}"  # Keras' name
            t = f"layer{stage + 1}.{block}"  # torch's name
            plan += [(f"{k}_1_conv", f"{t}.conv1"), (f"{k}_1_bn", f"{t}.bn1"), (f"{k}_1_relu", None),
                     (f"{k}_2_conv", f"{t}.conv2"), (f"{k}_2_bn", f"{t}.bn2"), (f"{k}_2_relu", None)]
            if block == 0:
                plan += [(f"{k}_0_conv", f"{t}.downsample.0"), (f"{k}_3_conv", f"{t}.conv3"),
                         (f"{k}_0_bn", f"{t}.downsample.1"), (f"{k}_3_bn", f"{t}.bn3")]
            else:
                plan += [(f"{k}_3_conv", f"{t}.conv3"), (f"{k}_3_bn", f"{t}.bn3")]
            plan += [(f"{k}_add", None), (f"{k}_out", None)]
    return plan


def keras_layer_names(blocks: Sequence[int] = RESNET50_BLOCKS) -> list[str]:
    return [name for name, _ in keras_layer_plan(blocks)]


assert len(keras_layer_plan()) == 175  # len(tf.keras.applications.ResNet50(include_top=False).layers)


# --------------------------------------------------------------------------------------------------------------
# Loading torchvision's weights
# --------------------------------------------------------------------------------------------------------------

def _shorten(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def _read_state_dict(source: str) -> tuple[Mapping[str, Any], str]:
    """Read a torchvision-format state dict from a local file or URL, without ever unpickling arbitrary objects."""
    where = PRETRAINED_ALIASES.get(source.strip().lower(), source.strip())
    scheme = urlparse(where).scheme.lower()
    if scheme in ("http", "https", "file"):
        if where.lower().endswith(".safetensors"):
            raise BadData(f"{where}: download .safetensors files first and pass the local path")
        try:
            # torch.hub caches the download under $TORCH_HOME/hub/checkpoints. The hash check only applies to our
            # own constant: torch.hub takes "-<hex>." in the file name as a hash prefix, which other names may not be.
            state = torch.hub.load_state_dict_from_url(where, map_location="cpu", weights_only=True,
                                                       check_hash=where == IMAGENET_URL)
        except pickle.UnpicklingError as e:
            raise BadData(f"{where}: refused to load: the file holds objects other than tensors ({e})") from e
        except Exception as e:  # network errors, hash mismatch, corrupt file: all the user's to fix
            raise BadData(f"{where}: could not download or read pretrained weights: {e}") from e
    elif scheme and len(scheme) > 1:  # (a one-letter "scheme" is a Windows drive)
        raise BadArgument(f"{where}: unsupported URL scheme {scheme!r}; use http(s)://, file:// or a local path")
    else:
        path = Path(where).expanduser()
        if not path.is_file():
            raise BadData(f"{path}: pretrained weights file not found (give a .safetensors or .pth file, "
                               f"a URL, or one of {sorted(PRETRAINED_ALIASES)})")
        suffix = path.suffix.lower()
        try:
            if suffix == ".safetensors":
                from safetensors.torch import load_file
                state = load_file(str(path), device="cpu")
            elif suffix in (".pth", ".pt", ".bin"):
                state = torch.load(path, map_location="cpu", weights_only=True)
            else:
                raise BadData(f"{path}: unknown weights format {suffix!r}; use .safetensors, .pth or .pt")
        except GzmorphError:
            raise
        except pickle.UnpicklingError as e:
            raise BadData(f"{path}: refused to load: the file holds objects other than tensors ({e})") from e
        except Exception as e:
            raise BadData(f"{path}: could not read pretrained weights: {e}") from e
    if not isinstance(state, Mapping):
        raise BadData(f"{where}: expected a state dict (names -> tensors), found {type(state).__name__}")
    return state, where


def _find_backbone(model: nn.Module) -> ResNet:
    if isinstance(model, ResNet):
        return model
    for module in model.modules():
        if isinstance(module, ResNet):
            return module
    raise BadArgument(f"{type(model).__name__} has no ResNet backbone to load torchvision weights into")


def load_torchvision_weights(model: nn.Module, source: str) -> None:
    """Load a torchvision ResNet state dict (local .safetensors/.pth/.pt, http(s)/file URL, or 'imagenet') into
    ``model``'s ResNet backbone, by name and strictly: every backbone tensor must be present with the right shape,
    and nothing but ``fc.*`` (the 1000-class classifier, which we do not use) may be left over.

    ``num_batches_tracked`` counters may be absent (older torchvision files lack them); they are only used when
    BatchNorm's momentum is None, which ours never is.
    """
    backbone = _find_backbone(model)
    state, where = _read_state_dict(source)
    expected = backbone.backbone_state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    misshaped = [f"{k} {tuple(state[k].shape) if torch.is_tensor(state[k]) else type(state[k]).__name__} "
                 f"(expected {tuple(v.shape)})"
                 for k, v in expected.items()
                 if k in state and not (torch.is_tensor(state[k]) and state[k].shape == v.shape)]
    unexpected = [k for k in state if k not in expected and not k.startswith("fc.")]
    problems = [f"{label}: {_shorten(keys)}" for label, keys in
                (("missing", missing), ("wrong shape", misshaped), ("unexpected", unexpected)) if keys]
    if problems:
        raise BadData(f"{where}: not torchvision ResNet weights for this model ({len(backbone.blocks)} stages, "
                           f"blocks {backbone.blocks}); " + "; ".join(problems))
    loaded = 0
    with torch.no_grad():
        for key, tensor in expected.items():
            if key in state:
                tensor.copy_(state[key])
                loaded += 1
    log.info("loaded %d pretrained tensors into the ResNet backbone from %s", loaded, where)


# --------------------------------------------------------------------------------------------------------------
# seed-resnet50
# --------------------------------------------------------------------------------------------------------------

class FlatResNet(ResNet):
    """The report's backbone: ResNet-50's last feature map flattened (3 x 3 x 2048 = 18432 features at 74 px)."""

    def __init__(self, size: int = 74):
        super().__init__(RESNET50_BLOCKS)
        side = self.feature_side(size)
        self.out_features = self.out_channels * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)


@register("seed-resnet50", crop=148, size=74, legacy_head="head_fc",
          description="The report's transfer-learning model: ResNet-50 (torchvision layout) on the central 148 px "
                      "at 74 px, flatten, dense to 37; freeze_layers=N freezes Keras' first N layers (report: 143).",
          options=("freeze_layers",), load_pretrained=load_torchvision_weights,
          loss="bce", lr=1e-3, epochs=10, batch_size=32, head="sigmoid", augment="report")
def seed_resnet50(head: str = "sigmoid", n_outputs: int = N_OUTPUTS, freeze_layers: int = 0) -> Net:
    # The report's Keras Cropping2D(69) on its 212 px images keeps 212 - 2 * 69 = 74 px: crop 148 of 424, size 74.
    backbone = FlatResNet(size=74)
    # Keras flattens channels-last, torch channels-first; the order is irrelevant for a layer trained here.
    net = Net(backbone, Head(backbone.out_features, n_outputs, head))
    # Keras' Dense default (glorot_uniform, zero bias), as the report's model started from.
    nn.init.xavier_uniform_(net.head.linear.weight)
    nn.init.zeros_(net.head.linear.bias)
    backbone.freeze_keras_layers(freeze_layers)
    return net


# --------------------------------------------------------------------------------------------------------------
# resnet50: the same network, set up to train well from scratch
# --------------------------------------------------------------------------------------------------------------

class PooledResNet(ResNet):
    """ResNet-50 with residual branches that start at zero and global average pooling (2048 features): 12x fewer
    head weights than the report's flatten, and no dependence on where a feature sits."""

    def __init__(self):
        super().__init__(RESNET50_BLOCKS, zero_init_residual=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = self.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


@register("resnet50", crop=192, size=96, legacy_head="head_fc",
          description="ResNet-50 (torchvision layout) made to train from scratch: central 192 px at 96 px, "
                      "zero-init residuals, global pooling, dropout, tree head, MSE, strong augmentation.",
          options=("dropout",), load_pretrained=load_torchvision_weights,
          loss="mse", lr=1e-3, epochs=30, batch_size=64, head="tree", augment="strong", schedule="cosine",
          warmup_epochs=1, weight_decay=5e-4, ema=0.999)
def resnet50(head: str = "tree", n_outputs: int = N_OUTPUTS, dropout: float = 0.2) -> Net:
    """What makes ResNet-50 train from scratch on a few thousand galaxies: the central 192 px at 96 px (the whole
    galaxy, not the report's 148 px), zero-init residuals, global pooling, dropout and the tree head. The backbone
    keeps torchvision's names, so ``--pretrained`` still works."""
    backbone = PooledResNet()
    net = Net(backbone, Head(backbone.out_features, n_outputs, head, dropout))
    nn.init.normal_(net.head.linear.weight, std=0.01)
    nn.init.zeros_(net.head.linear.bias)
    return net
