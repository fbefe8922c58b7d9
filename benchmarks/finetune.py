"""What transfer buys: fine-tuning a network pretrained without a question against the same network from scratch,
on N = 100, 300, 1,000 and all labelled train galaxies of a yes/no task made from that question.

    python benchmarks/finetune.py          # needs benchmarks/runs/finetune/pretrain-no-bar (made first if absent)

The pretrained network: gznet, trained on the train split (full and partial galaxies) with every answer of Q3
("is there a bar?") masked everywhere, so it never saw a bar label (`--mask-question bar`). The task: "bar" or
"no_bar" for the galaxies that enough volunteers were asked Q3 about (Class3.1 + Class3.2 >= ELIGIBLE, i.e. its
answers hold that share of all votes), the majority of Q3's votes deciding. Each N draws its galaxies (seeded) from
the train split; every run selects its epoch on the same eligible valid galaxies; all are scored on the eligible
test galaxies (accuracy and ROC AUC of P(bar)). Writes benchmarks/results/finetune-<machine>.json and a PNG.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import gzmorph  # noqa: E402
from gzmorph import runs, tree  # noqa: E402
from gzmorph.data.catalogue import read_catalogue  # noqa: E402
from gzmorph.data.splits import read_splits  # noqa: E402
from machine import describe_machine, machine_tag  # noqa: E402

ELIGIBLE = 0.3  # Q3's answers must hold at least this share of the votes: enough volunteers saw the question
SIZES = (100, 300, 1000, None)  # None: every eligible train galaxy
PRETRAIN = dict(model="gznet", epochs=16, mask_questions=["bar"])  # 16: fits a 2-core session beside 8 fine-tunes


def bar_task(data: Path) -> dict[str, dict[int, str]]:
    """split -> {GalaxyID: "bar" | "no_bar"} for the eligible galaxies of the full catalogue."""
    cat = read_catalogue(data / "training_solutions_rev1.csv", require_all=True)
    splits = read_splits(data / "splits.csv")
    yes, no = cat.labels[:, tree.answer("bar_yes").index], cat.labels[:, tree.answer("bar_no").index]
    out: dict[str, dict[int, str]] = {"train": {}, "valid": {}, "test": {}}
    for gid, y, n in zip(cat.ids, yes, no):
        if y + n >= ELIGIBLE:
            out[splits[int(gid)]][int(gid)] = "bar" if y >= n else "no_bar"
    return out


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """The probability that a random positive scores above a random negative (ties count half)."""
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    values, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.bincount(inverse, weights=ranks) / counts)[inverse]
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def write_labels(path: Path, train: dict[int, str], valid: dict[int, str]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["GalaxyID", "bar", "split"])
        w.writerows([g, label, "train"] for g, label in sorted(train.items()))
        w.writerows([g, label, "valid"] for g, label in sorted(valid.items()))
    return path


def score(run: Path, data: Path, test: dict[int, str], work: Path) -> dict:
    listing = work / "test-images.txt"
    listing.write_text("\n".join(str(data / "images_training_rev1" / f"{g}.jpg") for g in sorted(test)) + "\n")
    out = work / f"{run.name}-test.csv"
    gzmorph.predict(run, listing, out, progress=False)
    rows = {int(r["GalaxyID"]): float(r["bar=bar"]) for r in csv.DictReader(open(out, newline=""))}
    ids = sorted(test)
    p = np.array([rows[g] for g in ids])
    truth = np.array([test[g] == "bar" for g in ids])
    return {"accuracy": float(((p >= 0.5) == truth).mean()), "roc_auc": roc_auc(p, truth), "n_test": len(ids),
            "test_bar_fraction": float(truth.mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "galaxy-zoo"))
    p.add_argument("--runs", default=str(HERE / "runs" / "finetune"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data, work = Path(args.data), Path(args.runs)
    work.mkdir(parents=True, exist_ok=True)
    pretrain = work / "pretrain-no-bar"
    if not (pretrain / runs.CHECKPOINT).exists() or len(runs.read_metrics(pretrain)) < PRETRAIN["epochs"]:
        gzmorph.train(gzmorph.TrainConfig(data=str(data), out=str(pretrain), **PRETRAIN),
                      resume=(pretrain / runs.CHECKPOINT).exists(), progress=False)
    task = bar_task(data)
    rng = np.random.default_rng(args.seed)
    pool = sorted(task["train"])
    rows = []
    for n in SIZES:
        chosen = pool if n is None else sorted(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist())
        labels = write_labels(work / f"labels-{n or 'all'}.csv", {g: task["train"][g] for g in chosen}, task["valid"])
        for arm in ("finetuned", "scratch"):
            run = work / f"{arm}-{n or 'all'}"
            if not (run / runs.CHECKPOINT).exists():
                started = time.perf_counter()
                extra = {"init": str(pretrain)} if arm == "finetuned" else \
                    {"model": "gznet", "head_epochs": 0, "backbone_lr": 1.0, "lr": 2e-3}  # gznet's own recipe
                gzmorph.train(gzmorph.TrainConfig(data="", labels=str(labels), images=str(data / "images_training_rev1"),
                                                  out=str(run), seed=args.seed, **extra), progress=False)
                seconds = time.perf_counter() - started
            else:
                seconds = sum(r["seconds"] for r in runs.read_metrics(run))
            result = {"n_train": len(chosen), "arm": arm, "train_seconds": seconds,
                      "epochs": len(runs.read_metrics(run)), **score(run, data, task["test"], work)}
            rows.append(result)
            print(f"N={len(chosen):5d} {arm:9s}: accuracy {result['accuracy']:.3f}, ROC AUC {result['roc_auc']:.3f} "
                  f"({result['epochs']} epochs, {seconds:.0f} s)", flush=True)
    machine = describe_machine()
    out = HERE / "results" / f"finetune-{machine_tag(machine)}.json"
    base = {r["n_train"]: r for r in rows if r["arm"] == "scratch"}
    fine = {r["n_train"]: r for r in rows if r["arm"] == "finetuned"}
    smallest = min(fine)
    goal = fine[smallest]["roc_auc"] > base.get(1000, base[max(base)])["roc_auc"]
    out.write_text(json.dumps({"benchmark": "finetune", "machine": machine, "task": f"bar vs no_bar, Q3 share >= "
                               f"{ELIGIBLE}", "pretrain": {**PRETRAIN, "run": str(pretrain)},
                               "eligible": {k: len(v) for k, v in task.items()}, "rows": rows,
                               "goal_finetuned_100_beats_scratch_1000": goal,
                               "command": "python benchmarks/finetune.py"}, indent=2) + "\n")
    plot(rows, HERE / "results" / f"finetune-{machine_tag(machine)}.png")
    print(f"fine-tuned on {smallest} beats from scratch on 1000 (ROC AUC): {goal}")
    print(f"wrote {out.relative_to(HERE.parent)}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("roc_auc", "accuracy")):
        for arm, style in (("finetuned", "o-"), ("scratch", "s--")):
            pts = sorted((r["n_train"], r[key]) for r in rows if r["arm"] == arm)
            ax.plot([n for n, _ in pts], [v for _, v in pts], style, label=arm)
        ax.set_xscale("log")
        ax.set_xlabel("labelled train galaxies")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("bar / no bar on the test split: fine-tuned from a network that never saw Q3, vs from scratch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
