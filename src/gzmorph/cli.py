"""``gzmorph`` command line: train / evaluate / predict / merge / plot / serve / export / synth / models.

Each subcommand only parses arguments and calls the library function of the same name; user errors
(:class:`GzmorphError`) print one line and exit with status 2, never a traceback. ``train``'s flags are built from
:class:`~gzmorph.config.TrainConfig`'s fields and their help texts, so the config and the CLI cannot drift apart;
the flags every command that runs a model shares are declared once, in ``_model_run_flags``.

Nothing here imports torch at module level, so ``gzmorph --help`` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

from .config import PRECISIONS, RECIPE, TTA_VIEWS, TrainConfig
from .errors import BadArgument, GzmorphError, TrainingStopped

log = logging.getLogger("gzmorph")

TTA_HELP = (f"test-time augmentation: average over N views, one of {', '.join(map(str, TTA_VIEWS))} (up to 8: the "
            f"square's symmetries; 16 and 32 add those of copies turned between quarter turns)")
RUN_HELP = "a run folder, or 'pretrained' for the model inside gzmorph (the default)"
INPUTS_HELP = ("the run (default: the model inside gzmorph), then a folder of images, one image, a .txt list of image "
               "paths, or a catalogue .csv (with --id-column, and --path-column or --images) whose other columns are "
               "kept in the output")
SPREAD_HELP = "each answer's standard deviation over the --tta views (how sure the model is)"
# Config fields whose flag is not simply --field-name.
_SPECIAL_FLAGS = {"use_partial": "--no-partial", "model_options": "--option", "mask_questions": "--mask-question",
                  "columns": "--column"}
_NOT_FLAGS = ("task",)  # set by gzmorph itself
# What some fields mean when fine-tuning, where the recipe is config.FINETUNE_RECIPE and the split a split column.
_FINETUNE_HELP = {"loss": "the loss of fraction columns: mse or bce (class columns: cross-entropy; numbers: mse)",
                  "valid_fraction": "the share of the labelled galaxies held out for validation (drawn with --seed), "
                                    "used only when the label file has no split column",
                  "patience": "stop after this many epochs without a better valid score (default: never)"}


def _config_flags(sp: argparse.ArgumentParser, *, finetune: bool = False) -> None:
    """One flag per TrainConfig field, with its help, type and choices. Every default is None ("not given"), so
    the config's own default or the model's recipe applies; see :func:`_config_from_args`. With ``finetune``, only
    the fields that mean something when fine-tuning (not those marked ``train_only``)."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_FLAGS or (finetune and f.metadata.get("train_only")):
            continue
        help_text, choices = f.metadata.get("help", ""), f.metadata.get("choices")
        if finetune:
            help_text = _FINETUNE_HELP.get(f.name, help_text.replace(RECIPE, "; default: the fine-tuning recipe"))
        flag = _SPECIAL_FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
        if f.name == "use_partial":
            sp.add_argument(flag, dest=f.name, action="store_false", default=None,
                            help="ignore training_solutions_partial.csv (default: " + help_text + ")")
        elif f.name == "model_options":
            sp.add_argument(flag, dest=f.name, action="append", metavar="KEY=VALUE",
                            help="a model option (see `gzmorph models`), e.g. --option widths=[32,64,128,256]; "
                                 "repeatable")
        elif f.name in ("mask_questions", "columns"):
            sp.add_argument(flag, dest=f.name, action="append", metavar="NAME", help=help_text + "; repeatable")
        elif f.type == "bool":
            sp.add_argument(flag, dest=f.name, action="store_true", default=None, help=help_text)
        else:
            kind = int if f.type.startswith("int") else float if f.type.startswith("float") else str
            default = "" if f.default in (None, dataclasses.MISSING, "") else f" (default: {f.default})"
            sp.add_argument(flag, dest=f.name, type=kind, choices=choices, default=None, help=help_text + default)


def _model_options(items: list[str] | None) -> dict:
    """``--option KEY=VALUE`` pairs, VALUE read as JSON when it parses, else as text."""
    opts = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadArgument(f"--option {item!r}: expected KEY=VALUE, e.g. --option widths=[32,64,128,256]")
        try:
            opts[key.strip()] = json.loads(value)
        except ValueError:
            opts[key.strip()] = value
    return opts


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    given["model_options"] = _model_options(given.get("model_options"))
    if args.freeze_layers is not None:
        given["model_options"]["freeze_layers"] = args.freeze_layers
    return TrainConfig(**given)


def cmd_train(args: argparse.Namespace) -> int:
    from .training.loop import train

    if args.resume:
        run = train(TrainConfig(out=args.resume, epochs=args.epochs), resume=True, progress=not args.quiet)
    else:
        if not args.data:
            raise BadArgument("train needs --data DIR (a Kaggle-layout folder), or --resume RUN")
        run = train(_config_from_args(args), progress=not args.quiet)
    if _is_main_process():
        print(f"run folder: {run}  (metrics.csv, best.safetensors, model.safetensors, config.json)")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .training.loop import train

    if args.resume:
        run = train(TrainConfig(out=args.resume, epochs=args.epochs), resume=True, progress=not args.quiet)
    else:
        if not args.labels or not args.images:
            raise BadArgument("finetune needs --labels FILE.csv (GalaxyID + your columns) and --images DIR")
        cfg = _config_from_args(args)
        run = train(dataclasses.replace(cfg, init=cfg.init or "pretrained"), progress=not args.quiet)
    if _is_main_process():
        print(f"run folder: {run}  (predict with: gzmorph predict {run} IMAGES -o out.csv)")
    return 0


def _is_main_process() -> bool:
    """False in the ranks 1..N-1 of a torchrun job: only rank 0 reports, so N processes do not print N times."""
    return os.environ.get("RANK", "0") == "0"


def _run_kwargs(args: argparse.Namespace) -> dict:
    """The shared model-running options as the library functions name them."""
    return {"which": args.weights, "device": args.device, "precision": args.precision, "tta": args.tta}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .inference.evaluate import evaluate, evaluate_labels, format_report

    if args.labels or args.images:
        if not (args.labels and args.images) or args.data:
            raise BadArgument("evaluate a fine-tuned run with --labels FILE.csv (GalaxyID + its columns) and --images "
                              "DIR (their images), without --data")
        if args.spread or args.limit is not None or args.split != "test":
            raise BadArgument("--spread, --limit and --split go with --data (the 37 Galaxy Zoo answers); with "
                              "--labels every row of the file is scored")
        result = evaluate_labels(args.run, args.labels, args.images, batch_size=args.batch_size,
                                 skip_bad=args.skip_bad, cache_dir=args.cache_dir, workers=args.workers,
                                 progress=not args.quiet, out_dir=args.out, **_run_kwargs(args))
    else:
        if not args.data:
            from . import runs
            from .inference.evaluate import _needs_labels

            cfg = runs.read_config(args.run)
            if cfg.task:
                raise BadArgument(_needs_labels(args.run, cfg))
            raise BadArgument("evaluate needs --data DIR (a Kaggle-layout folder); a fine-tuned run takes --labels "
                              "FILE.csv --images DIR instead")
        result = evaluate(args.run, args.data, args.split, limit=args.limit, batch_size=args.batch_size,
                          skip_bad=args.skip_bad, cache_dir=args.cache_dir, workers=args.workers,
                          progress=not args.quiet, spread=args.spread, out_dir=args.out, **_run_kwargs(args))
    print(format_report(result))
    print(f"wrote {result['written']}")
    return 0


def _run_and_images(args: argparse.Namespace, command: str) -> tuple[str | None, str]:
    """``[RUN] IMAGES``: the run is optional (the model inside gzmorph)."""
    if len(args.paths) > 2:
        raise BadArgument(f"{command} takes [RUN] IMAGES, got {len(args.paths)} paths: {' '.join(args.paths)}")
    return (None, args.paths[0]) if len(args.paths) == 1 else tuple(args.paths)


def _input_kwargs(args: argparse.Namespace) -> dict:
    """How the inputs of predict and embed are found, as the library functions name it."""
    return {"recursive": args.recursive, "id_column": args.id_column, "path_column": args.path_column,
            "catalogue_images": args.images, "skip_bad": args.skip_bad, "batch_size": args.batch_size,
            "workers": args.workers, "progress": not args.quiet, "shard": args.shard}


def _skipped_line(skipped: list[tuple[str, str]], listed_in: Path) -> str:
    """The on-screen summary of what was left out: how many, for which reasons, where the full list is."""
    if not skipped:
        return ""
    reasons: dict[str, int] = {}
    for _, why in skipped:
        head, sep, tail = why.partition(": ")
        key = tail if sep and ("/" in head or "." in head) else why  # "imgs/x.jpg: no such file" -> "no such file"
        key = key.split(" (", 1)[0].split("; ", 1)[0]  # the reason, without its details (they are in the .json)
        reasons[key] = reasons.get(key, 0) + 1
    common = "; ".join(f"{n} x {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
    return f"; left out {len(skipped)} input(s) ({common}{'; ...' if len(reasons) > 3 else ''}), listed in {listed_in}"


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference.predict import predict

    run, images = _run_and_images(args, "predict")
    s = predict(run, images, args.output, spread=args.spread, columns=args.columns, restart=args.restart,
                interval=args.interval, calibration=args.calibration, **_input_kwargs(args), **_run_kwargs(args))
    done = (f"{s.n_predicted - s.n_resumed} now in {s.seconds:.1f} s ({s.images_per_second:.0f} img/s), {s.n_resumed} "
            f"by an earlier run of this job" if s.n_resumed else
            f"in {s.seconds:.1f} s ({s.images_per_second:.0f} img/s)")
    print(f"wrote {s.out}: {s.n_predicted} galaxies {done}" + _skipped_line(s.skipped, Path(f"{s.out}.json")))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .inference.shards import merge_shards

    if all(str(p).endswith(".npy") for p in args.parts):  # the parts of `gzmorph embed --shard I/N`
        from .inference.embed import merge_features

        f = merge_features(args.parts, args.output if args.output != "submission.csv" else "features")
        print(f"wrote {f.out} ({f.n} galaxies x {f.dim} features) from {len(args.parts)} shard(s)")
        return 0
    s = merge_shards(args.parts, args.output)
    print(f"wrote {s.out}: {s.n_predicted} galaxies from {len(args.parts)} shard(s)"
          + _skipped_line(s.skipped, Path(f"{s.out}.json")))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from .inference.embed import embed

    run, images = _run_and_images(args, "embed")
    s = embed(run, images, args.output, which=args.weights, device=args.device, precision=args.precision,
              restart=args.restart, tta=args.tta, interval=args.interval, calibration=args.calibration,
              **_input_kwargs(args))
    print(f"wrote {s.out} ({s.n} galaxies x {s.dim} features, float16), its .csv and .npy.json in {s.seconds:.1f} s "
          f"({s.images_per_second:.0f} img/s)" + _skipped_line(s.skipped, Path(f"{s.out}.json")))
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    from .inference import similar as sim

    features = sim.open_features(args.features)
    if args.query is not None and args.odd is not None:
        raise BadArgument("similar takes --query ID|IMAGE (galaxies like it) or --odd N (the oddest galaxies), not both")
    if args.query is None and args.odd is None:
        raise BadArgument("similar needs --query ID|IMAGE (galaxies like it) or --odd N (the oddest galaxies)")
    started = time.perf_counter()
    index = sim.Index(features, True if args.exact else None)
    built = time.perf_counter() - started
    if args.odd is not None:
        rows, distance = sim.oddest(features, args.odd, index=index)
        print(f"the {len(rows)} galaxies farthest from their {sim.ODD_K} nearest neighbours, of {len(features)}")
        print(f"{'rank':>4s}  {'GalaxyID':>10s}  {'distance':>8s}  most likely answers")
        for k, (r, d) in enumerate(zip(rows, distance), start=1):
            answers = "; ".join(sim.top_answers(features.answers[r])) if features.answers is not None else ""
            print(f"{k:4d}  {features.ids[r]:>10s}  {d:8.4f}  {answers}")
        if args.gallery:
            print(f"wrote {sim.draw_oddest(features, rows, distance, args.gallery, args.images)}")
        return 0
    started = time.perf_counter()
    found = sim.similar(features, args.query, args.k, run=args.run, index=index)
    seconds = time.perf_counter() - started
    print(f"the {len(found.rows)} galaxies most like {args.query} of {len(features)} "
          f"({'exact' if index.exact else 'approximate (HNSW)'} search: {seconds * 1000:.0f} ms; index "
          f"{'built' if built > 0.5 else 'loaded'} in {built:.1f} s)")
    print(f"{'rank':>4s}  {'GalaxyID':>10s}  {'cosine':>6s}  most likely answers")
    for k, (r, s_) in enumerate(zip(found.rows, found.similarities), start=1):
        answers = "; ".join(sim.top_answers(features.answers[r])) if features.answers is not None else ""
        print(f"{k:4d}  {features.ids[r]:>10s}  {s_:6.3f}  {answers}")
    if args.gallery:
        query_image = None
        if found.query_row is None:
            from .data.images import Preprocess, decode

            crop = features.meta["crop"]
            query_image = decode(args.query, Preprocess(crop, min(256, crop)))
        print(f"wrote {sim.draw(features, found, args.gallery, query_image, args.images)}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    if args.gallery:
        from .inference.gallery import plot_gallery

        from . import runs
        from .inference.evaluate import results_folder

        if not args.data:
            raise BadArgument("plot --gallery needs --data DIR (the Kaggle-layout folder whose galaxies to show)")
        out = results_folder(runs.run_folder(args.run), args.out)  # never into the packaged model's cache folder
        paths = plot_gallery(args.run, args.data, split=args.split, n=args.n, out_dir=out,
                             progress=not args.quiet, **_run_kwargs(args))
    else:
        from .inference.plots import plot_run

        paths = plot_run(args.run, out_dir=args.out)
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .inference.serve import serve

    if args.queue_limit is not None and args.queue_limit < 1:
        raise BadArgument(f"--queue-limit must be at least 1, got {args.queue_limit}")
    limit = {} if args.queue_limit is None else {"queue_limit": args.queue_limit}  # else serve's own default
    serve(args.run, host=args.host, port=args.port, index=args.index, images=args.images, **limit,
          **_run_kwargs(args))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .inference.export import export_onnx

    s = export_onnx(args.run, args.onnx, which=args.weights, opset=args.opset)
    print(f"wrote {s.out} (input {s.input_shape} uint8-scaled float, output (N, 37)); onnxruntime matches "
          f"PyTorch to {s.max_abs_diff:.2e} on {s.n_checked} test images" if s.max_abs_diff is not None else
          f"wrote {s.out} (onnxruntime not installed: outputs not checked; pip install 'gzmorph[onnx]')")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .inference.calibration import calibrate_run, save_calibration

    cal = calibrate_run(args.run, args.data, split=args.split, labels=args.labels, images=args.images,
                        batch_size=args.batch_size, skip_bad=args.skip_bad, cache_dir=args.cache_dir,
                        workers=args.workers, progress=not args.quiet, write=False, **_run_kwargs(args))
    path = save_calibration(args.run, cal, args.out)
    print(f"calibrated on {cal.n_galaxies} galaxies over {cal.tta} views: wrote {path}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synth import make_synthetic

    out = make_synthetic(args.dir, args.n, n_test=args.n_test, seed=args.seed, workers=args.workers)
    print(f"wrote a synthetic Kaggle-layout data set of {args.n} galaxies to {out}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from . import pretrained
    from .models import MODELS

    for name in sorted(MODELS):
        spec = MODELS[name]
        print(f"{name:16s} crop {spec.crop:3d} -> {spec.size:3d} px  {spec.description}")
        print(f"{'':16s} recipe: {json.dumps(spec.defaults)}")
        if spec.options:
            print(f"{'':16s} options: {', '.join(spec.options)}")
    print()
    try:
        card = pretrained.card()
    except GzmorphError as e:
        print(f"no pretrained model in this installation ({e})")
        return 0
    test = card["test"]
    print(f"the model inside gzmorph (run name 'pretrained', or leave the run out): {card['name']}, a "
          f"{card['config']['model']} trained on {card['data']}")
    print(f"{'':16s} test RMSE {test['tta1']['rmse']:.4f} (1 view), {test['tta8']['rmse']:.4f} (8 views); the train "
          f"mean scores {test['baseline']['rmse']:.4f}")
    print(f"{'':16s} {pretrained.WEIGHTS} ({card['bytes'] / 2**20:.1f} MiB, SHA-256 {card['sha256']})")
    return 0


def _quiet_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _weights_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--weights", default="best", help="best, last, or a .safetensors file (default: best)")


def _model_run_flags(sp: argparse.ArgumentParser, *, tta: int | None = 1, weights: bool = True) -> None:
    """The flags of every command that runs a trained model: which weights, where, in which precision, how many
    views."""
    if weights:
        _weights_flag(sp)
    sp.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    sp.add_argument("--precision", default="auto", choices=PRECISIONS,
                    help="fp32, or bf16 autocast + channels-last; auto = bf16 where the hardware does it natively "
                         "(default: auto)")
    if tta is not None:
        sp.add_argument("--tta", type=int, default=tta, metavar="N", help=TTA_HELP + f" (default {tta})")


def _interval_flags(sp: argparse.ArgumentParser, where: str) -> None:
    """Calibrated intervals, and continuing a killed job: the flags predict and embed share."""
    sp.add_argument("--interval", type=float, metavar="LEVEL",
                    help=f"each answer's calibrated interval at this confidence level (e.g. 0.9): {where}; needs "
                         f"the run's calibration (`gzmorph calibrate`; the packaged model ships one) and predicts "
                         f"with its views (8 for the packaged model)")
    sp.add_argument("--calibration", metavar="FILE", help="--interval: this calibration file (`gzmorph calibrate "
                    "--out`) instead of the run's own")
    sp.add_argument("--restart", action="store_true", help="discard the partial rows of a killed run of this "
                    "output instead of continuing it (a job killed midway continues when run again)")


def _input_flags(sp: argparse.ArgumentParser) -> None:
    """How predict and embed find their images: folders searched recursively, or a catalogue's columns."""
    sp.add_argument("--recursive", action="store_true", help="search the folder's subfolders too")
    sp.add_argument("--id-column", metavar="NAME", help="a catalogue's id column (default: GalaxyID)")
    sp.add_argument("--path-column", metavar="NAME", help="a catalogue's column of image paths (relative to --images, "
                                                          "else to the catalogue's folder)")
    sp.add_argument("--images", metavar="DIR", help="a catalogue's image folder: files named <id>.jpg (.png, .fits, "
                                                    ".tif ...), or the root its --path-column paths lie in")


def _decode_flags(sp: argparse.ArgumentParser, *, cache: bool = True) -> None:
    """The flags of every command that reads a folder of images."""
    sp.add_argument("--workers", type=int, default=None, help="image-decoding processes (default: all cores)")
    sp.add_argument("--skip-bad", action="store_true",
                    help="leave out missing/unreadable images (counted and logged) instead of stopping")
    sp.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    if cache:
        sp.add_argument("--cache-dir", default=None,
                        help="decoded-image cache (default: $GZMORPH_CACHE or ~/.cache/gzmorph)")
    _quiet_flag(sp)


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    p = argparse.ArgumentParser(prog="gzmorph", description="Galaxy Zoo morphology from galaxy images.")
    p.add_argument("--version", action="version", version=f"gzmorph {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on a Kaggle-layout folder")
    t.add_argument("--resume", metavar="RUN", help="continue the interrupted run in RUN (other options ignored "
                                                   "except --epochs)")
    _config_flags(t)
    t.add_argument("--freeze-layers", type=int, help="seed-resnet50: freeze the first N Keras layers (report: 143)")
    _quiet_flag(t)
    t.set_defaults(func=cmd_train)

    ft = sub.add_parser("finetune", help="fine-tune a trained model (default: the one inside gzmorph) on your own "
                                         "labels: classes, fractions or numbers",
                        description="Fine-tune a trained model (default: the one inside gzmorph) on your own labels. "
                                    "Needs --labels FILE.csv (GalaxyID + your columns: text cells are classes, numbers "
                                    "in [0, 1] fractions, other numbers numbers; empty cells unknown) and --images DIR "
                                    "(<GalaxyID>.jpg, .png, .tif, FITS), or --resume RUN. It says how many galaxies it "
                                    "holds out and reports, per column, how well it learnt beside a baseline that "
                                    "learnt nothing.")
    ft.add_argument("--resume", metavar="RUN", help="continue the interrupted fine-tuning run in RUN")
    _config_flags(ft, finetune=True)
    ft.add_argument("--freeze-layers", type=int, help=argparse.SUPPRESS)
    _quiet_flag(ft)
    ft.set_defaults(func=cmd_finetune)

    e = sub.add_parser("evaluate", help="RMSE of a run on a labelled split, beside the train-mean baseline; a "
                                        "fine-tuned run's columns on a label file")
    e.add_argument("run", nargs="?", default=None, help=RUN_HELP)
    e.add_argument("--data", help="Kaggle-layout folder whose --split is scored (the 37 answers)")
    e.add_argument("--labels", metavar="FILE", help="a fine-tuned run: a CSV of GalaxyID + its columns, every row "
                                                    "scored (accuracy, ROC AUC, confusion; RMSE, R²) beside a "
                                                    "baseline")
    e.add_argument("--images", metavar="DIR", help="--labels: the folder of its images")
    e.add_argument("--out", metavar="DIR", help="folder for the JSON (default: the run folder; for the model inside "
                                                "gzmorph, ./gznet-gz2)")
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument("--limit", type=int)
    e.add_argument("--spread", action="store_true", help=SPREAD_HELP + ", and score how well it ranks the errors")
    _model_run_flags(e)
    _decode_flags(e)
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="predict images into a table: Kaggle's CSV, or named columns as CSV, Parquet "
                                        "or FITS")
    pr.add_argument("paths", nargs="+", metavar="[RUN] IMAGES", help=INPUTS_HELP)
    pr.add_argument("-o", "--output", default="submission.csv",
                    help="the table to write; its suffix picks the format: .csv, .parquet, .fits (default: "
                         "submission.csv); OUTPUT.json beside it records the model, settings and skipped inputs")
    pr.add_argument("--columns", default="auto", choices=["auto", "kaggle", "named"],
                    help="kaggle: GalaxyID + the 37 ClassN.M columns, cumulative down the tree, as Kaggle scores them; "
                         "named: per answer its fraction of the volunteers asked and its Kaggle value, per question "
                         "the most likely answer and how many were asked, the most likely path (see the README's "
                         "table); auto (default): kaggle for a .csv of images, named otherwise")
    pr.add_argument("--shard", metavar="I/N", help="predict only shard I of N (0-based) of the sorted image list; "
                    "combine the N CSVs with `gzmorph merge`. Under torchrun the shard is the process's rank and "
                    "rank 0 merges")
    pr.add_argument("--spread", action="store_true", help=SPREAD_HELP + ": columns of the named table, or beside a "
                    "Kaggle CSV in OUTPUT's stem + .spread.csv")
    _interval_flags(pr, "<answer>_kaggle_lower and _upper columns of the named table")
    _input_flags(pr)
    _model_run_flags(pr)
    _decode_flags(pr, cache=False)
    pr.set_defaults(func=cmd_predict)

    mg = sub.add_parser("merge", help="merge the parts of `predict --shard I/N` (CSVs) or `embed --shard I/N` (.npy)")
    mg.add_argument("parts", nargs="+", help="the N shard CSVs or .npy files (each with its .json beside it)")
    mg.add_argument("-o", "--output", default="submission.csv", help="default: submission.csv, or features for .npy")

    em = sub.add_parser("embed", help="a run's pooled features of every image, for similarity search")
    em.add_argument("paths", nargs="+", metavar="[RUN] IMAGES", help=INPUTS_HELP)
    em.add_argument("-o", "--output", default="features",
                    help="writes OUTPUT.npy (float16 features), OUTPUT.csv (ids, files, answers), OUTPUT.npy.json")
    em.add_argument("--shard", metavar="I/N", help="embed only shard I of N; join the parts with `gzmorph merge`")
    _interval_flags(em, "columns <answer>_lower and _upper of OUTPUT.csv")
    _input_flags(em)
    _model_run_flags(em)
    _decode_flags(em, cache=False)
    em.set_defaults(func=cmd_embed)

    si = sub.add_parser("similar", help="the galaxies most like one (cosine of their features), or the oddest ones")
    si.add_argument("features", help="the .npy written by `gzmorph embed`")
    si.add_argument("--query", help="a GalaxyID of the features, or an image file (embedded by their run)")
    si.add_argument("-k", type=int, default=12, help="neighbours (default 12)")
    si.add_argument("--odd", type=int, metavar="N", help="list the N galaxies farthest from their neighbours")
    si.add_argument("--run", help="the run to embed an image query with (default: the features' own run)")
    si.add_argument("--gallery", metavar="PNG", help="also draw the query and its neighbours (or the --odd galaxies) "
                                                     "into this PNG")
    si.add_argument("--images", help="where the images are now, if they moved since `embed`")
    si.add_argument("--exact", action="store_true", help="exact search even for a large set")
    si.set_defaults(func=cmd_similar)
    mg.set_defaults(func=cmd_merge)

    pl = sub.add_parser("plot", help="learning curves and per-question RMSE of a run, or a gallery of galaxies (PNG)")
    pl.add_argument("run", nargs="?", default=None, help=RUN_HELP)
    pl.add_argument("--out", help="folder for the PNGs (default: the run folder; for the model inside gzmorph, "
                                  "./gznet-gz2, where `evaluate` writes its results too)")
    pl.add_argument("--gallery", action="store_true",
                    help="galaxies with their true and predicted top answers, and the worst-predicted ones")
    pl.add_argument("--data", help="--gallery: Kaggle-layout folder")
    pl.add_argument("--split", default="valid", choices=["train", "valid", "test"], help="--gallery: split shown")
    pl.add_argument("--n", type=int, default=16, help="--gallery: galaxies per grid (default 16)")
    _model_run_flags(pl)
    _quiet_flag(pl)
    pl.set_defaults(func=cmd_plot)

    sv = sub.add_parser("serve", help="a local web page: drop a galaxy image, see the decision tree answered")
    sv.add_argument("run", nargs="?", default=None, help=RUN_HELP)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    sv.add_argument("--index", metavar="FEATURES", help="features of this run (`gzmorph embed`): the page then "
                    "shows the galaxies most like the dropped one")
    sv.add_argument("--images", help="--index: where the indexed images are now, if they moved since `embed`")
    sv.add_argument("--queue-limit", type=int, metavar="N",
                    help="uploads admitted at once (read, decoded, waiting or in the model); the next is answered 503 "
                         "with Retry-After (default: 32; /api/info says the one in force)")
    _model_run_flags(sv, tta=8)
    sv.set_defaults(func=cmd_serve)

    ex = sub.add_parser("export", help="export a run's model to ONNX (checked against PyTorch with onnxruntime)")
    ex.add_argument("run", nargs="?", default=None, help=RUN_HELP)
    ex.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    _weights_flag(ex)
    ex.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    ex.set_defaults(func=cmd_export)

    s = sub.add_parser("synth", help="write a synthetic Kaggle-layout data set (for demos and tests)")
    s.add_argument("dir")
    s.add_argument("--n", type=int, default=1000, help="labelled galaxies (default 1000)")
    s.add_argument("--n-test", type=int, help="unlabelled galaxies (default n/10)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=1)
    s.set_defaults(func=cmd_synth)

    ca = sub.add_parser("calibrate", help="calibrate a run's answer intervals (predict --interval) on held-out "
                                          "labelled galaxies: RUN/calibration.json")
    ca.add_argument("run", nargs="?", default=None, help=RUN_HELP)
    ca.add_argument("--data", help="a Kaggle-layout folder; its --split galaxies calibrate")
    ca.add_argument("--split", default="valid", choices=["valid", "test"], help="(default: valid)")
    ca.add_argument("--labels", metavar="FILE.csv", help="instead of --data: a catalogue with GalaxyID and all 37 "
                                                         "Kaggle columns, of galaxies the run never trained on")
    ca.add_argument("--images", metavar="DIR", help="the folder of --labels' images (<GalaxyID>.jpg ...)")
    ca.add_argument("--out", metavar="FILE", help="where to write it (default: RUN/calibration.json; for the model "
                    "inside gzmorph, whose own calibration ships with it, ./gznet-gz2/calibration.json, used with "
                    "predict --calibration)")
    _model_run_flags(ca, tta=8)
    _decode_flags(ca)
    ca.set_defaults(func=cmd_calibrate)

    m = sub.add_parser("models", help="list the models, their recipes, and the model inside gzmorph")
    m.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_rank = not _is_main_process() and not args.verbose  # torchrun's other ranks: warnings and errors only
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if quiet_rank else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except TrainingStopped as e:
        print(f"gzmorph: stopped: {e}", file=sys.stderr)
        return e.exit_status
    except GzmorphError as e:
        print(f"gzmorph: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumable = args.command in ("predict", "embed")
        print("gzmorph: interrupted" + ("; the same command continues where it stopped (a CSV predict, or embed)"
                                        if resumable else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
