"""``gzmorph`` command line: train / evaluate / predict / merge / plot / serve / export / synth / models.

Each subcommand only parses arguments and calls the library function of the same name; user errors
(:class:`GzmorphError`) print one line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import GzmorphError

# Checked by gzmorph.inference.check_tta when the command runs (importing it here would import torch for --help).
TTA_HELP = ("test-time augmentation: average over N views, 1, 2, 4 or 8 (the square's symmetries) or 16 or 32 "
            "(those of copies turned between quarter turns too)")

log = logging.getLogger("gzmorph")


def _model_options(args: argparse.Namespace) -> dict:
    """``--option KEY=VALUE`` pairs (VALUE read as JSON when it parses, else as text) plus the named shortcuts."""
    opts = {}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise GzmorphError(f"--option {item!r}: expected KEY=VALUE, e.g. --option widths=[32,64,128,256]")
        try:
            opts[key.strip()] = json.loads(value)
        except ValueError:
            opts[key.strip()] = value
    if getattr(args, "freeze_layers", None) is not None:
        opts["freeze_layers"] = args.freeze_layers
    return opts


def cmd_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .training import train

    if args.resume:
        cfg = TrainConfig(data="", out=args.resume, epochs=args.epochs)
        run = train(cfg, resume=True, progress=not args.quiet)
    else:
        if not args.data:
            raise GzmorphError("train needs --data DIR (a Kaggle-layout folder), or --resume RUN")
        cfg = TrainConfig(
            data=args.data, out=args.out, model=args.model, epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule, warmup_epochs=args.warmup_epochs,
            ema=args.ema, patience=args.patience, loss=args.loss, head=args.head, augment=args.augment,
            model_options=_model_options(args), pretrained=args.pretrained, seed=args.seed, limit=args.limit,
            valid_fraction=args.valid_fraction, use_partial=not args.no_partial, skip_bad=args.skip_bad,
            device=args.device, precision=args.precision, threads=args.threads, workers=args.workers, cache_dir=args.cache_dir)
        run = train(cfg, progress=not args.quiet)
    if _is_main_process():
        print(f"run folder: {run}  (metrics.csv, best.safetensors, model.safetensors, config.json)")
    return 0


def _is_main_process() -> bool:
    """False in the ranks 1..N-1 of a torchrun job: only rank 0 reports, so N processes do not print N times."""
    import os

    return os.environ.get("RANK", "0") == "0"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate, format_report

    result = evaluate(args.run, args.data, args.split, which=args.weights, limit=args.limit,
                      batch_size=args.batch_size, device=args.device, skip_bad=args.skip_bad, tta=args.tta,
                      precision=args.precision,
                      cache_dir=args.cache_dir, workers=args.workers, progress=not args.quiet)
    print(format_report(result))
    print(f"wrote {Path(args.run) / ('eval-' + args.split + '.json')}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .prediction import predict

    s = predict(args.run, args.images, args.output, which=args.weights, batch_size=args.batch_size, tta=args.tta,
                workers=args.workers, device=args.device, skip_bad=args.skip_bad, shard=args.shard,
                precision=args.precision,
                progress=not args.quiet)
    print(f"wrote {s.out}: {s.n_predicted} galaxies in {s.seconds:.1f} s ({s.images_per_second:.0f} img/s)"
          + (f"; skipped {len(s.skipped)} unreadable image(s), listed in {s.out}.json" if s.skipped else ""))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .prediction import merge_shards

    s = merge_shards(args.parts, args.output)
    print(f"wrote {s.out}: {s.n_predicted} galaxies from {len(args.parts)} shard(s)"
          + (f"; {len(s.skipped)} image(s) were skipped, listed in {s.out}.json" if s.skipped else ""))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plots import plot_gallery, plot_run

    if args.gallery:
        if not args.data:
            raise GzmorphError("plot --gallery needs --data DIR (the Kaggle-layout folder whose galaxies to show)")
        for path in plot_gallery(args.run, args.data, split=args.split, n=args.n, out_dir=args.out,
                                 which=args.weights, tta=args.tta, device=args.device, precision=args.precision,
                                 progress=not args.quiet):
            print(f"wrote {path}")
        return 0
    for path in plot_run(args.run, out_dir=args.out):
        print(f"wrote {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    serve(args.run, host=args.host, port=args.port, which=args.weights, device=args.device, tta=args.tta,
          precision=args.precision)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    s = export_onnx(args.run, args.onnx, which=args.weights, opset=args.opset)
    print(f"wrote {s.out} (input {s.input_shape} uint8-scaled float, output (N, 37)); onnxruntime matches "
          f"PyTorch to {s.max_abs_diff:.2e} on {s.n_checked} test images" if s.max_abs_diff is not None else
          f"wrote {s.out} (onnxruntime not installed: outputs not checked; pip install 'gzmorph[onnx]')")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .synth import make_synthetic

    out = make_synthetic(args.dir, args.n, n_test=args.n_test, seed=args.seed, workers=args.workers)
    print(f"wrote a synthetic Kaggle-layout data set of {args.n} galaxies to {out}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import MODELS

    for name in sorted(MODELS):
        spec = MODELS[name]
        print(f"{name:16s} crop {spec.crop:3d} -> {spec.size:3d} px  {spec.description}")
        print(f"{'':16s} recipe: {json.dumps(spec.defaults)}")
        if spec.options:
            print(f"{'':16s} options: {', '.join(spec.options)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="gzmorph", description="Galaxy Zoo morphology from galaxy images.")
    p.add_argument("--version", action="version", version=f"gzmorph {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def precision(sp):
        sp.add_argument("--precision", default="auto", help="auto, fp32 or bf16: bf16 autocast + channels-last "
                        "where the hardware does bf16 natively (auto), else fp32 (default: auto)")

    def common(sp, data=True):
        sp.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
        precision(sp)
        sp.add_argument("--workers", type=int, default=None, help="JPEG-decoding processes (default: all cores)")
        sp.add_argument("--skip-bad", action="store_true",
                        help="leave out missing/unreadable images (counted and logged) instead of stopping")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        if data:
            sp.add_argument("--cache-dir", default=None,
                            help="decoded-image cache (default: $GZMORPH_CACHE or ~/.cache/gzmorph)")

    t = sub.add_parser("train", help="train a model on a Kaggle-layout folder")
    t.add_argument("--data", help="Kaggle-layout folder")
    t.add_argument("--model", default="gznet", help="model name (see `gzmorph models`; default gznet)")
    t.add_argument("--out", default="runs/run", help="run folder to create (default: runs/run)")
    t.add_argument("--resume", metavar="RUN", help="continue the interrupted run in RUN (other options ignored "
                                                   "except --epochs)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float, help="AdamW decoupled weight decay (0: plain Adam)")
    t.add_argument("--schedule", choices=["constant", "cosine"], help="learning-rate schedule")
    t.add_argument("--warmup-epochs", type=float, help="linear warm-up before the cosine decay")
    t.add_argument("--ema", type=float, help="weight-averaging decay, e.g. 0.999 (0: off)")
    t.add_argument("--patience", type=int, help="stop after N epochs without a better valid RMSE")
    t.add_argument("--loss", choices=["bce", "mse"])
    t.add_argument("--head", choices=["sigmoid", "tree", "tree-relu"])
    t.add_argument("--augment", choices=["none", "report", "strong"])
    t.add_argument("--pretrained", help="weights file or URL ('imagenet' for torchvision's ResNet-50)")
    t.add_argument("--freeze-layers", type=int, help="seed-resnet50: freeze the first N Keras layers (report: 143)")
    t.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a model option (see `gzmorph models`), e.g. --option widths=[32,64,128,256]; repeatable")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--limit", type=int, help="at most N galaxies per split")
    t.add_argument("--valid-fraction", type=float, default=0.1, help="without splits.csv (default 0.1)")
    t.add_argument("--no-partial", action="store_true", help="ignore training_solutions_partial.csv")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="RMSE of a run on a labelled split, beside the train-mean baseline")
    e.add_argument("run")
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument("--weights", default="best", help="best, last, or a .safetensors file")
    e.add_argument("--limit", type=int)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--tta", type=int, default=1, metavar="N",
                   help=TTA_HELP)
    common(e)
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="predict a folder of images into a Kaggle submission CSV")
    pr.add_argument("run")
    pr.add_argument("images", help="folder of images, one image, or a .txt list of image paths")
    pr.add_argument("-o", "--output", default="submission.csv")
    pr.add_argument("--weights", default="best")
    pr.add_argument("--batch-size", type=int, default=256)
    pr.add_argument("--tta", type=int, default=1, metavar="N",
                    help=TTA_HELP)
    pr.add_argument("--shard", metavar="I/N", help="predict only shard I of N (0-based) of the sorted image list; "
                    "combine the N CSVs with `gzmorph merge`. Under torchrun the shard is the process's rank and "
                    "rank 0 merges")
    common(pr, data=False)
    pr.set_defaults(func=cmd_predict)

    mg = sub.add_parser("merge", help="merge the CSVs of `predict --shard I/N` into one submission")
    mg.add_argument("parts", nargs="+", help="the N shard CSVs (each with its .json beside it)")
    mg.add_argument("-o", "--output", default="submission.csv")
    mg.set_defaults(func=cmd_merge)

    pl = sub.add_parser("plot", help="learning curves and per-question RMSE of a run, or a gallery of galaxies (PNG)")
    pl.add_argument("run")
    pl.add_argument("--out", help="folder for the PNGs (default: the run folder)")
    pl.add_argument("--gallery", action="store_true",
                    help="galaxies with their true and predicted top answers, and the worst-predicted ones")
    pl.add_argument("--data", help="--gallery: Kaggle-layout folder")
    pl.add_argument("--split", default="valid", choices=["train", "valid", "test"], help="--gallery: split shown")
    pl.add_argument("--n", type=int, default=16, help="--gallery: galaxies per grid (default 16)")
    pl.add_argument("--weights", default="best")
    pl.add_argument("--tta", type=int, default=1, metavar="N", help=TTA_HELP)
    pl.add_argument("--device", default="auto")
    precision(pl)
    pl.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    pl.set_defaults(func=cmd_plot)

    sv = sub.add_parser("serve", help="a local web page: drop a galaxy image, see the decision tree answered")
    sv.add_argument("run")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    sv.add_argument("--weights", default="best")
    sv.add_argument("--tta", type=int, default=8, metavar="N", help=TTA_HELP + " (default 8)")
    sv.add_argument("--device", default="auto")
    precision(sv)
    sv.set_defaults(func=cmd_serve)

    ex = sub.add_parser("export", help="export a run's model to ONNX (checked against PyTorch with onnxruntime)")
    ex.add_argument("run")
    ex.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    ex.add_argument("--weights", default="best")
    ex.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    ex.set_defaults(func=cmd_export)

    s = sub.add_parser("synth", help="write a synthetic Kaggle-layout data set (for demos and tests)")
    s.add_argument("dir")
    s.add_argument("--n", type=int, default=1000, help="labelled galaxies (default 1000)")
    s.add_argument("--n-test", type=int, help="unlabelled galaxies (default n/10)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=1)
    s.set_defaults(func=cmd_synth)

    m = sub.add_parser("models", help="list the models and their recipes")
    m.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_rank = not _is_main_process() and not args.verbose  # torchrun's other ranks: warnings and errors only
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if quiet_rank else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except GzmorphError as e:
        print(f"gzmorph: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gzmorph: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
