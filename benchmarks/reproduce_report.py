"""Reproduce the student report: `seed-cnn` trained with its recipe (BCE, Adam 1e-3, batch 32, 10 epochs, flips /
90-degree rotations / shifts / rescaling) on the shared train split, scored on the test split beside the mean.

    python benchmarks/reproduce_report.py                       # the full recipe
    python benchmarks/reproduce_report.py --epochs 2            # a shortened run (say so when quoting it)

Prints one table and writes benchmarks/results/reproduce_report-<machine>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gzmorph  # noqa: E402
from gzmorph import runs, tree  # noqa: E402
from gzmorph.precision import pick_device  # noqa: E402
from machine import describe_machine, machine_tag  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "galaxy-zoo"))
    p.add_argument("--epochs", type=int, default=10, help="the report trained 10")
    p.add_argument("--limit", type=int, help="at most N galaxies per split (shortened runs)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="run folder (default: a temporary one)")
    args = p.parse_args()

    device = str(pick_device(args.device))
    run = Path(args.out or tempfile.mkdtemp(prefix="gzmorph-report-"))
    cfg = gzmorph.TrainConfig(data=args.data, out=str(run), model="seed-cnn", epochs=args.epochs, loss="bce",
                              lr=1e-3, batch_size=32, head="sigmoid", augment="report", use_partial=False,
                              limit=args.limit, device=args.device)
    gzmorph.train(cfg, progress=False)
    # Wall-clock of the epochs themselves (decoding, cached after the first run, is timed by throughput benchmarks).
    history = runs.read_metrics(run)
    train_seconds = sum(r["seconds"] for r in history)
    n_train = 5655 if args.limit is None else min(args.limit, 5655)
    started = time.perf_counter()
    result = gzmorph.evaluate(run, args.data, "test", device=args.device, progress=False)
    eval_seconds = time.perf_counter() - started
    machine = describe_machine(device)
    record = {
        "benchmark": "reproduce_report", "model": "seed-cnn", "recipe": "report: bce, adam 1e-3, batch 32, "
        "sigmoid head, flips/90-degree rotations/shifts/rescaling", "epochs": args.epochs, "limit": args.limit,
        "n_train": n_train, "machine": machine, "train_seconds": train_seconds,
        "train_images_per_second": n_train * args.epochs / train_seconds,
        "eval_seconds": eval_seconds, "test": result, "history": history,
        "command": "python " + " ".join(sys.argv),
    }
    out = HERE / "results" / f"reproduce_report-{machine_tag(machine)}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")

    print(f"seed-cnn, report recipe, {args.epochs} epoch(s) on {n_train} train galaxies; test split "
          f"({result['n_galaxies']} galaxies)")
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, device {device}")
    print(f"{'':5s} {'seed-cnn':>9s} {'mean':>8s}")
    print(f"{'all':5s} {result['rmse']:9.4f} {result['baseline']['rmse']:8.4f}")
    for q in tree.QUESTIONS:
        k = f"Q{q.number}"
        print(f"{k:5s} {result['per_question'][k]:9.4f} {result['baseline']['per_question'][k]:8.4f}")
    print(f"train wall-clock {train_seconds:.0f} s ({record['train_images_per_second']:.1f} img/s), "
          f"best epoch {min(history, key=lambda r: r['valid_rmse'])['epoch']:.0f} (valid RMSE "
          f"{min(r['valid_rmse'] for r in history):.4f})")
    print(f"wrote {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
