"""Model registry; importing this package registers every family."""

from .registry import MODELS, ModelSpec, create_model, get_spec, list_models, register, resolve_recipe
from . import seed_cnn, resnet, gznet, dieleman  # noqa: F401  (registration side effects)

__all__ = ["MODELS", "ModelSpec", "create_model", "get_spec", "list_models", "register"]
