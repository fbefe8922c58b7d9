"""Throughput of each pipeline stage on this machine: one table (stage, device, img/s, what bounds it).

    python benchmarks/throughput.py                  # every stage, default model (gznet)
    python benchmarks/throughput.py --model seed-cnn

Stages:
  decode-cache   building the preprocessed uint8 cache of every shared training image (fresh cache folder)
  warm-start     a new process: import, read catalogues, open the warm cache, build the model, one training step
  train          training steps of the model (augmentation included), batches from the cached array
  predict        `gzmorph predict` from a folder of JPEGs to the CSV (decode in worker processes + model)
Writes benchmarks/results/throughput-<machine>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gzmorph.training.augment import augment_batch, get_augment  # noqa: E402
from gzmorph.config import TrainConfig  # noqa: E402
from gzmorph.data.cache import decode_all  # noqa: E402
from gzmorph.data.images import Preprocess  # noqa: E402
from gzmorph.precision import pick_device  # noqa: E402
from gzmorph.data.batches import to_input  # noqa: E402
from gzmorph.training.loss import masked_loss  # noqa: E402
from gzmorph.models import create_model, get_spec  # noqa: E402
from machine import describe_machine, machine_tag  # noqa: E402

WARM_START = r"""
import time, sys
t0 = time.perf_counter()
import torch, gzmorph
from gzmorph.config import TrainConfig
from gzmorph.data.labelled import load_labelled
from gzmorph.data.images import Preprocess
from gzmorph.data.batches import to_input
from gzmorph.models import create_model, get_spec
data, model_name = sys.argv[1], sys.argv[2]
cfg = TrainConfig(data=data, model=model_name).resolved()
spec = get_spec(model_name)
sets = load_labelled(data, Preprocess(spec.crop, spec.size), ("train", "valid"), progress=False)
model = create_model(model_name)
opt = torch.optim.AdamW(model.parameters(), cfg.lr)
x = to_input(sets["train"].pixels[:cfg.batch_size])
loss = model(x).square().mean(); loss.backward(); opt.step()
print(time.perf_counter() - t0)
"""


def bench_decode(data: Path, prep: Preprocess, cache: Path) -> dict:
    paths = sorted((data / "images_training_rev1").glob("*.jpg"))
    started = time.perf_counter()
    decoded = decode_all(paths, prep, cache_dir=cache, progress=False)
    seconds = time.perf_counter() - started
    return {"stage": "decode-cache", "images": len(paths), "seconds": seconds, "img_per_s": len(paths) / seconds,
            "bad": int((~decoded.ok).sum()),
            "bound": f"JPEG decode (Pillow draft, DCT-domain downscale) in {os.cpu_count()} processes"}


def bench_warm_start(data: Path, model: str, cache: Path, repeats: int = 3) -> dict:
    """A new process up to its first training step, with the cache of exactly the train and valid images present.

    The decode-cache stage caches the whole image folder, which is not the file list training asks for, so a first
    run here fills the cache for the train and valid splits (untimed), and the median of ``repeats`` runs after it is
    the warm start."""
    env = dict(os.environ, GZMORPH_CACHE=str(cache))
    walls, inside = [], []
    for k in range(repeats + 1):
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", WARM_START, str(data), model], env=env, capture_output=True,
                             text=True, check=True)
        if k:
            walls.append(time.perf_counter() - started)
            inside.append(float(out.stdout.strip().splitlines()[-1]))
    return {"stage": "warm-start", "seconds": float(np.median(walls)), "runs_seconds": walls,
            "in_process_seconds": float(np.median(inside)),
            "bound": "torch import (~0.7 s) and torch.optim's first import of torch._dynamo (~0.8 s)"}


def bench_train(model_name: str, device: torch.device, steps: int, pixels: np.ndarray) -> dict:
    cfg = TrainConfig(data="", model=model_name).resolved()
    model = create_model(model_name).to(device).train()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), cfg.lr)
    aug = get_augment(cfg.augment)
    bs = cfg.batch_size
    y, m = torch.rand(bs, 37, device=device), torch.ones(bs, 37, device=device)
    rng = np.random.default_rng(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    for i in range(steps + 3):
        if i == 3:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        idx = np.sort(rng.choice(len(pixels), bs, replace=False))
        x = augment_batch(to_input(pixels[idx], device, device.type == "cuda"), aug)
        with autocast:
            pred = model(x)
        loss = masked_loss(pred.float(), y, m, cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"stage": "train", "model": model_name, "batch_size": bs, "images": steps * bs, "seconds": seconds,
            "img_per_s": steps * bs / seconds,
            "bound": "convolutions (forward + backward)" if device.type == "cpu" else "GPU kernels"}


def bench_predict(run_model: str, data: Path, device: torch.device, tmp: Path) -> dict:
    # A run folder with an untrained model: speed does not depend on the weights.
    from gzmorph import runs

    run = tmp / "run"
    run.mkdir()
    runs.write_config(run, TrainConfig(data=str(data), out=str(run), model=run_model).resolved())
    runs.save_weights(run / runs.BEST, create_model(run_model))
    images = data / "images_test_rev1"
    n = len(list(images.glob("*.jpg")))
    out = tmp / "submission.csv"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gzmorph.cli", "predict", str(run), str(images), "-o", str(out), "-q",
                    "--device", str(device)], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    return {"stage": "predict", "model": run_model, "images": n, "seconds": seconds, "img_per_s": n / seconds,
            "bound": "process start + model load included; decode and model share the cores"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "galaxy-zoo"))
    p.add_argument("--model", default="gznet")
    p.add_argument("--device", default="auto")
    p.add_argument("--train-steps", type=int, default=30)
    args = p.parse_args()
    data, device = Path(args.data), pick_device(args.device)
    spec = get_spec(args.model)
    prep = Preprocess(spec.crop, spec.size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gzmorph-throughput-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        rows.append(bench_decode(data, prep, cache))
        rows.append(bench_warm_start(data, args.model, cache))
        pixels = np.load(next(cache.glob("*.npy")), mmap_mode="r")
        rows.append(bench_train(args.model, device, args.train_steps, pixels))
        rows.append(bench_predict(args.model, data, device, tmp))
    machine = describe_machine(str(device))
    print(f"machine: {machine['cpu']}, {machine['cores']} cores" + (f", {machine['gpu']}" if "gpu" in machine else "")
          + f", torch {machine['torch']}; model {args.model} ({spec.crop} px -> {spec.size} px)")
    print(f"{'stage':13s} {'device':6s} {'img/s':>9s} {'seconds':>8s}  bound")
    for r in rows:
        rate = f"{r['img_per_s']:9.0f}" if "img_per_s" in r else f"{'-':>9s}"
        dev = "cpu" if r["stage"] in ("decode-cache", "warm-start") else device.type
        print(f"{r['stage']:13s} {dev:6s} {rate} {r['seconds']:8.2f}  {r['bound']}")
    out = HERE / "results" / f"throughput-{machine_tag(machine)}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"benchmark": "throughput", "machine": machine, "model": args.model, "rows": rows,
                               "command": "python " + " ".join(sys.argv)}, indent=2) + "\n")
    print(f"wrote {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
