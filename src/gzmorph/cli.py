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

from .config import PRECISIONS, TTA_VIEWS, TrainConfig
from .errors import BadArgument, GzmorphError

log = logging.getLogger("gzmorph")

TTA_HELP = (f"test-time augmentation: average over N views, one of {', '.join(map(str, TTA_VIEWS))} (up to 8: the "
            f"square's symmetries; 16 and 32 add those of copies turned between quarter turns)")
RUN_HELP = "a run folder, or 'pretrained' for the model inside gzmorph (the default)"
SPREAD_HELP = "each answer's standard deviation over the --tta views (how sure the model is)"
# Config fields whose flag is not simply --field-name.
_SPECIAL_FLAGS = {"use_partial": "--no-partial", "model_options": "--option", "mask_questions": "--mask-question",
                  "columns": "--column"}
_NOT_FLAGS = ("task",)  # set by gzmorph itself


def _config_flags(sp: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, with its help, type and choices. Every default is None ("not given"), so
    the config's own default or the model's recipe applies; see :func:`_config_from_args`."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_FLAGS:
            continue
        help_text, choices = f.metadata.get("help", ""), f.metadata.get("choices")
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
    from .inference.evaluate import evaluate, format_report

    result = evaluate(args.run, args.data, args.split, limit=args.limit, batch_size=args.batch_size,
                      skip_bad=args.skip_bad, cache_dir=args.cache_dir, workers=args.workers,
                      progress=not args.quiet, spread=args.spread, **_run_kwargs(args))
    print(format_report(result))
    print(f"wrote {Path(result['run']) / ('eval-' + args.split + '.json')}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference.predict import predict

    if len(args.paths) > 2:
        raise BadArgument(f"predict takes [RUN] IMAGES, got {len(args.paths)} paths: {' '.join(args.paths)}")
    run, images = (None, args.paths[0]) if len(args.paths) == 1 else args.paths
    s = predict(run, images, args.output, batch_size=args.batch_size, workers=args.workers,
                skip_bad=args.skip_bad, shard=args.shard, progress=not args.quiet, spread=args.spread,
                **_run_kwargs(args))
    print(f"wrote {s.out}: {s.n_predicted} galaxies in {s.seconds:.1f} s ({s.images_per_second:.0f} img/s)"
          + (f"; skipped {len(s.skipped)} unreadable image(s), listed in {s.out}.json" if s.skipped else ""))
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
          + (f"; {len(s.skipped)} image(s) were skipped, listed in {s.out}.json" if s.skipped else ""))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from .inference.embed import embed

    if len(args.paths) > 2:
        raise BadArgument(f"embed takes [RUN] IMAGES, got {len(args.paths)} paths: {' '.join(args.paths)}")
    run, images = (None, args.paths[0]) if len(args.paths) == 1 else args.paths
    s = embed(run, images, args.output, which=args.weights, batch_size=args.batch_size, workers=args.workers,
              device=args.device, precision=args.precision, skip_bad=args.skip_bad, shard=args.shard,
              progress=not args.quiet)
    print(f"wrote {s.out} ({s.n} galaxies x {s.dim} features, float16), its .csv and .npy.json in {s.seconds:.1f} s "
          f"({s.images_per_second:.0f} img/s)"
          + (f"; skipped {len(s.skipped)} unreadable image(s), listed in {s.out}.json" if s.skipped else ""))
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    from .inference import similar as sim

    features = sim.open_features(args.features)
    if (args.query is None) == (args.odd is None):
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

        if not args.data:
            raise BadArgument("plot --gallery needs --data DIR (the Kaggle-layout folder whose galaxies to show)")
        paths = plot_gallery(args.run, args.data, split=args.split, n=args.n, out_dir=args.out,
                             progress=not args.quiet, **_run_kwargs(args))
    else:
        from .inference.plots import plot_run

        paths = plot_run(args.run, out_dir=args.out)
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .inference.serve import serve

    serve(args.run, host=args.host, port=args.port, index=args.index, images=args.images, **_run_kwargs(args))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .inference.export import export_onnx

    s = export_onnx(args.run, args.onnx, which=args.weights, opset=args.opset)
    print(f"wrote {s.out} (input {s.input_shape} uint8-scaled float, output (N, 37)); onnxruntime matches "
          f"PyTorch to {s.max_abs_diff:.2e} on {s.n_checked} test images" if s.max_abs_diff is not None else
          f"wrote {s.out} (onnxruntime not installed: outputs not checked; pip install 'gzmorph[onnx]')")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synth import make_synthetic

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


def _quiet_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _model_run_flags(sp: argparse.ArgumentParser, *, tta: int | None = 1, weights: bool = True) -> None:
    """The flags of every command that runs a trained model: which weights, where, in which precision, how many
    views."""
    if weights:
        sp.add_argument("--weights", default="best", help="best, last, or a .safetensors file (default: best)")
    sp.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    sp.add_argument("--precision", default="auto", choices=PRECISIONS,
                    help="fp32, or bf16 autocast + channels-last; auto = bf16 where the hardware does it natively "
                         "(default: auto)")
    if tta is not None:
        sp.add_argument("--tta", type=int, default=tta, metavar="N", help=TTA_HELP + f" (default {tta})")


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
                                         "labels: classes, fractions or numbers")
    ft.add_argument("--resume", metavar="RUN", help="continue the interrupted fine-tuning run in RUN")
    _config_flags(ft)
    ft.add_argument("--freeze-layers", type=int, help=argparse.SUPPRESS)
    _quiet_flag(ft)
    ft.set_defaults(func=cmd_finetune)

    e = sub.add_parser("evaluate", help="RMSE of a run on a labelled split, beside the train-mean baseline")
    e.add_argument("run", nargs="?", default=None, help=RUN_HELP)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument("--limit", type=int)
    e.add_argument("--spread", action="store_true", help=SPREAD_HELP + ", and score how well it ranks the errors")
    _model_run_flags(e)
    _decode_flags(e)
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="predict a folder of images into a Kaggle submission CSV")
    pr.add_argument("paths", nargs="+", metavar="[RUN] IMAGES",
                    help="the run (default: the model inside gzmorph), then a folder of images, one image, or a .txt "
                         "list of image paths")
    pr.add_argument("-o", "--output", default="submission.csv")
    pr.add_argument("--shard", metavar="I/N", help="predict only shard I of N (0-based) of the sorted image list; "
                    "combine the N CSVs with `gzmorph merge`. Under torchrun the shard is the process's rank and "
                    "rank 0 merges")
    pr.add_argument("--spread", action="store_true", help=SPREAD_HELP + ", written to OUTPUT's stem + .spread.csv")
    _model_run_flags(pr)
    _decode_flags(pr, cache=False)
    pr.set_defaults(func=cmd_predict)

    mg = sub.add_parser("merge", help="merge the parts of `predict --shard I/N` (CSVs) or `embed --shard I/N` (.npy)")
    mg.add_argument("parts", nargs="+", help="the N shard CSVs or .npy files (each with its .json beside it)")
    mg.add_argument("-o", "--output", default="submission.csv", help="default: submission.csv, or features for .npy")

    em = sub.add_parser("embed", help="a run's pooled features of every image, for similarity search")
    em.add_argument("paths", nargs="+", metavar="[RUN] IMAGES",
                    help="the run (default: the model inside gzmorph), then a folder of images, one image, or a .txt "
                         "list of image paths")
    em.add_argument("-o", "--output", default="features",
                    help="writes OUTPUT.npy (float16 features), OUTPUT.csv (ids, files, answers), OUTPUT.npy.json")
    em.add_argument("--shard", metavar="I/N", help="embed only shard I of N; join the parts with `gzmorph merge`")
    _model_run_flags(em, tta=None)
    _decode_flags(em, cache=False)
    em.set_defaults(func=cmd_embed)

    si = sub.add_parser("similar", help="the galaxies most like one (cosine of their features), or the oddest ones")
    si.add_argument("features", help="the .npy written by `gzmorph embed`")
    si.add_argument("--query", help="a GalaxyID of the features, or an image file (embedded by their run)")
    si.add_argument("-k", type=int, default=12, help="neighbours (default 12)")
    si.add_argument("--odd", type=int, metavar="N", help="list the N galaxies farthest from their neighbours")
    si.add_argument("--run", help="the run to embed an image query with (default: the features' own run)")
    si.add_argument("--gallery", metavar="PNG", help="also draw the query and its neighbours into this PNG")
    si.add_argument("--images", help="where the images are now, if they moved since `embed`")
    si.add_argument("--exact", action="store_true", help="exact search even for a large set")
    si.set_defaults(func=cmd_similar)
    mg.set_defaults(func=cmd_merge)

    pl = sub.add_parser("plot", help="learning curves and per-question RMSE of a run, or a gallery of galaxies (PNG)")
    pl.add_argument("run", nargs="?", default=None, help=RUN_HELP)
    pl.add_argument("--out", help="folder for the PNGs (default: the run folder)")
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
    _model_run_flags(sv, tta=8)
    sv.set_defaults(func=cmd_serve)

    ex = sub.add_parser("export", help="export a run's model to ONNX (checked against PyTorch with onnxruntime)")
    ex.add_argument("run", nargs="?", default=None, help=RUN_HELP)
    ex.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    ex.add_argument("--weights", default="best", help="best, last, or a .safetensors file (default: best)")
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
