"""The one list of models: a dict filled by a decorator (the timm pattern).

Every model is a :class:`~gzmorph.models.net.Net`: a backbone mapping a float batch (B, 3, size, size) with values in
[0, 1] to pooled features (B, D), and a head mapping those to the task's outputs (the 37 Kaggle answers in column
order, unless fine-tuning gave it other columns). ``crop`` and ``size`` say how images are prepared for it: the
centre ``crop`` x ``crop`` pixels of the 424 px original, resized to ``size`` x ``size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from ..errors import BadArgument
from ..tree import N_OUTPUTS
from .net import Net

if TYPE_CHECKING:
    from ..config import TrainConfig


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
    # What gzmorph 0.1 (one flat module per model) called the final linear layer: its weight files load through
    # net.legacy_key with this.
    legacy_head: str = ""
    # The recipe values that change on a GPU (`resolve_recipe(cfg, "cuda")`): a batch large enough to keep it busy,
    # with the learning rate and warm-up that batch needs. Empty: the same recipe everywhere.
    gpu_recipe: dict[str, Any] = field(default_factory=dict)


MODELS: dict[str, ModelSpec] = {}


def register(name: str, *, crop: int, size: int, description: str, options: tuple[str, ...] = (),
             load_pretrained: Callable[[nn.Module, str], None] | None = None, legacy_head: str = "",
             gpu_recipe: dict[str, Any] | None = None, **defaults: Any):
    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = ModelSpec(name, factory, crop, size, description, dict(defaults), options, load_pretrained,
                                 legacy_head, dict(gpu_recipe or {}))
        return factory
    return decorator


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise BadArgument(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}") from None


def create_model(name: str, head: str | None = None, n_outputs: int = N_OUTPUTS, **options: Any) -> Net:
    """The model ``name`` with ``head`` (default: its recipe's) over ``n_outputs`` outputs and its ``options``."""
    spec = get_spec(name)
    unknown = set(options) - set(spec.options)
    if unknown:
        raise BadArgument(f"model {name!r} does not take option(s) {sorted(unknown)}; it takes {list(spec.options)}")
    try:
        return spec.factory(head=head or spec.defaults.get("head", "tree"), n_outputs=n_outputs, **options)
    except (TypeError, ValueError) as e:  # an option of the wrong type or shape, e.g. widths=[1, 2] depths=[1]
        raise BadArgument(f"model {name!r}: {e}") from None


def list_models() -> list[str]:
    return sorted(MODELS)


def resolve_recipe(cfg: "TrainConfig", device_type: str = "cpu") -> "TrainConfig":
    """``cfg`` with every recipe value it leaves open (None) filled from its model's defaults, then checked. On a GPU
    (``device_type`` "cuda") the model's ``gpu_recipe`` comes first -- but only as a whole: a run that sets any of
    its values (say ``--batch-size 64``) keeps the CPU recipe for the others. A batch size given without a rate gets
    the recipe's rate scaled with it (the linear rule; gznet's 2e-3 at 64 and 8e-3 at 256 both measured,
    benchmarks/accuracy.py): a rate tuned for one batch is wrong for another. Fine-tuning keeps its own recipe."""
    spec = get_spec(cfg.model)
    recipe = dict(spec.defaults)
    gpu = spec.gpu_recipe if device_type == "cuda" and not cfg.labels else {}
    if not any(getattr(cfg, k) is not None for k in gpu):
        recipe.update(gpu)
    if cfg.batch_size and cfg.lr is None and not cfg.labels and {"batch_size", "lr"} <= recipe.keys():
        recipe["lr"] = recipe["lr"] * cfg.batch_size / recipe["batch_size"]
    return cfg.with_recipe(recipe)
