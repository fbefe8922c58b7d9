"""Learning curve: test RMSE of the same model and recipe trained on fractions of the training galaxies.

This is the evidence for what limits accuracy on the shared data. Each fraction keeps the number of optimiser
steps of the full run (fewer galaxies, proportionally more epochs), so a worse score at a smaller fraction is
caused by the data, not by less training. A power law fitted through the points extrapolates to the 61,578
galaxies of the full Kaggle set (an estimate, printed as such).

    python benchmarks/data_scaling.py                        # gznet, 24 epochs at 100%: fractions 1/4, 1/2, 1
    python benchmarks/data_scaling.py --fractions 0.5 1 --full-epochs 10

The valid and test splits are never reduced. A fraction draws that share of the train split and of the partially
labelled galaxies (seeded), written as a derived Kaggle-layout folder under --runs whose image folders are
symbolic links to the real ones. The 100% point is the accuracy benchmark's gznet/cpu-15min run
(--full-run), which has the same recipe. Finished runs are scored again, not
retrained. Writes benchmarks/results/data_scaling-<machine>.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gzmorph  # noqa: E402
from gzmorph import runs  # noqa: E402
from gzmorph.precision import pick_device  # noqa: E402
from machine import describe_machine, machine_tag  # noqa: E402

FULL_KAGGLE = 61578


def subset_folder(data: Path, fraction: float, dest: Path, seed: int = 0) -> Path:
    """A Kaggle-layout folder holding ``fraction`` of the train split and of the partial catalogue."""
    rng = np.random.default_rng(seed)
    with open(data / "splits.csv", newline="") as f:
        splits = list(csv.reader(f))
    train = [row[0] for row in splits[1:] if row[1] == "train"]
    keep = set(rng.choice(train, size=round(len(train) * fraction), replace=False).tolist())
    keep |= {row[0] for row in splits[1:] if row[1] != "train"}  # valid and test stay whole
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("images_training_rev1", "images_test_rev1"):
        link = dest / name
        if not link.exists() and (data / name).exists():
            link.symlink_to((data / name).resolve())
    _filter_csv(data / "splits.csv", dest / "splits.csv", lambda gid: gid in keep)
    _filter_csv(data / "training_solutions_rev1.csv", dest / "training_solutions_rev1.csv", lambda gid: gid in keep)
    partial = data / "training_solutions_partial.csv"
    if partial.exists():
        with open(partial, newline="") as f:
            ids = [row[0] for row in list(csv.reader(f))[1:]]
        chosen = set(rng.choice(ids, size=round(len(ids) * fraction), replace=False).tolist())
        _filter_csv(partial, dest / partial.name, lambda gid: gid in chosen)
    return dest


def _filter_csv(src: Path, dest: Path, keep) -> None:
    with open(src, newline="") as f:
        rows = list(csv.reader(f))
    with open(dest, "w", newline="") as f:
        csv.writer(f).writerows([rows[0]] + [r for r in rows[1:] if keep(r[0])])


def run_point(fraction: float, args) -> dict:
    epochs = math.ceil(args.full_epochs / fraction)  # the same number of optimiser steps as the full run
    if fraction == 1 and args.full_run:
        run = Path(args.full_run)  # the accuracy benchmark's run of the same recipe: no need to train it twice
        saved = runs.read_config(run)
        if (saved.model, saved.epochs) != (args.model, epochs):
            sys.exit(f"{run} trained {saved.model} for {saved.epochs} epochs, not {args.model} for {epochs}; "
                     f"pass --full-run '' to train the 100% point here")
        data = Path(args.data)
    else:
        run = Path(args.runs) / "data_scaling" / f"{args.model}__{fraction:g}"
        data = Path(args.data) if fraction == 1 else subset_folder(Path(args.data), fraction,
                                                                   run.parent / f"data-{fraction:g}")
    cfg = gzmorph.TrainConfig(data=str(data), out=str(run), model=args.model, epochs=epochs, device=args.device)
    done = (run / runs.CHECKPOINT).exists() and len(runs.read_metrics(run)) >= epochs
    if not done:
        gzmorph.train(cfg, resume=(run / runs.CHECKPOINT).exists(), progress=not args.quiet)
    history = runs.read_metrics(run)
    result = gzmorph.evaluate(run, args.data, "test", device=args.device, tta=8, progress=False, write=False)
    return {"fraction": fraction, "n_train_full": None, "epochs": epochs,
            "train_seconds": sum(r["seconds"] for r in history),
            "valid_rmse": min(r["valid_rmse"] for r in history), "test_rmse_tta8": result["rmse"],
            "per_question": result["per_question"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "galaxy-zoo"))
    p.add_argument("--model", default="gznet")
    p.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    p.add_argument("--full-epochs", type=int, default=24, help="epochs at fraction 1 (the cpu-15min recipe)")
    p.add_argument("--runs", default=str(HERE / "runs"))
    p.add_argument("--full-run", default=str(HERE / "runs" / "gznet__cpu-15min"),
                   help="an existing run of the same model and epochs to use as the 100%% point ('' = train it)")
    p.add_argument("--device", default="auto")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args()
    if any(not 0 < f <= 1 for f in args.fractions):
        sys.exit("--fractions must lie in (0, 1]")
    n_full = _count_train(Path(args.data))
    points = []
    for fraction in sorted(args.fractions):
        point = run_point(fraction, args)
        point["n_train_full"] = round(n_full[0] * fraction)
        point["n_train_partial"] = round(n_full[1] * fraction)
        points.append(point)
    fit = _fit_power_law([p["n_train_full"] + p["n_train_partial"] for p in points],
                         [p["test_rmse_tta8"] for p in points]) if len(points) >= 2 else None
    print(f"{args.model}, {args.full_epochs} epochs at 100% (same optimiser steps at every fraction), test RMSE "
          f"with 8-view TTA")
    print(f"{'fraction':>8s} {'train':>6s} {'partial':>7s} {'epochs':>6s} {'minutes':>7s} {'valid':>7s} {'test':>7s}")
    for pt in points:
        print(f"{pt['fraction']:8g} {pt['n_train_full']:6d} {pt['n_train_partial']:7d} {pt['epochs']:6d} "
              f"{pt['train_seconds'] / 60:7.1f} {pt['valid_rmse']:7.4f} {pt['test_rmse_tta8']:7.4f}")
    if fit:
        print(f"fit: RMSE = {fit['a']:.4f} * N^-{fit['b']:.4f}; extrapolated to N = {FULL_KAGGLE}: "
              f"{fit['at_full_kaggle']:.4f}; N needed for 0.085: {fit['n_for_0.085']:,.0f}")
    machine = describe_machine(str(pick_device(args.device)))
    out = HERE / "results" / f"data_scaling-{machine_tag(machine)}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"benchmark": "data_scaling", "machine": machine, "model": args.model,
                               "full_epochs": args.full_epochs, "points": points, "power_law_fit": fit,
                               "command": "python benchmarks/data_scaling.py " + " ".join(sys.argv[1:])},
                              indent=2) + "\n")
    print(f"wrote {out.relative_to(HERE.parent)}")


def _count_train(data: Path) -> tuple[int, int]:
    with open(data / "splits.csv", newline="") as f:
        n_train = sum(1 for row in csv.reader(f) if row[1:2] == ["train"])
    partial = data / "training_solutions_partial.csv"
    n_partial = sum(1 for _ in open(partial)) - 1 if partial.exists() else 0
    return n_train, n_partial


def _fit_power_law(n: list[int], rmse: list[float]) -> dict:
    """Least squares on log RMSE = log a - b log N; with an irreducible floor this over-promises at large N."""
    b, log_a = np.polyfit(np.log(n), np.log(rmse), 1)
    a, b = float(np.exp(log_a)), float(-b)
    return {"a": a, "b": b, "at_full_kaggle": a * FULL_KAGGLE ** -b,
            "n_for_0.085": (a / 0.085) ** (1 / b) if b > 0 else math.inf}


if __name__ == "__main__":
    main()
