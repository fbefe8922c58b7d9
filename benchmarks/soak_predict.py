"""Soak run: `gzmorph predict --skip-bad` over 20,000 images (the shared ones, repeated through a file list) with 1 %
corrupt files mixed in. It must finish, report every corrupt file as skipped, and keep its memory flat.

    python benchmarks/soak_predict.py                 # 20,000 images, 1 % corrupt, the default model (untrained)
    python benchmarks/soak_predict.py --n 100000 --run runs/gz

Memory is the resident set (VmRSS) of the predict process and its decode workers together, sampled every 0.2 s.
Writes benchmarks/results/soak_predict-<machine>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from machine import describe_machine, machine_tag  # noqa: E402


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MiB (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


def make_run(tmp: Path, model: str, data: str) -> Path:
    from gzmorph import runs
    from gzmorph.config import TrainConfig
    from gzmorph.models import create_model, resolve_recipe

    run = tmp / "run"
    run.mkdir()
    runs.write_config(run, resolve_recipe(TrainConfig(data=data, out=str(run), model=model)))
    runs.save_weights(run / runs.BEST, create_model(model))
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "galaxy-zoo"))
    p.add_argument("--n", type=int, default=20_000, help="images in the list")
    p.add_argument("--corrupt", type=float, default=0.01, help="fraction of corrupt files")
    p.add_argument("--run", help="a trained run folder (default: an untrained default model; speed and memory do "
                                 "not depend on the weights)")
    p.add_argument("--model", default="gznet")
    args = p.parse_args()
    data = Path(args.data)
    images = sorted((data / "images_training_rev1").glob("*.jpg")) + sorted((data / "images_test_rev1").glob("*.jpg"))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="gzmorph-soak-") as tmp:
        tmp = Path(tmp)
        run = Path(args.run) if args.run else make_run(tmp, args.model, args.data)
        n_bad = round(args.n * args.corrupt)
        bad_dir = tmp / "corrupt"
        bad_dir.mkdir()
        bad = []
        for k in range(n_bad):  # alternately truncated JPEGs and zero-byte files
            path = bad_dir / f"{900000 + k}.jpg"
            path.write_bytes(images[k % len(images)].read_bytes()[:500] if k % 2 == 0 else b"")
            bad.append(path)
        listing = [images[i % len(images)] for i in range(args.n - n_bad)] + bad
        listing = [listing[i] for i in rng.permutation(len(listing))]
        list_file = tmp / "images.txt"
        list_file.write_text("\n".join(map(str, listing)) + "\n")
        out = tmp / "submission.csv"
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "gzmorph.cli", "predict", str(run), str(list_file), "-o",
                                 str(out), "--skip-bad", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        samples = []
        while proc.poll() is None:
            samples.append((time.perf_counter() - started, tree_rss_mib(proc.pid)))
            time.sleep(0.2)
        stdout, stderr = proc.communicate()
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(f"predict failed ({proc.returncode}):\n{stderr[-2000:]}")
        meta = json.loads(Path(f"{out}.json").read_text())
        n_rows = sum(1 for _ in open(out)) - 1
    rss = np.array([m for _, m in samples if m > 0])
    quarter = len(rss) // 4
    record = {
        "benchmark": "soak_predict", "machine": describe_machine("cpu"), "n_listed": args.n, "n_corrupt": n_bad,
        "n_predicted": meta["n_predicted"], "n_skipped": meta["n_skipped"], "csv_rows": n_rows,
        "seconds": seconds, "img_per_s": meta["n_predicted"] / seconds, "peak_rss_mib": float(rss.max()),
        "rss_mib_by_quarter": [float(np.median(rss[i * quarter:(i + 1) * quarter])) for i in range(4)],
        "rss_samples": len(rss), "command": "python " + " ".join(sys.argv),
    }
    ok = record["n_skipped"] == n_bad and record["n_predicted"] == args.n - n_bad == n_rows
    print(f"{args.n} images listed, {n_bad} corrupt: predicted {record['n_predicted']}, skipped "
          f"{record['n_skipped']} ({'all accounted for' if ok else 'MISMATCH'}) in {seconds:.0f} s "
          f"({record['img_per_s']:.0f} img/s)")
    print(f"memory (process + workers): peak {record['peak_rss_mib']:.0f} MiB; median by quarter of the run "
          + ", ".join(f"{m:.0f}" for m in record["rss_mib_by_quarter"]) + " MiB")
    out_json = HERE / "results" / f"soak_predict-{machine_tag(record['machine'])}.json"
    out_json.parent.mkdir(exist_ok=True)
    out_json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out_json.relative_to(HERE.parent)}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
