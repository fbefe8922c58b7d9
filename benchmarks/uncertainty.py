"""How sure is each answer? The spread of each answer over test-time views against its real error, on the test split.

    python benchmarks/uncertainty.py                   # the model inside gzmorph, 8 views
    python benchmarks/uncertainty.py --run RUN --tta 32

For every test galaxy and answer: the standard deviation of the model's answer over the views (`--spread`) and its
absolute error against the volunteers' fraction. Reported, whatever it shows: Spearman's rank correlation of the two
over all known cells, per answer and per galaxy (its mean spread against its RMSE), and the RMSE of the galaxies in
each tenth of mean spread, most certain first. MC dropout is not measured: gznet's only dropout is 0.1 before its
last layer, too little for its samples to differ much. Writes benchmarks/results/uncertainty-<machine>.json + PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from gzmorph.inference.evaluate import predict_split  # noqa: E402
from gzmorph.metrics import rmse, uncertainty_report  # noqa: E402
from machine import describe_machine, machine_tag  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "galaxy-zoo"))
    p.add_argument("--run", default=None, help="default: the model inside gzmorph")
    p.add_argument("--tta", type=int, default=8)
    args = p.parse_args()
    done = predict_split(args.run, args.data, "test", tta=args.tta, spread=True, progress=False)
    cat, pred, spread = done.labelled.catalogue, done.pred, done.spread
    report = uncertainty_report(pred, spread, cat.labels, cat.mask)
    galaxy_spread = np.where(cat.mask, spread, 0).sum(1) / np.maximum(cat.mask.sum(1), 1)
    order = np.argsort(galaxy_spread, kind="stable")
    deciles = [rmse(pred[part], cat.labels[part], cat.mask[part]) for part in np.array_split(order, 10)]
    report["rmse_by_spread_decile"] = deciles
    machine = describe_machine()
    out = HERE / "results" / f"uncertainty-{machine_tag(machine)}.json"
    out.write_text(json.dumps({"benchmark": "uncertainty", "machine": machine, "run": str(done.loaded.weights),
                               "weights_sha256": done.loaded.sha256, "tta": args.tta, "n_test": len(cat), **report,
                               "command": "python " + " ".join(sys.argv)}, indent=2) + "\n")
    plot(deciles, report, out.with_suffix(".png"), args.tta)
    print(f"Spearman(spread, |error|): {report['spearman_all']:.3f} over all known answers, "
          f"{report['spearman_galaxy']:.3f} per galaxy; RMSE most certain tenth {report['rmse_most_certain_tenth']:.4f}, "
          f"least certain tenth {report['rmse_least_certain_tenth']:.4f} (all {report['rmse_all']:.4f})")
    print(f"wrote {out.relative_to(HERE.parent)}")


def plot(deciles: list[float], report: dict, path: Path, tta: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(range(1, 11), deciles, color="steelblue")
    ax.axhline(report["rmse_all"], color="grey", ls="--", lw=1, label=f"all: {report['rmse_all']:.4f}")
    ax.set_xlabel(f"tenth of the test galaxies by mean spread over {tta} views (1 = most certain)")
    ax.set_ylabel("RMSE over the 37 answers")
    ax.set_title(f"Spearman(spread, |error|) {report['spearman_all']:.2f} per answer cell, "
                 f"{report['spearman_galaxy']:.2f} per galaxy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
