"""Accuracy of gzmorph's models on the shared data: one table, one row per (model, recipe).

Each row trains on the train split (plus the partially labelled galaxies where the recipe uses them), picks its
weights by valid RMSE, and is scored on the test split without test-time augmentation (TTA) and with 8 and 32 views
(the view counts were compared on the valid split only).

    python benchmarks/accuracy.py                               # the CPU rows (seed-cnn report recipe, gznet-15min)
    python benchmarks/accuracy.py --rows gznet dieleman resnet50  # longer rows (GPU machine)
    python benchmarks/accuracy.py --list                        # every row and its recipe

A row whose run folder (under --runs, default benchmarks/runs/) already finished is scored again, not retrained.
Results are merged into benchmarks/results/accuracy-<machine>.json; the table printed holds every row of that file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gzmorph  # noqa: E402
from gzmorph import runs, tree  # noqa: E402
from gzmorph.models import resolve_recipe  # noqa: E402
from gzmorph.errors import GzmorphError  # noqa: E402
from gzmorph.precision import pick_device  # noqa: E402
from machine import describe_machine, machine_tag  # noqa: E402

# Stand-ins in a row's overrides for paths given on the command line (--teacher, --unlabelled).
TEACHER, UNLABELLED = "<teacher>", "<unlabelled>"
# gznet's CPU recipe given in full: its rows measure it whatever the defaults become (and on CUDA too)
B64 = {"batch_size": 64, "lr": 2e-3, "warmup_epochs": 1}
B256 = {"batch_size": 256, "lr": 8e-3, "warmup_epochs": 3}  # gznet's CUDA recipe, the same way

# name -> (model, TrainConfig overrides, what the recipe is). The first row is the student report's recipe.
ROWS: dict[str, tuple[str, dict, str]] = {
    "seed-cnn/report": ("seed-cnn", {"use_partial": False},
                        "the report: BCE, sigmoid, Adam 1e-3, batch 32, 10 epochs, flips/90-degree turns/shift/zoom"),
    # gznet's recipe on the CPU: 56 epochs of batch 64 (issue 20's 15-minute recipe on 2 Zen 5 cores), then the rows
    # that chose it: 44, 30 and 24 epochs, batch 256 at equal epochs and at 50.
    "gznet": ("gznet", {}, "gznet recipe: MSE, tree head, AdamW 2e-3 cosine after 1 warm-up epoch, batch 64, wd "
                           "5e-4, EMA 0.999, strong aug., 56 epochs: <= 15 min on 2 CPU cores"),
    # The budget as the rule (`--minutes 15`): the epoch count fitted to 15 minutes on whatever machine runs the row.
    "gznet/15min": ("gznet", {**B64, "minutes": 15}, "gznet's batch-64 recipe for `--minutes 15`: as many epochs as "
                                                     "the first one's time says fit 15 minutes here"),
    "gznet/b64-44ep": ("gznet", {**B64, "epochs": 44}, "gznet recipe cut to 44 epochs: ~10 min on 2 Zen 5 cores"),
    "gznet/b64": ("gznet", {**B64, "epochs": 30}, "gznet recipe until 2026-12-05: 30 epochs"),
    "gznet/b64-24ep": ("gznet", {**B64, "epochs": 24}, "the same cut to 24 epochs: the 15-minute row of its time"),
    # The CUDA recipe on the CPU at equal epochs: it must score within 0.002 of batch 64 for the GPU to use it.
    "gznet/b256-30ep": ("gznet", {**B256, "epochs": 30}, "gznet's CUDA recipe (batch 256, lr 8e-3, 3 warm-up "
                                                         "epochs), 30 epochs"),
    "gznet/b256-50ep": ("gznet", {**B256, "epochs": 50}, "gznet's CUDA recipe, 50 epochs: 13.7 min on 2 Zen 5 cores, "
                                                         "where batch 64 runs 44 epochs in 10"),
    "gznet-wide": ("gznet", {**B64, "epochs": 40, "model_options": {"widths": [48, 96, 192, 384]}},
                   "gznet 1.5x wider (48-384 channels, 2.2x the compute), batch 64, 40 epochs: is capacity the limit?"),
    "gznet-wide/b256-30ep": ("gznet", {**B256, "epochs": 30, "model_options": {"widths": [48, 96, 192, 384]}},
                             "gznet 1.5x wide, the CUDA recipe (batch 256) for the 30 epochs that fit 15 CPU minutes"),
    "gznet-xl": ("gznet", {**B64, "epochs": 64, "model_options": {"widths": [64, 128, 256, 512]}},
                 "gznet 2x wide (64-512 channels, 4x the compute of gznet), batch 64, 64 epochs: does capacity keep "
                 "paying?"),
    "dieleman/cpu-15min": ("dieleman", {"epochs": 5},
                           "dieleman recipe cut to 5 epochs: the 15-minute budget on 2 CPU cores (55 img/s)"),
    "resnet50/cpu-15min": ("resnet50", {"epochs": 3},
                           "resnet50 recipe cut to 3 epochs: the 15-minute budget on 2 CPU cores (~35 img/s)"),
    "dieleman": ("dieleman", {}, "Dieleman 2014 network; MSE, tree-relu head, Adam 1e-3 cosine, EMA, strong aug., "
                                 "40 epochs"),
    "resnet50": ("resnet50", {}, "ResNet-50 from scratch, 96 px, GAP, tree head, MSE, AdamW cosine, EMA, strong "
                                 "aug., 30 epochs"),
    # The precision check: one recipe, one seed, fp32 against bf16 (issue 14: within 0.002 of each other).
    "gznet/8ep-fp32": ("gznet", {**B64, "epochs": 8, "precision": "fp32"},
                       "gznet batch-64 recipe cut to 8 epochs, fp32 NCHW"),
    "gznet/8ep-bf16": ("gznet", {**B64, "epochs": 8, "precision": "bf16"},
                       "gznet batch-64 recipe cut to 8 epochs, bf16 channels-last"),
    "gznet/24ep-bf16": ("gznet", {**B64, "epochs": 24, "precision": "bf16"},
                        "gznet batch-64 recipe cut to 24 epochs (the old 15-minute row), bf16 channels-last"),
    # Batch 512 was the first choice for a GPU (an H200's step alone is faster there): every rate tried lands
    # 0.0025-0.004 short of batch 64 at equal epochs -- the 8x fewer steps, not the rate.
    "gznet/b512-lr5.6e-3": ("gznet", {"batch_size": 512, "lr": 5.6e-3, "warmup_epochs": 3, "epochs": 30},
                            "gznet recipe at batch 512, lr 5.6e-3 (2e-3 x sqrt 8), 3 warm-up epochs, 30 epochs"),
    "gznet/b512-lr8e-3": ("gznet", {"batch_size": 512, "lr": 8e-3, "warmup_epochs": 3, "epochs": 30},
                          "gznet recipe at batch 512, lr 8e-3 (2e-3 x 8^(2/3)), 3 warm-up epochs, 30 epochs"),
    "gznet/b512-lr1.1e-2": ("gznet", {"batch_size": 512, "lr": 1.1e-2, "warmup_epochs": 3, "epochs": 30},
                            "gznet recipe at batch 512, lr 1.1e-2 (2e-3 x 8^(0.8)), 3 warm-up epochs, 30 epochs"),
    "gznet/b512-lr1.6e-2": ("gznet", {"batch_size": 512, "lr": 1.6e-2, "warmup_epochs": 3, "epochs": 30},
                            "gznet recipe at batch 512, lr 1.6e-2 (2e-3 x 8, the linear rule), 3 warm-up epochs, 30 "
                            "epochs"),
    # The 15 minutes spent on distillation instead (issue 20), at the batch-64 recipe of the time: a fresh gznet on
    # the train split + the 21,589 unlabelled galaxies, the model in the box's 16-view answers as their soft labels;
    # 7 epochs of 31k galaxies are the ~3,400 steps of 24 epochs of the labelled ones alone ("gznet/b64-24ep").
    "gznet/b64-15min-distil": ("gznet", {**B64, "epochs": 7, "soft_labels": TEACHER, "soft_images": UNLABELLED},
                               "gznet batch-64 recipe, 7 epochs on train + partial + 21,589 unlabelled galaxies "
                               "labelled by the model in the box (16 views)"),
    # Distillation on the CPU (issue 20 without a GPU): the packaged model trained on, at equal optimizer steps
    # (~4,000 of batch 64), on its own labelled data alone, then with the unlabelled galaxies it labelled itself.
    # Measured from the model in the box of the time (SHA-256 71aa3dfc..., the 1.5x-wide gznet before 2026-12-05):
    # run again, they start from whatever model is in the box then (since 2026-12-05 a 2x-wide gznet).
    "gz2/continue": ("gznet", {"init": "pretrained", "train_on_valid": True, "epochs": 24, "batch_size": 64,
                               "lr": 5e-4, "warmup_epochs": 1},
                     "the packaged model, 24 more epochs (3,900 steps) on train + valid + partial at lr 5e-4: the "
                     "control for gz2/distil"),
    "gz2/distil": ("gznet", {"init": "pretrained", "train_on_valid": True, "epochs": 8, "batch_size": 64, "lr": 5e-4,
                             "warmup_epochs": 0.33, "soft_labels": TEACHER, "soft_images": UNLABELLED},
                   "the packaged model, 8 more epochs (4,000 steps) on the same + 21,589 unlabelled galaxies with its "
                   "own 16-view answers as soft labels (and the partial galaxies' gaps filled)"),
}
DEFAULT_ROWS = ("seed-cnn/report", "gznet")
TTA_SCORED = (1, 8, 32)  # views averaged at test time: none, the square's 8 symmetries, those of 4 turns


def run_row(name: str, args) -> dict:
    model, overrides, recipe = ROWS[name]
    overrides = {k: _path_for(v, args) for k, v in overrides.items()}
    run = Path(args.runs) / name.replace("/", "__")
    cfg = gzmorph.TrainConfig(data=args.data, out=str(run), model=model, device=args.device, **overrides)
    finished = (run / runs.CHECKPOINT).exists() and \
        (len(runs.read_metrics(run)) >= resolve_recipe(runs.read_config(run)).epochs or _stopped_early(run))
    wall = None
    if not finished:
        fresh = not (run / runs.CHECKPOINT).exists()
        with tempfile.TemporaryDirectory(prefix="gzmorph-cold-cache-") as cold:
            if fresh and args.cold_cache:  # decoding the images is then part of the measured wall-clock
                cfg = replace(cfg, cache_dir=cold)
            started = time.perf_counter()
            gzmorph.train(cfg, resume=not fresh, progress=not args.quiet)
            wall = time.perf_counter() - started if fresh else None
    history = runs.read_metrics(run)
    resolved = runs.read_config(run)
    scores = {}
    for tta in TTA_SCORED:
        started = time.perf_counter()
        result = gzmorph.evaluate(run, args.data, "test", device=args.device, tta=tta, progress=False, write=False)
        scores[f"tta{tta}"] = {"rmse": result["rmse"], "per_question": result["per_question"],
                               "seconds": time.perf_counter() - started}
    baseline = result["baseline"]
    best = min(history, key=lambda r: r["valid_rmse"])
    return {
        "row": name, "model": model, "recipe": recipe, "config": asdict(resolved),
        "device": str(pick_device(args.device)), "precision": resolved.precision,
        "train_seconds": sum(r["seconds"] for r in history),
        # The whole gzmorph.train call of an uninterrupted run (with --cold-cache: image decoding included).
        "train_wall_seconds": wall, "cold_cache": bool(args.cold_cache and wall is not None),
        "epochs_run": len(history), "best_epoch": int(best["epoch"]), "valid_rmse": best["valid_rmse"],
        "test": scores, "test_baseline": {"rmse": baseline["rmse"], "per_question": baseline["per_question"]},
        "n_test": result["n_galaxies"], "command": f"python benchmarks/accuracy.py --rows {name}",
    }


def _path_for(value, args):
    """A row's override with the stand-ins replaced; the teacher's file is made (by the packaged model) when missing."""
    if value == UNLABELLED:
        return args.unlabelled
    if value != TEACHER:
        return value
    if not Path(args.teacher).exists():
        from gzmorph.inference.teacher import write_teacher_labels

        # Every image of the labelled folder too: the partial galaxies' gaps are filled from it, and training leaves
        # out the test (and held-out valid) galaxies it also answers.
        write_teacher_labels([None], [Path(args.data) / "images_training_rev1", args.unlabelled], args.teacher,
                             tta=16, device=args.device, progress=not args.quiet)
    return args.teacher


def _stopped_early(run: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(run / runs.CHECKPOINT), framework="pt") as f:
        return bool(json.loads(f.metadata()["progress"]).get("stopped_early"))


def score(test: dict, key: str) -> str:
    """A row scored before a view count was added has no such column until it is scored again."""
    return f"{test[key]['rmse']:.4f}" if key in test else "-"


def print_table(rows: list[dict], machine: dict) -> None:
    print(f"test split ({rows[0]['n_test']} galaxies); machine: {machine['cpu']}, {machine['cores']} cores"
          + (f", {machine['gpu']}" if "gpu" in machine else "") + f", torch {machine['torch']}")
    head = (f"{'row':18s} {'device':6s} {'train':>8s} {'ep':>3s} {'valid':>7s} {'test':>7s} {'test+tta8':>9s} "
            f"{'test+tta32':>10s}")
    qs = [f"Q{q.number}" for q in tree.QUESTIONS]
    print(head + "  " + " ".join(f"{q:>5s}" for q in qs))
    base = rows[0]["test_baseline"]
    print(f"{'train mean':18s} {'':6s} {'':>8s} {'':>3s} {'':>7s} {base['rmse']:7.4f} {'':>9s} {'':>10s}  "
          + " ".join(f"{base['per_question'][q]:5.3f}" for q in qs))
    for r in rows:
        t = r["test"]
        minutes = f"{r['train_seconds'] / 60:.1f} min"
        print(f"{r['row']:18s} {r['device']:6s} {minutes:>8s} {r['epochs_run']:3d} {r['valid_rmse']:7.4f} "
              f"{t['tta1']['rmse']:7.4f} {t['tta8']['rmse']:9.4f} {score(t, 'tta32'):>10s}  "
              + " ".join(f"{t['tta32']['per_question'][q]:5.3f}" if "tta32" in t else f"{'':>5s}" for q in qs))
    print("(per-question columns: test RMSE with 32-view TTA)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "galaxy-zoo"))
    p.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), help="row names (see --list)")
    p.add_argument("--runs", default=str(HERE / "runs"), help="where the rows' run folders go")
    p.add_argument("--device", default="auto")
    p.add_argument("--unlabelled", default=str(HERE.parent.parent / "shared" / "data" / "galaxy-zoo-unlabelled" /
                                               "images"), help="the unlabelled galaxies' images (distillation rows)")
    p.add_argument("--teacher", default=str(HERE / "runs" / "teacher-gz2-tta16.csv"),
                   help="the soft-label file of the distillation rows; made by the packaged model when missing")
    p.add_argument("--cold-cache", action="store_true",
                   help="train new rows from an empty image cache, so the wall-clock includes decoding")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args()
    if args.list:
        for name, (model, overrides, recipe) in ROWS.items():
            print(f"{name:18s} {model:10s} {json.dumps(overrides):24s} {recipe}")
        return
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        sys.exit(f"unknown row(s) {unknown}; see --list")
    machine = describe_machine(str(pick_device(args.device)))
    out = HERE / "results" / f"accuracy-{machine_tag(machine)}.json"
    saved = json.loads(out.read_text())["rows"] if out.exists() else []
    try:
        for name in args.rows:
            row = run_row(name, args)
            before = next((r for r in saved if r["row"] == name), {})
            if row["train_wall_seconds"] is None:  # only scored again: keep the wall-clock of its training
                row.update({k: before.get(k) for k in ("train_wall_seconds", "cold_cache")})
            saved = [r for r in saved if r["row"] != name] + [row]
            saved.sort(key=lambda r: list(ROWS).index(r["row"]))
            out.parent.mkdir(exist_ok=True)
            out.write_text(json.dumps({"benchmark": "accuracy", "machine": machine, "rows": saved}, indent=2) + "\n")
    except GzmorphError as e:
        sys.exit(f"gzmorph: error: {e}")
    print_table(saved, machine)
    print(f"wrote {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
