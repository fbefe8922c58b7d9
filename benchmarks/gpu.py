"""What gzmorph does with a GPU, measured side by side in one run that fits 8 minutes of a lent H200 (issue 19).

    # here: the labelled sample at 141 px in one 34 MiB file (.gpu/ is git-ignored; the run tool carries it)
    .venv/bin/python ../shared/tools/device_data.py .gpu/gz141.tar.gz
    # on the device (carry [".gpu"]): the JSON goes to $OUT, which comes back
    mkdir -p /tmp/d && tar -xzf .gpu/gz141.tar.gz -C /tmp/d && \\
        PYTHONPATH=src python benchmarks/gpu.py --data /tmp/d/galaxy-zoo-141 --results $OUT
    # here, after: copy it beside the other results
    cp <files_at>/gpu-*.json benchmarks/results/

Stages, in this order (the JSON is rewritten after each one, so a run cut short keeps what it measured; a stage
that would not fit the --minutes left is skipped and says so):
  model    the training step alone -- forward, masked loss, backward, AdamW, weight average -- on one batch already
           on the device, at batch 64, at the CUDA recipe's batch (256) and at 1024; the same with the
           augmentation; the forward pass alone at batch 256
  train    gzmorph.train with the CUDA recipe (which it picks by itself on CUDA) for 30 epochs: whole-epoch img/s
           against the step alone at the same batch, each epoch split into train / validate / checkpoint, test
           RMSE (1, 8 views)
  predict  `gzmorph predict` and `gzmorph embed`, whole commands, on N real-size JPEGs (the sample's images put back
           at 424 px and repeated under new names), beside their floors: the decoder alone (same workers, same
           chunks; and again through pipes instead of shared memory) and the forward passes alone; torchvision's
           GPU JPEG decoder where it imports
  batch64  the same training at batch 64 (the CPU recipe, lr 2e-3): the CUDA recipe's test RMSE beside it, at equal
           epochs
  compile  torch.compile of the training step (default mode, and "reduce-overhead" = CUDA graphs): seconds to
           compile, then img/s against eager

--quick shrinks every stage to seconds (the tests run it on the CPU, on synthetic galaxies: a script that
runs once on a borrowed GPU must not fail there on a typo). Writes <results>/gpu-<machine>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import gzmorph  # noqa: E402
from gzmorph import runs  # noqa: E402
from gzmorph.config import TrainConfig  # noqa: E402
from gzmorph.data.batches import to_input  # noqa: E402
from gzmorph.data.decoder import decode_chunks, shared_memory_works  # noqa: E402
from gzmorph.data.images import Preprocess  # noqa: E402
from gzmorph.inference.evaluate import evaluate  # noqa: E402
from gzmorph.inference.tta import predict_answers  # noqa: E402
from gzmorph.models import get_spec, resolve_recipe  # noqa: E402
from gzmorph.precision import pick_device, resolve  # noqa: E402
from gzmorph.training.augment import augment_batch, get_augment  # noqa: E402
from gzmorph.training.loop import build_parts  # noqa: E402
from gzmorph.training.loss import masked_loss  # noqa: E402
from machine import describe_machine, machine_tag  # noqa: E402

STAGES = ("model", "train", "predict", "batch64", "compile")
MODEL = "gznet"
# Rough seconds each stage takes on an H200 (from the figures at today's speed, so upper bounds once it is
# faster): a stage is skipped when fewer than these are left, so that the stages after it still get their turn.
# gznet's CPU recipe: what the CUDA recipe is judged against, at the same epochs
BATCH64 = {"batch_size": 64, "lr": 2e-3, "warmup_epochs": 1}
NEEDS = {"model": 40, "train": 60, "predict": 120, "batch64": 150, "compile": 120}


@dataclass(frozen=True)
class Sizes:
    """How much of everything each stage runs: the full run, or --quick's seconds-long one."""

    steps: int = 30  # timed optimizer steps per variant (after 3 untimed)
    epochs: int | None = 30  # both trainings, at equal epochs: as the CPU rows gznet/b256-30ep and gznet/b64 did
    limit: int | None = None  # galaxies per split; None: all
    images: int = 100_000  # predict / embed files: the 100k, enough that start-up is a small share
    tta: tuple[int, ...] = (1, 8)


QUICK = Sizes(steps=2, epochs=2, limit=24, images=300)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step_alone(device: torch.device, batch: int, steps: int, *, augment: bool, compile_mode: str | None = None,
                     lr: float = 1e-3) -> dict:
    """The loop's optimizer step (training/loop.py) with nothing else: one batch of random pixels already on the
    device, the model, the masked loss, backward, AdamW, the weight average; with ``augment`` the batch is also
    augmented on the device each step, as the loop does."""
    cfg = resolve_recipe(TrainConfig(data="", model=MODEL, batch_size=batch, lr=lr), device.type)
    policy = resolve("auto", device)
    parts = build_parts(cfg, policy)
    net, opt, average = parts.net, parts.optimizer, parts.average
    model = torch.compile(net, mode=compile_mode) if compile_mode else net
    spec = get_spec(MODEL)
    pixels = np.random.default_rng(0).integers(0, 256, (batch, spec.size, spec.size, 3), dtype=np.uint8)
    x0 = to_input(pixels, device, policy.channels_last)
    y, m = torch.rand(batch, 37, device=device), torch.ones(batch, 37, device=device)
    aug, gen = get_augment(cfg.augment), torch.Generator().manual_seed(0)
    model.train()

    def step() -> None:
        x = augment_batch(x0, aug, gen).contiguous(memory_format=policy.memory_format) if augment else x0
        with policy.autocast():
            pred = model(x)
        masked_loss(pred.float(), y, m, cfg.loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if average is not None:
            average.update(net)

    started = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - started
    for _ in range(2):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - started
    return {"batch_size": batch, "augment": augment, "precision": policy.name, "compile": compile_mode,
            "img_per_s": steps * batch / seconds, "seconds": seconds, "steps": steps, "first_step_seconds": first}


def forward_alone(device: torch.device, batch: int, repeats: int) -> dict:
    cfg = resolve_recipe(TrainConfig(data="", model=MODEL), device.type)
    policy = resolve("auto", device)
    net = runs.build_model(cfg)
    policy.place(net)
    net.eval()
    spec = get_spec(MODEL)
    pixels = np.random.default_rng(0).integers(0, 256, (batch, spec.size, spec.size, 3), dtype=np.uint8)
    x = to_input(pixels, device, policy.channels_last)
    with torch.no_grad(), policy.autocast():
        net(x)
        _sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            net(x)
        _sync(device)
    seconds = time.perf_counter() - started
    return {"batch_size": batch, "precision": policy.name, "img_per_s": repeats * batch / seconds, "seconds": seconds}


def stage_model(device: torch.device, sizes: Sizes) -> dict:
    big = resolve_recipe(TrainConfig(data="", model=MODEL), device.type).batch_size
    rows = []
    # and 1024 on a GPU: how far the recipe's batch (chosen for accuracy, see models/gznet.py) is from its ceiling
    for batch in sorted({64, big} | ({1024} if device.type == "cuda" else set())):
        for augment in (False, True):
            rows.append(train_step_alone(device, batch, sizes.steps, augment=augment))
            r = rows[-1]
            print(f"  step alone, batch {batch}{' + augmentation' if augment else ''}: {r['img_per_s']:,.0f} img/s")
    infer = forward_alone(device, 256, sizes.steps)
    print(f"  forward alone, batch 256: {infer['img_per_s']:,.0f} img/s")
    return {"train_steps": rows, "forward": infer}


def _train(data: Path, run: Path, device: torch.device, sizes: Sizes, **overrides) -> dict:
    """One gzmorph.train run, then what its metrics say about each epoch and its test RMSE."""
    cfg = TrainConfig(data=str(data), out=str(run), model=MODEL, device=str(device), limit=sizes.limit,
                      **({"epochs": sizes.epochs} if sizes.epochs else {}), **overrides)
    started = time.perf_counter()
    gzmorph.train(cfg, progress=False)
    wall = time.perf_counter() - started
    used = runs.read_config(run)  # the recipe as resolved on this device: batch, rate, warm-up
    rows = runs.read_metrics(run)
    n_train = _train_images(data, used)
    epochs = len(rows)
    train_s = sum(r["train_seconds"] for r in rows)
    valid_s = sum(r["valid_seconds"] for r in rows)
    save_s = sum(r.get("save_seconds", 0.0) for r in rows)
    epoch_s = sum(r["seconds"] for r in rows)
    # The first epoch carries one-off costs (cuDNN's algorithm search, the set's copy to the device): shown apart.
    steady = rows[1:] or rows
    out = {"batch_size": used.batch_size, "lr": used.lr, "warmup_epochs": used.warmup_epochs, "epochs": epochs,
           "train_images": n_train, "wall_seconds": wall, "epoch_seconds": epoch_s, "train_seconds": train_s,
           "valid_seconds": valid_s, "save_seconds": save_s,
           "setup_seconds": wall - epoch_s,  # reading the catalogue, decoding or opening the cache, building
           "epoch_img_per_s": n_train * epochs / epoch_s,
           "steady_epoch_img_per_s": n_train * len(steady) / sum(r["seconds"] for r in steady),
           "train_img_per_s": n_train * epochs / train_s,
           "first_epoch_seconds": rows[0]["seconds"],
           "non_training_share": (epoch_s - train_s) / epoch_s,
           "valid_rmse": rows[-1]["valid_rmse"]}
    out["test"] = {}
    for tta in sizes.tta:
        r = evaluate(run, data, "test", tta=tta, device=str(device), limit=sizes.limit, write=False, progress=False)
        out["test"][f"tta{tta}"] = r["rmse"]
    return out


def _train_images(data: Path, cfg: TrainConfig) -> int:
    from gzmorph.data.labelled import limit_rows, load_catalogue_splits
    from gzmorph.data.layout import open_layout

    cats = load_catalogue_splits(open_layout(data), use_partial=cfg.use_partial, valid_fraction=cfg.valid_fraction,
                                 seed=cfg.seed)
    splits = ("train", "valid") if cfg.train_on_valid else ("train",)
    return sum(len(limit_rows(cats[s], cfg.limit, cfg.seed, s)) for s in splits)


def stage_train(data: Path, tmp: Path, device: torch.device, sizes: Sizes, model_rows: dict | None) -> dict:
    out = _train(data, tmp / "run-recipe", device, sizes)
    alone = [r for r in (model_rows or {}).get("train_steps", []) if r["batch_size"] == out["batch_size"]]
    for r in alone:  # the loop against the step alone at the same batch: what the rest of the loop costs
        key = "over_step_with_augmentation" if r["augment"] else "over_step_alone"
        out[key] = out["steady_epoch_img_per_s"] / r["img_per_s"]
    print(f"  train, batch {out['batch_size']}: {out['epochs']} epochs of {out['train_images']} galaxies, "
          f"{out['steady_epoch_img_per_s']:,.0f} img/s whole epochs after the first; "
          f"{out['non_training_share']:.1%} not training; test RMSE {out['test']['tta1']:.4f} (1 view)")
    return out


def _upscale(job: tuple[str, str]) -> None:
    from PIL import Image

    src, dst = job
    with Image.open(src) as im:
        im.convert("RGB").resize((424, 424), Image.Resampling.BICUBIC).save(dst, "JPEG", quality=90)


def real_size_jpegs(data: Path, folder: Path, n: int, workers: int) -> list[Path]:
    """``n`` 424 px JPEGs under ``folder``: the sample's images put back at the Kaggle size (the sample travels at
    141 px), each repeated under new names (hard links: GalaxyIDs 1..n, one file each, as predict requires)."""
    sources = sorted((data / "images_training_rev1").glob("*.jpg"))
    bases = folder / "base"
    bases.mkdir(parents=True)
    jobs = [(str(p), str(bases / p.name)) for p in sources[:n]]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_upscale, jobs, chunksize=64))
    images = folder / "images"
    images.mkdir()
    paths = []
    for k in range(n):
        path = images / f"{k + 1}.jpg"
        os.link(jobs[k % len(jobs)][1], path)
        paths.append(path)
    return paths


def _cli(args: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gzmorph.cli", *args], capture_output=True, text=True)
    if done.returncode:  # the command's own error, not subprocess's "returned non-zero exit status 1"
        raise RuntimeError(f"gzmorph {args[0]} exited {done.returncode}: {done.stderr[-1500:]}")
    return time.perf_counter() - started


def _failure(e: BaseException) -> dict:
    """A stage or a measurement that failed: recorded in the JSON, and the run goes on to the next one (a lent GPU
    comes once; a typo in one stage must not cost the figures of the others)."""
    return {"failed": f"{type(e).__name__}: {e}"[:2000],
            "where": "".join(traceback.format_tb(e.__traceback__)[-3:])[-2000:]}


def stage_predict(data: Path, tmp: Path, run: Path, device: torch.device, sizes: Sizes, workers: int) -> dict:
    paths = real_size_jpegs(data, tmp / "jpegs", sizes.images, workers)
    folder = paths[0].parent
    loaded = runs.load_model(run, "best", device, "auto")
    prep = loaded.prep
    n = len(paths)
    out = {"images": n, "workers": workers, "image_side": 424, "precision": loaded.policy.name}
    started = time.perf_counter()
    pixels = np.concatenate([c.pixels for c in decode_chunks(paths, prep, chunk=256, workers=workers)])
    decode_s = time.perf_counter() - started
    out["ring_opened"] = shared_memory_works(256, prep)  # whether "decode alone" above went through the ring
    # The same decode with the chunks pickled through the pool's pipes (what the decoder falls back to without
    # shared memory): what the shared ring buys with this many workers.
    started = time.perf_counter()
    for _ in decode_chunks(paths, prep, chunk=256, workers=workers, shared_memory=False):
        pass
    pipes_s = time.perf_counter() - started
    predict_answers(loaded, pixels[:256])  # warm: cuDNN's algorithm search
    _sync(device)
    started = time.perf_counter()
    predict_answers(loaded, pixels, 256)
    forward_s = time.perf_counter() - started
    out["floor"] = {"decode_seconds": decode_s, "decode_img_per_s": n / decode_s,
                    "decode_through_pipes_img_per_s": n / pipes_s, "forward_seconds": forward_s,
                    "forward_img_per_s": n / forward_s,
                    # decoding and the forward passes overlap in predict: the slower one is the floor
                    "seconds": max(decode_s, forward_s)}
    dev = ["--device", str(device), "-q", "--workers", str(workers)]
    predict_s = _cli(["predict", str(run), str(folder), "-o", str(tmp / "predict.csv"), *dev])
    record = json.loads((tmp / "predict.csv.json").read_text())
    out["predict"] = {"seconds": predict_s, "img_per_s": n / predict_s, "in_process_seconds": record["seconds"],
                      "over_floor": predict_s / out["floor"]["seconds"]}
    embed_s = _cli(["embed", str(run), str(folder), "-o", str(tmp / "features"), *dev])
    out["embed"] = {"seconds": embed_s, "img_per_s": n / embed_s, "over_floor": embed_s / out["floor"]["seconds"]}
    for k in ("predict", "embed"):
        print(f"  {k}: {n:,} JPEGs of 424 px in {out[k]['seconds']:.1f} s = {out[k]['img_per_s']:,.0f} img/s, "
              f"{out[k]['over_floor']:.2f}x the floor (decode alone {n / decode_s:,.0f} img/s, forward alone "
              f"{n / forward_s:,.0f} img/s)")
    try:
        out["gpu_jpeg_decode"] = gpu_jpeg_decode(paths[: min(n, 20_000)], prep, device)
    except Exception as e:  # nvJPEG refusing a file or a batch is a finding about it, not about predict
        out["gpu_jpeg_decode"] = _failure(e)
    return out


def gpu_jpeg_decode(paths: list[Path], prep: Preprocess, device: torch.device) -> dict:
    """torchvision's nvJPEG decoder, batched, then the crop and the area resize on the GPU: a second decoder worth
    having only if it beats the CPU workers. Measured only where torchvision imports (a CUDA machine)."""
    if device.type != "cuda":
        return {"skipped": "not a CUDA device"}
    try:
        from torchvision.io import decode_jpeg
    except Exception as e:  # the CPU install has no torchvision, and the index's CUDA build fails to import there
        return {"skipped": f"torchvision does not import: {e}"}
    data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    side = 424
    lo = (side - prep.crop) // 2  # prep.crop is in pixels of the 424 px field

    def run(chunk: list[torch.Tensor]) -> torch.Tensor:
        images = torch.stack(decode_jpeg(chunk, device=device))  # (B, 3, 424, 424) uint8
        crop = images[:, :, lo:side - lo, lo:side - lo].float()
        return torch.nn.functional.interpolate(crop, size=(prep.size, prep.size), mode="area").to(torch.uint8)

    run(data[:256])
    _sync(device)
    started = time.perf_counter()
    for k in range(0, len(data), 256):
        run(data[k:k + 256])
    _sync(device)
    seconds = time.perf_counter() - started
    return {"images": len(data), "seconds": seconds, "img_per_s": len(data) / seconds,
            "note": "file bytes already in memory; crop + area resize on the GPU included"}


def stage_batch64(data: Path, tmp: Path, device: torch.device, sizes: Sizes, recipe: dict | None) -> dict:
    out = _train(data, tmp / "run-batch64", device, sizes, **BATCH64)
    if recipe and "test" in recipe:
        out["recipe_minus_batch64"] = {k: recipe["test"][k] - out["test"][k] for k in out["test"]}
        out["speedup_recipe_over_batch64"] = recipe["steady_epoch_img_per_s"] / out["steady_epoch_img_per_s"]
    print(f"  batch 64: {out['steady_epoch_img_per_s']:,.0f} img/s whole epochs; test RMSE {out['test']['tta1']:.4f} "
          f"(1 view), {out['test']['tta8']:.4f} (8 views)")
    return out


def stage_compile(device: torch.device, sizes: Sizes, save=lambda partial: None) -> dict:
    batch = resolve_recipe(TrainConfig(data="", model=MODEL), device.type).batch_size
    eager = train_step_alone(device, batch, sizes.steps, augment=True)
    out = {"batch_size": batch, "eager_img_per_s": eager["img_per_s"], "modes": {}}
    save(out)
    # CUDA graphs (reduce-overhead) need a CUDA device; on the CPU only the default mode is meaningful
    for mode in ("default", "reduce-overhead") if device.type == "cuda" else ("default",):
        try:
            r = train_step_alone(device, batch, sizes.steps, augment=True, compile_mode=mode)
        except Exception as e:  # a compiler failure is a finding, not a reason to lose the other figures
            out["modes"][mode] = _failure(e)
            save(out)
            continue
        out["modes"][mode] = {"compile_seconds": r["first_step_seconds"], "img_per_s": r["img_per_s"],
                              "speedup": r["img_per_s"] / eager["img_per_s"]}
        print(f"  torch.compile {mode}: {r['first_step_seconds']:.0f} s to compile, {r['img_per_s']:,.0f} img/s "
              f"({r['img_per_s'] / eager['img_per_s']:.2f}x eager)")
        save(out)  # compiling can take minutes: what one mode measured survives the next one's kill
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "galaxy-zoo")
    p.add_argument("--device", default="auto")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--minutes", type=float, default=8.0, help="the time this run may take; stages that would not "
                                                              "fit what is left are skipped")
    p.add_argument("--results", type=Path, default=HERE / "results", help="the folder of gpu-<machine>.json")
    p.add_argument("--workers", type=int, default=min(len(os.sched_getaffinity(0)), 16))
    p.add_argument("--quick", action="store_true", help="seconds per stage, to check the script (e.g. on a CPU)")
    args = p.parse_args()
    began = time.perf_counter()
    device = pick_device(args.device)
    sizes = QUICK if args.quick else Sizes()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    machine = describe_machine(str(device))
    machine["cpu_workers"] = args.workers
    result = {"benchmark": "gpu", "machine": machine, "model": MODEL, "quick": args.quick,
              "command": "python " + " ".join(sys.argv), "stages": {}}
    out = args.results / f"gpu-{machine_tag(machine)}.json"
    args.results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gzmorph-gpu-") as tmp:
        tmp = Path(tmp)
        os.environ["GZMORPH_CACHE"] = str(tmp / "cache")  # each run decodes afresh, into its own cache
        for stage in STAGES:
            if stage not in args.stages:
                continue
            left = args.minutes * 60 - (time.perf_counter() - began)
            if left < (0 if args.quick else NEEDS[stage]):
                result["stages"][stage] = {"skipped": f"{left:.0f} s left, about {NEEDS[stage]} s needed"}
                print(f"{stage}: skipped ({left:.0f} s left)")
                out.write_text(json.dumps(result, indent=2) + "\n")
                continue
            print(f"{stage}:", flush=True)
            started = time.perf_counter()
            done = result["stages"]

            def save(partial: dict) -> None:
                done[stage] = partial
                out.write_text(json.dumps(result, indent=2) + "\n")

            try:
                if stage == "model":
                    done[stage] = stage_model(device, sizes)
                elif stage == "train":
                    done[stage] = stage_train(args.data, tmp, device, sizes, done.get("model"))
                elif stage == "predict":
                    run = tmp / "run-recipe"
                    if not (run / runs.BEST).exists():  # predict's speed does not depend on the weights
                        _train(args.data, run, device, replace(sizes, epochs=1))
                    done[stage] = stage_predict(args.data, tmp, run, device, sizes, args.workers)
                elif stage == "batch64":
                    done[stage] = stage_batch64(args.data, tmp, device, sizes, done.get("train"))
                elif stage == "compile":
                    done[stage] = stage_compile(device, sizes, save)
            except Exception as e:
                done[stage] = _failure(e)
                print(f"  {stage} failed: {done[stage]['failed']}", flush=True)
            done[stage]["stage_seconds"] = time.perf_counter() - started
            result["seconds"] = time.perf_counter() - began
            out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} after {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
