"""How sure is each answer? The spread of each answer over test-time views against its real error, on the test split,
and how honest the calibrated intervals are there.

    python benchmarks/uncertainty.py                   # the model inside gzmorph, 8 views, its shipped calibration
    python benchmarks/uncertainty.py --package         # first recalibrate it on the valid split and ship that
    python benchmarks/uncertainty.py --run RUN --tta 32 --calibrate   # a run, calibrated on its valid split first

For every test galaxy and answer: the standard deviation of the model's answer over the views (`--spread`) and its
absolute error against the volunteers' fraction. Reported, whatever it shows: Spearman's rank correlation of the two
over all known cells, per answer and per galaxy (its mean spread against its RMSE), and the RMSE of the galaxies in
each tenth of mean spread, most certain first. MC dropout is not measured: gznet's only dropout is 0.1 before its
last layer, too little for its samples to differ much.

Intervals (`gzmorph.inference.intervals`, calibrated on galaxies other than the test split's): for levels 0.5, 0.8,
0.9 and 0.95, the empirical coverage on the test split per answer, per question and overall, and the mean width
beside the narrowest constant-width interval per answer reaching the same coverage on the same test galaxies (an
oracle baseline: it is tuned on the test split, which favours it); also the coverage lost by clipping each interval
to the parent's predicted value instead of to the parent's upper bound. Writes
benchmarks/results/uncertainty-<machine>.json, its PNG and a reliability plot (-reliability.png: nominal against
empirical coverage, per question).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from gzmorph import tree  # noqa: E402
from gzmorph.inference.calibration import calibrate_run, calibration_for, to_json  # noqa: E402
from gzmorph.inference.evaluate import predict_split  # noqa: E402
from gzmorph.inference.intervals import intervals  # noqa: E402
from gzmorph.metrics import rmse, uncertainty_report  # noqa: E402
from machine import describe_machine, machine_tag  # noqa: E402

LEVELS = (0.5, 0.8, 0.9, 0.95)
RELIABILITY_LEVELS = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2)) + (0.98,)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "galaxy-zoo"))
    p.add_argument("--run", default=None, help="default: the model inside gzmorph")
    p.add_argument("--tta", type=int, default=8)
    p.add_argument("--calibrate", action="store_true", help="first calibrate the run on the valid split of --data "
                   "(RUN/calibration.json); default: use the calibration it has")
    p.add_argument("--package", action="store_true", help="calibrate the model inside gzmorph on the valid split and "
                   "write the calibration it ships (src/gzmorph/pretrained/gznet-gz2.calibration.json)")
    args = p.parse_args()
    if args.package and args.run is not None:
        p.error("--package calibrates the model inside gzmorph: leave out --run")
    if args.calibrate or args.package:
        cal = calibrate_run(args.run, args.data, split="valid", tta=args.tta, progress=False, write=False)
        if args.package:
            write_packaged(cal)
    done = predict_split(args.run, args.data, "test", tta=args.tta, spread=True, progress=False)
    cat, pred, spread = done.labelled.catalogue, done.pred, done.spread
    report = uncertainty_report(pred, spread, cat.labels, cat.mask)
    galaxy_spread = np.where(cat.mask, spread, 0).sum(1) / np.maximum(cat.mask.sum(1), 1)
    order = np.argsort(galaxy_spread, kind="stable")
    deciles = [rmse(pred[part], cat.labels[part], cat.mask[part]) for part in np.array_split(order, 10)]
    report["rmse_by_spread_decile"] = deciles
    cal = calibration_for(args.run, done.loaded, args.tta)  # refuses a calibration of other weights or views
    report["intervals"] = interval_report(cal, pred, spread, cat.labels)
    machine = describe_machine()
    out = HERE / "results" / f"uncertainty-{machine_tag(machine)}.json"
    out.write_text(json.dumps({"benchmark": "uncertainty", "machine": machine, "run": str(done.loaded.weights),
                               "weights_sha256": done.loaded.sha256, "tta": args.tta, "n_test": len(cat), **report,
                               "command": "python " + " ".join(sys.argv)}, indent=2) + "\n")
    plot(deciles, report, out.with_suffix(".png"), args.tta)
    plot_reliability(report["intervals"], out.with_name(out.stem + "-reliability.png"))
    if args.package:  # the card says what the shipped calibration is and how it measured
        from gzmorph.pretrained.package import record_calibration

        record_calibration(report["intervals"]["levels"], "python benchmarks/uncertainty.py --package")
    print(format_intervals(report["intervals"]))
    print(f"Spearman(spread, |error|): {report['spearman_all']:.3f} over all known answers, "
          f"{report['spearman_galaxy']:.3f} per galaxy; RMSE most certain tenth {report['rmse_most_certain_tenth']:.4f}, "
          f"least certain tenth {report['rmse_least_certain_tenth']:.4f} (all {report['rmse_all']:.4f})")
    print(f"wrote {out.relative_to(HERE.parent)}")


def write_packaged(cal) -> None:
    """Ship ``cal`` (of the model inside gzmorph) beside its weights, where it is read in place; it records the
    SHA-256 of the file that ships (what load_model reports for it)."""
    from gzmorph import pretrained

    if cal.weights_sha256 != pretrained.card()["sha256"]:
        raise SystemExit(f"the calibration is of weights {cal.weights_sha256[:16]}..., not of the packaged file")
    pretrained.CALIBRATION.write_text(to_json(cal, {"model": pretrained.NAME}))
    print(f"wrote {pretrained.CALIBRATION.relative_to(HERE.parent)} ({pretrained.CALIBRATION.stat().st_size:,} "
          f"bytes, {cal.n_galaxies} valid galaxies)")


def _coverage(lower: np.ndarray, upper: np.ndarray, labels: np.ndarray) -> np.ndarray:
    # Kaggle's labels are rounded to 6 decimals: a bound within that of the label holds it.
    return (labels >= lower - 1e-6) & (labels <= upper + 1e-6)


def constant_width(pred: np.ndarray, labels: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 37) widths and hits of the narrowest interval pred -/+ h (h constant per answer, clipped to the tree as
    the calibrated ones are) whose test coverage reaches ``target`` (37,) for each answer: the oracle baseline."""
    from gzmorph.inference.intervals import clip_to_tree

    residual = np.abs(labels - pred)
    h = np.array([np.quantile(residual[:, j], min(target[j], 1.0), method="higher") for j in range(tree.N_OUTPUTS)])
    lower, upper = clip_to_tree(pred - h, pred + h)
    return upper - lower, _coverage(lower, upper, labels)


def interval_report(cal, pred: np.ndarray, spread: np.ndarray, labels: np.ndarray) -> dict:
    by_level = {}
    for level in LEVELS:
        lower, upper = intervals(cal, pred, spread, level)
        hit = _coverage(lower, upper, labels)
        per_answer = hit.mean(0)
        width = upper - lower
        const, const_hit = constant_width(pred, labels, per_answer)
        lo_v, up_v = intervals(cal, pred, spread, level, cap="parent_value")
        by_level[str(level)] = {
            "coverage": float(hit.mean()),
            "coverage_per_question": {f"Q{q.number}": float(hit[:, q.slice].mean()) for q in tree.QUESTIONS},
            "coverage_per_answer": dict(zip(tree.COLUMNS, map(float, per_answer))),
            "worst_question_gap": float(max(abs(hit[:, q.slice].mean() - level) for q in tree.QUESTIONS)),
            "mean_width": float(width.mean()),
            "mean_width_constant_same_coverage": float(const.mean()),
            "coverage_constant": float(const_hit.mean()),
            "mean_width_per_question": {f"Q{q.number}": float(width[:, q.slice].mean()) for q in tree.QUESTIONS},
            "mean_width_constant_per_question": {f"Q{q.number}": float(const[:, q.slice].mean())
                                                 for q in tree.QUESTIONS},
            "clip_to_predicted_parent": {"coverage": float(_coverage(lo_v, up_v, labels).mean()),
                                         "mean_width": float((up_v - lo_v).mean())},
        }
    reliability = {}
    for level in RELIABILITY_LEVELS:
        hit = _coverage(*intervals(cal, pred, spread, float(level)), labels)
        reliability[str(level)] = {"all": float(hit.mean()),
                                   **{f"Q{q.number}": float(hit[:, q.slice].mean()) for q in tree.QUESTIONS}}
    return {"calibration": {"data": cal.data, "n_galaxies": cal.n_galaxies, "tta": cal.tta,
                            "eps": dict(zip(tree.COLUMNS, map(float, cal.eps)))},
            "levels": by_level, "reliability": reliability}


def format_intervals(rep: dict) -> str:
    source = rep["calibration"]["data"].get("split", "a file")
    lines = [f"calibrated on {rep['calibration']['n_galaxies']} galaxies ({source}); test coverage per question and "
             f"overall, mean width beside constant width of the same coverage",
             f"{'level':>6s} " + " ".join(f"{'Q' + str(q.number):>6s}" for q in tree.QUESTIONS)
             + f" {'all':>6s} {'width':>7s} {'const':>7s} {'parent-value clip':>18s}"]
    for level, r in rep["levels"].items():
        clip = r["clip_to_predicted_parent"]
        lines.append(f"{level:>6s} " + " ".join(f"{v:6.3f}" for v in r["coverage_per_question"].values())
                     + f" {r['coverage']:6.3f} {r['mean_width']:7.4f} {r['mean_width_constant_same_coverage']:7.4f}"
                     + f" {clip['coverage']:8.3f} {clip['mean_width']:8.4f}")
    return "\n".join(lines)


def plot_reliability(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [float(k) for k in rep["reliability"]]
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], color="black", lw=1, ls="--", label="ideal")
    ax.fill_between([0, 1], [-0.03, 0.97], [0.03, 1.03], color="grey", alpha=0.15, label="±3 points")
    colours = plt.cm.tab20(np.linspace(0, 1, len(tree.QUESTIONS)))
    for q, colour in zip(tree.QUESTIONS, colours):
        ax.plot(levels, [rep["reliability"][k][f"Q{q.number}"] for k in rep["reliability"]], color=colour, lw=1,
                marker=".", label=f"Q{q.number} {q.name}")
    ax.plot(levels, [rep["reliability"][k]["all"] for k in rep["reliability"]], color="black", lw=2, label="all")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal level of the interval")
    ax.set_ylabel("empirical coverage on the test split")
    ax.set_title(f"Calibrated intervals, calibrated on {rep['calibration']['n_galaxies']} other galaxies")
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
