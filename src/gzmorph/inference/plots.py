"""PNG figures of a run: learning curves (like the report's figures) and per-question RMSE against the baseline.
Galleries of galaxies are ``gallery.py``."""

from __future__ import annotations

import json
from pathlib import Path

from .. import runs, tree
from ..errors import BadRun


def _pyplot():
    """matplotlib's pyplot, imported on first use: it costs about a second, which `import gzmorph` (and every
    other command) should not pay."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(run: str | Path, out: str | Path) -> Path:
    """RMSE and loss per epoch, train vs valid, side by side."""
    plt = _pyplot()
    history = runs.read_metrics(Path(run))
    if not history:
        raise BadRun(f"{run}: metrics.csv has no epochs yet")
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "rmse", "RMSE"), (axes[1], "loss", "loss")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train")
        ax.plot(epochs, [r[f"valid_{key}"] for r in history], "s-", label="valid")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    baseline = _baseline_rmse(Path(run))
    if baseline is not None:
        axes[0].axhline(baseline, color="grey", ls="--", lw=1, label="train mean (valid)")
        axes[0].legend()
    cfg = runs.read_config(Path(run))
    fig.suptitle(f"{cfg.model} ({cfg.loss} loss, lr {cfg.lr}, batch {cfg.batch_size})")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def _baseline_rmse(run: Path) -> float | None:
    path = run / "eval-valid.json"
    if path.is_file():
        return json.loads(path.read_text())["baseline"]["rmse"]
    return None


def plot_question_rmse(eval_json: str | Path, out: str | Path) -> Path:
    """Per-question RMSE bars: the model beside the train-mean baseline."""
    plt = _pyplot()
    result = json.loads(Path(eval_json).read_text())
    keys = [f"Q{q.number}" for q in tree.QUESTIONS]
    model = [result["per_question"][k] for k in keys]
    base = [result["baseline"]["per_question"][k] for k in keys]
    x = range(len(keys))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.bar([i - 0.2 for i in x], model, width=0.4, label=f"{result['model']} (all: {result['rmse']:.4f})")
    ax.bar([i + 0.2 for i in x], base, width=0.4, color="lightgrey",
           label=f"train mean (all: {result['baseline']['rmse']:.4f})")
    ax.set_xticks(list(x))
    ax.set_xticklabels([f"{k}\n{q.name.replace('_', ' ')}" for k, q in zip(keys, tree.QUESTIONS)], fontsize=7)
    ax.set_ylabel("RMSE")
    ax.set_title(f"RMSE per question, {result['split']} split ({result['n_galaxies']} galaxies)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def plot_run(run: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Every figure the run has data for: learning curves, and per-question RMSE for each evaluated split."""
    run = runs.run_folder(run)
    runs.read_config(run)  # a clear error if this is not a run folder
    out_dir = Path(out_dir) if out_dir else run
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_learning_curves(run, out_dir / "learning_curves.png")]
    for eval_json in sorted(run.glob("eval-*.json")):
        split = eval_json.stem.split("-", 1)[1]
        written.append(plot_question_rmse(eval_json, out_dir / f"rmse_per_question_{split}.png"))
    return written
