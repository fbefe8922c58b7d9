"""The model that ships inside gzmorph (src/gzmorph/pretrained/), made by one reproducible command:

    python benchmarks/pretrained.py                  # base recipe, then the continuation -> score on test -> package
    python benchmarks/pretrained.py --base pretrained  # the continuation alone, from the model now in the box

Two stages, both on the shared data's train + valid galaxies, fully and partially labelled -- never on test:
  base      gznet-xl (2x wide), 64 epochs of the gznet CPU recipe (batch 64, cosine from lr 2e-3): 0.0866 with 8
            views on the test split (held to the train split, the same recipe scored 0.0865: accuracy.py row
            gznet-xl); ~43 minutes on 2 Zen 5 cores
  continue  24 more epochs from the base's weights, cosine from lr 5e-4 (a warm restart): 0.0861 with 8 views
            (0.0840 with 32), ~15 minutes. On the 1.5x-wide gznet packaged before it, the same restart took 0.0885
            to 0.0873, where the same steps spent on the base's own answers for 21,589 unlabelled galaxies
            (distillation, accuracy.py row gz2/distil) scored 0.0886
It then scores the last weights on the test split (1 and 8 views, per question, beside the train-mean baseline) and
writes them as float16 safetensors with their card (data, both stages' recipes and histories, minutes, machine,
scores, SHA-256) beside them. `--stage train` stops after training; `--stage package` packages a trained run.

On a GPU (`--device cuda`) the stages are the GPU recipe: gznet-xl (2x wide, 6.4 M parameters, 12.3 MiB in
float16) at the CUDA recipe's batch 256, 120 + 40 epochs, about 1.7 M galaxy-passes: 6.5 minutes at the 4,400
img/s that gznet-xl trained at on an H200 before the device-resident loop, inside a 10-minute lease. The run's
float16 weights fit what comes back from the device; score and package them here, on the full-size test images
(the card then names the device's data folder, /tmp/d/galaxy-zoo-141, in its recipe: the 141 px copy of the same
galaxies). The export happens once training has finished: a run killed by the lease brings nothing back, so leave
the timeout room.

    # on the device (carry [".gpu"]; .gpu/gz141.tar.gz from ../shared/tools/device_data.py):
    mkdir -p /tmp/d && tar -xzf .gpu/gz141.tar.gz -C /tmp/d && PYTHONPATH=src python benchmarks/pretrained.py \\
        --device cuda --data /tmp/d/galaxy-zoo-141 --run /tmp/run --stage train --export $OUT/run
    # here:
    python benchmarks/pretrained.py --stage package --run <files_at>/run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gzmorph  # noqa: E402
from gzmorph import runs  # noqa: E402
from gzmorph.precision import pick_device  # noqa: E402
from gzmorph.run_layout import CONFIG, LAST, METRICS, TRAIN_MEAN  # noqa: E402
from machine import describe_machine  # noqa: E402

NAME = "gznet-gz2"
MADE_BY = "made_by.json"  # in the final run folder: the training command, its machine, what it started from
# CPU: gznet-xl (twice gznet's width; 6.4 M parameters, 12.3 MiB in float16, inside the 20 MB budget), the most
# accurate model measured on 2 CPU cores (~40 s an epoch on a Zen 5), on every galaxy with labels outside the test
# split. Its 1-view predictions stay well above the 300 img/s floor of a 2-core CPU (benchmarks/throughput.py).
# Both at batch 64, lr 2e-3 (gznet's CPU recipe), given in full: a CUDA run gets its own recipe (GPU_*).
BASE = dict(model="gznet", model_options={"widths": [64, 128, 256, 512]}, epochs=64, batch_size=64, lr=2e-3,
            warmup_epochs=1, train_on_valid=True, precision="auto")
# The warm restart: a quarter of the base's peak rate, one epoch of warm-up, 24 epochs (~3,900 steps of 64).
CONTINUE = dict(epochs=24, batch_size=64, lr=5e-4, warmup_epochs=1, train_on_valid=True, precision="auto")
# GPU: twice gznet's width (the H200 run: 0.0850 with 8 views after 84 epochs at batch 256), the CUDA
# recipe (batch 256, lr 8e-3, 3 warm-up epochs; gzmorph picks it on CUDA), then the same restart at a quarter of its
# rate, batch and rate given in full (a run that sets its rate leaves the CUDA recipe).
GPU_BASE = dict(model="gznet", model_options={"widths": [64, 128, 256, 512]}, epochs=120, train_on_valid=True,
                precision="auto", checkpoint_every=30.0)
GPU_CONTINUE = dict(epochs=40, batch_size=256, lr=2e-3, warmup_epochs=1, train_on_valid=True, precision="auto",
                    checkpoint_every=30.0)


def train_stage(data: str, run: Path, device: str, progress: bool, **recipe) -> bool:
    """Train (or resume, or find finished) one stage; returns whether it trained now. A finished run folder of
    another recipe (another stage, an older version of this script) is refused, never packaged as this one."""
    cfg = gzmorph.TrainConfig(data=data, out=str(run), device=device, **recipe)
    if (run / runs.CONFIG).exists():
        saved = runs.read_config(run)
        wanted = {k: v for k, v in recipe.items() if k not in ("init", "precision", "checkpoint_every")}
        if recipe.get("init"):  # a continuation: of this very base, whose network it then has
            wanted["init"] = str(runs.run_folder(recipe["init"]))
            wanted["model_options"] = runs.read_config(runs.run_folder(recipe["init"])).model_options
        differ = {k: (getattr(saved, k), v) for k, v in wanted.items() if getattr(saved, k) != v}
        if differ:
            raise SystemExit(f"{run} holds a run of another recipe ({differ}; saved, asked): move it away or pass "
                             f"another --run")
    resume = (run / runs.CHECKPOINT).exists()
    if resume and len(runs.read_metrics(run)) >= (cfg.epochs or 0):
        return False
    started = time.perf_counter()
    gzmorph.train(cfg, resume=resume, progress=progress)
    print(f"trained {run} in {time.perf_counter() - started:.0f} s")
    return True


def _seconds(run: Path) -> float:
    return sum(r["seconds"] for r in runs.read_metrics(run))


def base_record(base: str | Path) -> dict:
    """What the continuation started from, for the card: the model in the box (its card), or a base run."""
    if str(base) == "pretrained":
        from gzmorph import pretrained

        card = pretrained.card()
        keep = ("name", "sha256", "command", "config", "history", "machine", "started_from")
        return {**{k: card[k] for k in keep if k in card},
                "train_minutes": card.get("total_train_minutes", card["train_minutes"])}
    return {"run": str(base), "config": runs.read_config(base).to_dict(), "history": runs.read_metrics(base),
            "train_minutes": _seconds(Path(base)) / 60}


def export(run: Path, to: Path) -> None:
    """A copy of the trained run small enough to come back from a device (at most 16 MiB a file): its config,
    metrics and train mean, and its last weights in float16 -- what packaging keeps anyway."""
    import shutil

    from safetensors.torch import load_file, save_file

    to.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG, METRICS, TRAIN_MEAN):
        shutil.copy(run / name, to / name)
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(str(run / LAST)).items()}
    save_file(half, str(to / LAST))
    shutil.copy(run / MADE_BY, to / MADE_BY)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "galaxy-zoo"))
    p.add_argument("--run", type=Path, default=HERE / "runs" / NAME, help="the final run folder (the base stage "
                                                                          "trains into <run>-base)")
    p.add_argument("--base", help="continue from this run, or 'pretrained' (the model now in the box), instead of "
                                  "training the base stage")
    p.add_argument("--device", default="auto", help="cpu, cuda ...; cuda trains the GPU recipe")
    p.add_argument("--stage", choices=["train", "package", "all"], default="all",
                   help="train: stop after training; package: score and package an already trained --run")
    p.add_argument("--export", type=Path, help="after training, copy the run with float16 weights here (a device's "
                                               "$OUT: nothing bigger than 16 MiB comes back)")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args()
    run, progress = args.run, not args.quiet
    gpu = args.device.startswith("cuda")
    base_recipe, continue_recipe = (GPU_BASE, GPU_CONTINUE) if gpu else (BASE, CONTINUE)
    command = "python " + " ".join(a if " " not in a else repr(a) for a in sys.argv)
    if args.stage != "package":
        base = args.base
        if base is None:
            base = run.with_name(run.name + "-base")
            train_stage(args.data, base, args.device, progress, **base_recipe)
        started_from = base_record(base)  # before packaging replaces the model in the box
        trained = train_stage(args.data, run, args.device, progress, init=str(base), **continue_recipe)
        if trained or not (run / MADE_BY).exists():  # a finished run keeps the record of its own training
            made_by = {"command": command, "machine": describe_machine(str(pick_device(args.device))),
                       "started_from": started_from}
            (run / MADE_BY).write_text(json.dumps(made_by, indent=2) + "\n")
        if args.export:
            export(run, args.export)
            print(f"exported {run} to {args.export} (float16 weights)")
        if args.stage == "train":
            return
    from gzmorph.pretrained.package import package

    made_by = json.loads((run / MADE_BY).read_text())  # how it was trained (perhaps on another machine)
    seconds = _seconds(run)
    card = package(run, args.data, train_seconds=seconds, machine=made_by["machine"], command=made_by["command"],
                   started_from=made_by["started_from"])
    print(f"packaged {card['file']} ({card['bytes'] / 2**20:.1f} MiB, sha256 {card['sha256'][:12]}...): test RMSE "
          f"{card['test']['tta1']['rmse']:.4f} (1 view), {card['test']['tta8']['rmse']:.4f} (8 views); "
          f"train mean {card['test']['baseline']['rmse']:.4f}")


if __name__ == "__main__":
    main()
