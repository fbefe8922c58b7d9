"""gzmorph: Galaxy Zoo morphology (the Kaggle Galaxy Challenge's 37 vote fractions) from galaxy images.

    import gzmorph
    run = gzmorph.train(gzmorph.TrainConfig(data="data/galaxy-zoo", model="gznet", out="runs/gz"))
    print(gzmorph.evaluate(run, "data/galaxy-zoo", split="test", tta=8)["rmse"])
    gzmorph.predict(run, "data/galaxy-zoo/images_test_rev1", "submission.csv")
    gzmorph.plot(run)
"""

__version__ = "0.1.0"

# The API is these functions; the modules behind them have other names (training, evaluation, prediction), so that
# importing a module can never replace the function `gzmorph.train` with a module of the same name.
from .config import TrainConfig  # noqa: E402
from .errors import GzmorphError  # noqa: E402
from .training import train  # noqa: E402
from .evaluation import evaluate  # noqa: E402
from .prediction import predict  # noqa: E402
from .plots import plot_run as plot  # noqa: E402
from .runs import load_model  # noqa: E402
from .synth import make_synthetic as synth  # noqa: E402

__all__ = ["TrainConfig", "GzmorphError", "train", "evaluate", "predict", "plot", "load_model", "synth",
           "__version__"]
