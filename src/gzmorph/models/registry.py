"""The one list of models: a dict filled by a decorator (the timm pattern).

Every model maps a float batch (B, 3, size, size) with values in [0, 1] to (B, 37) outputs in [0, 1] in the
Kaggle column order. ``crop`` and ``size`` say how images are prepared for it: the centre ``crop`` x ``crop``
pixels of the 424 px original, resized to ``size`` x ``size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..errors import GzmorphError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[..., nn.Module]  # factory(head=..., **options) -> nn.Module
    crop: int  # centre crop side, in pixels of the 424 px original
    size: int  # model input side, in pixels
    description: str
    # Recipe defaults (loss, lr, epochs, batch_size, head, augment): what `gzmorph train` uses unless told otherwise.
    defaults: dict[str, Any] = field(default_factory=dict)
    # Options the factory accepts besides `head` (for CLI validation and the saved config).
    options: tuple[str, ...] = ()
    # load_pretrained(model, source) where source is a local file or URL; None if the family has no such weights.
    load_pretrained: Callable[[nn.Module, str], None] | None = None


MODELS: dict[str, ModelSpec] = {}


def register(name: str, *, crop: int, size: int, description: str, options: tuple[str, ...] = (),
             load_pretrained: Callable[[nn.Module, str], None] | None = None, **defaults: Any):
    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = ModelSpec(name, factory, crop, size, description, dict(defaults), options, load_pretrained)
        return factory
    return decorator


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise GzmorphError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}") from None


def create_model(name: str, head: str | None = None, **options: Any) -> nn.Module:
    spec = get_spec(name)
    unknown = set(options) - set(spec.options)
    if unknown:
        raise GzmorphError(f"model {name!r} does not take option(s) {sorted(unknown)}; it takes {list(spec.options)}")
    return spec.factory(head=head or spec.defaults.get("head", "tree"), **options)


def list_models() -> list[str]:
    return sorted(MODELS)
