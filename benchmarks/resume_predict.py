"""A long `gzmorph predict` killed with SIGKILL at about half, then run again: does it finish the job, is the file
the same as an uninterrupted run's, and what share of the whole run's time does the second half take?

    python benchmarks/resume_predict.py                 # 20,000 real JPEGs (the shared ones, repeated), packaged model
    python benchmarks/resume_predict.py --n 100000 --kill-at 0.9

The images are the shared labelled and test JPEGs listed repeatedly under new names (hard links in a temporary
folder). Writes benchmarks/results/resume_predict-<machine>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from machine import describe_machine, machine_tag  # noqa: E402

from gzmorph.inference.journal import partial_path  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "galaxy-zoo"))
    p.add_argument("--n", type=int, default=20_000, help="images")
    p.add_argument("--kill-at", type=float, default=0.5, help="the share of the images done when it is killed")
    p.add_argument("--tta", type=int, default=1)
    args = p.parse_args()
    data = Path(args.data)
    sources = sorted((data / "images_training_rev1").glob("*.jpg")) + sorted((data / "images_test_rev1").glob("*.jpg"))
    if not sources:
        sys.exit(f"no JPEGs under {data}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = tmp / "images"
        images.mkdir()
        for i in range(args.n):
            os.link(sources[i % len(sources)], images / f"{10_000_000 + i}.jpg")
        command = [sys.executable, "-m", "gzmorph", "predict", str(images), "-q", "--tta", str(args.tta)]

        started = time.perf_counter()
        subprocess.run([*command, "-o", str(tmp / "whole.csv")], check=True)
        whole_seconds = time.perf_counter() - started

        out = tmp / "killed.csv"
        journal = Path(f"{partial_path(out)}.json")
        started = time.perf_counter()
        proc = subprocess.Popen([*command, "-o", str(out)])
        while proc.poll() is None:
            try:
                if json.loads(journal.read_text())["done"] >= args.kill_at * args.n:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_seconds = time.perf_counter() - started
        done = json.loads(journal.read_text())["done"]

        started = time.perf_counter()
        subprocess.run([*command, "-o", str(out)], check=True)
        resumed_seconds = time.perf_counter() - started
        identical = out.read_bytes() == (tmp / "whole.csv").read_bytes()

    machine = describe_machine()
    result = {"machine": machine, "n_images": args.n, "tta": args.tta, "command": " ".join(sys.argv),
              "uninterrupted_seconds": whole_seconds, "killed_after_seconds": killed_seconds,
              "done_when_killed": done, "resumed_seconds": resumed_seconds,
              "resumed_share_of_uninterrupted": resumed_seconds / whole_seconds,
              "remaining_share_of_images": (args.n - done) / args.n, "byte_identical": identical}
    print(f"{'uninterrupted':>24s}  {whole_seconds:7.1f} s  ({args.n / whole_seconds:.0f} img/s)")
    print(f"{'killed (SIGKILL) after':>24s}  {killed_seconds:7.1f} s  ({done} of {args.n} images recorded done)")
    print(f"{'resumed':>24s}  {resumed_seconds:7.1f} s  = {resumed_seconds / whole_seconds:.2f} of uninterrupted, "
          f"for {(args.n - done) / args.n:.2f} of the images")
    print(f"{'final CSV':>24s}  {'byte-identical' if identical else 'DIFFERENT'} to the uninterrupted run's")
    target = HERE / "results" / f"resume_predict-{machine_tag(machine)}.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {target}")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
