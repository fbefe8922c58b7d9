"""gzmorph: Galaxy Zoo morphology (the Kaggle Galaxy Challenge's 37 vote fractions) from galaxy images.

    import gzmorph
    run = gzmorph.train(gzmorph.TrainConfig(data="data/galaxy-zoo", model="gznet", out="runs/gz"))
    print(gzmorph.evaluate(run, "data/galaxy-zoo", split="test", tta=8)["rmse"])
    gzmorph.predict(run, "data/galaxy-zoo/images_test_rev1", "submission.csv")
    gzmorph.plot(run)

    model = gzmorph.load_model()                    # the model inside gzmorph, for notebooks:
    table = model.predict("galaxies/", tta=8)       # a pandas DataFrame, one row per galaxy, named columns

The code follows the data: ``data/`` (files in -> arrays), ``models/``, ``training/`` (arrays -> a trained run),
``inference/`` (a run -> answers); the README's "Code map" says what lives where.
"""

from __future__ import annotations

from importlib import import_module

from .version import __version__

# The API, imported on first use (PEP 562): `import gzmorph` and `gzmorph --help` load no torch.
_API = {
    "TrainConfig": ("gzmorph.config", "TrainConfig"),
    "GzmorphError": ("gzmorph.errors", "GzmorphError"),
    "train": ("gzmorph.training.loop", "train"),
    "evaluate": ("gzmorph.inference.evaluate", "evaluate"),
    "predict": ("gzmorph.inference.predict", "predict"),
    "plot": ("gzmorph.inference.plots", "plot_run"),
    "load_model": ("gzmorph.inference.galaxy_model", "load_model"),
    "GalaxyModel": ("gzmorph.inference.galaxy_model", "GalaxyModel"),
    "synth": ("gzmorph.data.synth", "make_synthetic"),
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'gzmorph' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(import_module(module), attr)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
