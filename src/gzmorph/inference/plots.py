"""PNG figures of a run: learning curves (like the report's figures) and per-question RMSE against the baseline;
for a fine-tuned run, its columns' scores per epoch and, for each class column, the ROC curve and the confusion
matrix of its evaluations. Galleries of galaxies are ``gallery.py``."""

from __future__ import annotations

import json
import re
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


def _loss_name(cfg) -> str:
    task = runs.task_of(cfg)
    return task.loss_name(cfg.loss or "mse") if task else cfg.loss


_SCORE_NAMES = {"balanced_accuracy": "balanced accuracy", "auc": "ROC AUC", "rmse": "RMSE",
                "baseline_rmse": "RMSE of the train mean"}


def _task_scores(ax, cfg, history: list[dict]) -> None:
    """A fine-tuned run's held-out scores per epoch: balanced accuracy and ROC AUC of each class column (chance is
    0.5 for two classes), RMSE of each other column beside predicting the train mean."""
    epochs = [r["epoch"] for r in history]
    for col in runs.task_of(cfg).columns:
        keys = ("balanced_accuracy", "auc") if col.kind == "classes" else ("rmse", "baseline_rmse")
        for key in keys:
            values = [r.get(f"valid_{col.name}_{key}", float("nan")) for r in history]
            ax.plot(epochs, values, "--" if key == "baseline_rmse" else "o-", label=f"{col.name} {_SCORE_NAMES[key]}")
    if any(c.kind == "classes" for c in runs.task_of(cfg).columns):
        ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance (2 classes)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid score")
    ax.set_title("held-out scores per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_learning_curves(run: str | Path, out: str | Path) -> Path:
    """RMSE (a fine-tuned run: its columns' scores) and the loss per epoch, train vs valid, side by side."""
    plt = _pyplot()
    history = runs.read_metrics(Path(run))
    if not history:
        raise BadRun(f"{run}: metrics.csv has no epochs yet")
    cfg = runs.read_config(Path(run))
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    loss = f"{_loss_name(cfg)} loss"
    panels = ((axes[1], "loss", loss),) if cfg.task else ((axes[0], "rmse", "RMSE"), (axes[1], "loss", loss))
    if cfg.task:
        _task_scores(axes[0], cfg, history)
    for ax, key, label in panels:
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train")
        ax.plot(epochs, [r[f"valid_{key}"] for r in history], "s-", label="valid")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    baseline = None if cfg.task else _baseline_rmse(Path(run))
    if baseline is not None:
        axes[0].axhline(baseline, color="grey", ls="--", lw=1, label="train mean (valid)")
        axes[0].legend()
    fig.suptitle(f"{cfg.model} ({loss}, lr {cfg.lr}, batch {cfg.batch_size})")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def _baseline_rmse(run: Path) -> float | None:
    path = run / "eval-valid.json"
    if path.is_file():
        return json.loads(path.read_text()).get("baseline", {}).get("rmse")
    return None


def _file_part(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def plot_class_columns(eval_json: str | Path, out_dir: str | Path, suffix: str) -> list[Path]:
    """For each class column of a fine-tuned run's evaluation: its ROC curve(s) (one per class beyond two) and its
    confusion matrix, as roc_<column>_<suffix>.png and confusion_<column>_<suffix>.png."""
    plt = _pyplot()
    result = json.loads(Path(eval_json).read_text())
    where = f"{result['split']}, {result['n_galaxies']} galaxies"
    written = []
    for name, r in result["columns"].items():
        if r["kind"] != "classes" or not r["n"]:
            continue
        fig, ax = plt.subplots(figsize=(5, 5))
        for cls, curve in r["roc"].items():
            if curve.get("fpr"):
                ax.plot(curve["fpr"], curve["tpr"], "-", label=cls)
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="chance")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        auc = "n/a" if r["auc"] is None else f"{r['auc']:.3f}"  # None: a one-class sample (JSON has no NaN)
        ax.set_title(f"{name}: ROC ({'AUC' if len(r['classes']) == 2 else 'macro AUC'} {auc}; {where})", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(Path(out_dir) / f"roc_{_file_part(name)}_{suffix}.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

        matrix = r["confusion_matrix"]
        k = len(r["classes"])
        fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
        ax.imshow(matrix, cmap="Blues")
        top = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, n in enumerate(row):
                ax.text(j, i, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(r["classes"], rotation=30, ha="right")
        ax.set_yticklabels(r["classes"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name}: accuracy {r['accuracy']:.3f}, balanced {r['balanced_accuracy']:.3f}\n({where})",
                     fontsize=9)
        fig.tight_layout()
        written.append(Path(out_dir) / f"confusion_{_file_part(name)}_{suffix}.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


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
    """Every figure the run has data for: learning curves, and per-question RMSE for each evaluated split (for a
    fine-tuned run, the ROC curves and confusion matrices of its class columns). They go to ``out_dir``, else the
    run folder, else for the packaged model ./gznet-gz2 (``evaluate.results_folder``), whose evaluations are
    read there too."""
    from .evaluate import results_folder

    run = runs.run_folder(run)
    runs.read_config(run)  # a clear error if this is not a run folder
    out_dir = results_folder(run, out_dir)
    written = [plot_learning_curves(run, out_dir / "learning_curves.png")]
    evaluations = {p.name: p for folder in (run, out_dir) for p in sorted(folder.glob("eval-*.json"))}
    for name, eval_json in sorted(evaluations.items()):
        split = eval_json.stem.split("-", 1)[1]
        if "columns" in json.loads(eval_json.read_text()):
            written += plot_class_columns(eval_json, out_dir, split)
        else:
            written.append(plot_question_rmse(eval_json, out_dir / f"rmse_per_question_{split}.png"))
    return written
