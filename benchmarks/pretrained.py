"""The model that ships inside gzmorph (src/gzmorph/pretrained/), made by one reproducible command:

    python benchmarks/pretrained.py            # train (or resume) -> score on test -> package, with its model card

It trains on the shared data's train + valid galaxies, fully and partially labelled -- never on test -- with the
recipe below, scores the last weights on the test split (1 and 8 views, per question, beside the train-mean
baseline), and writes the weights as float16 safetensors with their card (data, recipe, minutes, machine, scores,
SHA-256) beside them. `--stage train` stops after training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gzmorph  # noqa: E402
from gzmorph import runs  # noqa: E402
from machine import describe_machine  # noqa: E402

# gznet 1.5x wide: the best accuracy per CPU-minute measured here that fits the 20 MB budget several times over (3.6 M
# parameters, 6.9 MiB in float16), trained on every galaxy with labels outside the test split.
RECIPE = dict(model="gznet", model_options={"widths": [48, 96, 192, 384]}, epochs=40, train_on_valid=True,
              precision="auto")
NAME = "gznet-gz2"


def train(data: str, run: Path, progress: bool) -> float:
    cfg = gzmorph.TrainConfig(data=data, out=str(run), **RECIPE)
    resume = (run / runs.CHECKPOINT).exists()
    if resume and len(runs.read_metrics(run)) >= cfg.epochs:
        return sum(r["seconds"] for r in runs.read_metrics(run))
    started = time.perf_counter()
    gzmorph.train(cfg, resume=resume, progress=progress)
    print(f"trained {run} in {time.perf_counter() - started:.0f} s")
    return sum(r["seconds"] for r in runs.read_metrics(run))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "galaxy-zoo"))
    p.add_argument("--run", default=str(HERE / "runs" / NAME), help="the training run folder")
    p.add_argument("--stage", choices=["train", "all"], default="all")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args()
    run = Path(args.run)
    seconds = train(args.data, run, not args.quiet)
    if args.stage == "train":
        return
    from gzmorph.pretrained.package import package

    card = package(run, args.data, train_seconds=seconds, machine=describe_machine(),
                   command="python benchmarks/pretrained.py")
    print(f"packaged {card['file']} ({card['bytes'] / 2**20:.1f} MiB, sha256 {card['sha256'][:12]}...): test RMSE "
          f"{card['test']['tta1']['rmse']:.4f} (1 view), {card['test']['tta8']['rmse']:.4f} (8 views); "
          f"train mean {card['test']['baseline']['rmse']:.4f}")


if __name__ == "__main__":
    main()
