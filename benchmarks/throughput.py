"""Throughput of each pipeline stage on this machine, side by side in one run (these machines are shared and noisy:
compare the ratios, with the absolute figures beside them).

    python benchmarks/throughput.py                    # every stage
    python benchmarks/throughput.py --stages predict   # one or more of: decode warm-start models batch compile predict
    python benchmarks/throughput.py --stages predict --run pretrained   # the model inside gzmorph, whole commands
    git worktree add /tmp/v0.1 b052136 && python benchmarks/throughput.py --baseline /tmp/v0.1/src  # vs v0.1

Stages:
  decode-cache   building the preprocessed uint8 cache of every shared training image (fresh cache folder)
  warm-start     a new process: import, read catalogues, open the warm cache, build the model, one training step
  models         every registered model: train steps (augmentation, forward, backward, AdamW) and inference
                 forward passes, fp32 vs bf16 autocast x NCHW vs channels-last
  batch          the default model's train step under `--precision auto` at batch 64 to 512: what a larger batch
                 buys per image on these cores (the CUDA recipe's batch 256 scores within 0.002 of 64, accuracy.py)
  compile        torch.compile (inductor) of the default model's bf16 train step: compile time, then steady img/s
  predict        `gzmorph predict` on 5,985 real JPEGs (the 1,197 Kaggle test images listed 5 times), fp32 and
                 bf16, beside its floor: the decoder alone (same workers) + the forward passes alone
Writes benchmarks/results/throughput-<machine>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gzmorph.config import TrainConfig  # noqa: E402
from gzmorph.data.batches import to_input  # noqa: E402
from gzmorph.data.cache import decode_all  # noqa: E402
from gzmorph.data.decoder import decode_chunks, shared_memory_works  # noqa: E402
from gzmorph.data.images import Preprocess  # noqa: E402
from gzmorph.models import create_model, get_spec, list_models, resolve_recipe  # noqa: E402
from gzmorph.precision import Policy, native_bf16, pick_device, resolve  # noqa: E402
from gzmorph.training.augment import augment_batch, get_augment  # noqa: E402
from gzmorph.training.loss import masked_loss  # noqa: E402
from machine import describe_machine, machine_tag  # noqa: E402

STAGES = ("decode", "warm-start", "models", "batch", "compile", "predict")
BATCHES = (64, 128, 256, 512)  # the batch stage's sizes: gznet's CPU recipe (64) to past its CUDA recipe (256)
# (precision, channels_last): gzmorph 0.1's CPU path first, then the two halves of the bf16 policy, then the policy.
VARIANTS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))
PREDICT_REPEATS = 5  # the 1,197 test images listed this many times: 5,985 files, enough to amortise start-up
BASELINE_ROUNDS = 3  # `--baseline`: each gzmorph's predict this many times, alternated; the medians are compared

WARM_START = r"""
import time, sys
t0 = time.perf_counter()
import torch, gzmorph
from gzmorph.config import TrainConfig
from gzmorph.data.labelled import load_labelled
from gzmorph.data.images import Preprocess
from gzmorph.data.batches import to_input
from gzmorph.models import create_model, get_spec, resolve_recipe
data, model_name = sys.argv[1], sys.argv[2]
cfg = resolve_recipe(TrainConfig(data=data, model=model_name))
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
    """A new process up to its first training step, with the cache of exactly the train and valid images present
    (a first, untimed run fills it); the median of ``repeats`` runs."""
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
            "bound": "torch import and torch.optim's first import of torch._dynamo"}


def _steps(model_name: str) -> int:
    """Timed steps per variant: enough for a stable figure, few for the slow families."""
    return {"resnet50": 4, "seed-resnet50": 6, "dieleman": 6}.get(model_name, 12)


def bench_model(model_name: str, device: torch.device, precision: str, channels_last: bool,
                compile_model: bool = False, batch_size: int | None = None) -> dict:
    """Train steps (augmentation, forward, masked loss, backward, AdamW) and inference forward passes of one model
    under one precision and layout, on random pixels of the model's input size."""
    cfg = resolve_recipe(TrainConfig(data="", model=model_name))
    if batch_size:  # the recipe's rate stays: the step's cost does not depend on it
        cfg = replace(cfg, batch_size=batch_size)
    spec = get_spec(model_name)
    policy = Policy(device, precision)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    net = create_model(model_name).to(device, memory_format=fmt).train()
    opt = torch.optim.AdamW(net.parameters(), cfg.lr, weight_decay=cfg.weight_decay or 0.0)
    model = torch.compile(net) if compile_model else net
    aug, bs = get_augment(cfg.augment), cfg.batch_size
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (max(256, bs), spec.size, spec.size, 3), dtype=np.uint8)
    y, m = torch.rand(bs, 37, device=device), torch.ones(bs, 37, device=device)
    gen = torch.Generator().manual_seed(0)
    steps, warm = _steps(model_name), 2

    def step() -> None:
        idx = np.sort(rng.choice(len(pixels), bs, replace=False))
        x = augment_batch(to_input(pixels[idx], device, channels_last), aug, gen).contiguous(memory_format=fmt)
        with policy.autocast():
            pred = model(x)
        masked_loss(pred.float(), y, m, cfg.loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    first = time.perf_counter()
    step()
    first = time.perf_counter() - first
    for _ in range(warm - 1):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    train_s = time.perf_counter() - started
    row = {"model": model_name, "precision": precision, "channels_last": channels_last, "batch_size": bs,
           "train_img_per_s": steps * bs / train_s, "train_seconds": train_s, "first_step_seconds": first}
    if compile_model:
        return row
    net.eval()
    x = to_input(pixels, device, channels_last)
    with torch.no_grad(), policy.autocast():
        net(x)
        _sync(device)
        started = time.perf_counter()
        repeats = max(1, steps // 4)
        for _ in range(repeats):
            net(x)
        _sync(device)
    infer_s = time.perf_counter() - started
    row.update({"infer_img_per_s": repeats * len(pixels) / infer_s, "infer_seconds": infer_s})
    return row


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_models(device: torch.device, models: list[str], default_model: str) -> list[dict]:
    """Every model x VARIANTS. Where bf16 is emulated (no native bf16) it runs ~10x slower than fp32, which one
    model shows well enough: the other models skip it, or the stage would take an hour on a Zen 3."""
    rows = []
    emulated = not native_bf16(device)
    for name in models:
        for precision, cl in VARIANTS:
            if precision == "bf16" and emulated and name != default_model:
                continue
            row = bench_model(name, device, precision, cl)
            rows.append(row)
            print(f"  {name:14s} {precision} {'NHWC' if cl else 'NCHW'}: train {row['train_img_per_s']:7.1f} img/s, "
                  f"infer {row['infer_img_per_s']:7.1f} img/s", flush=True)
    return rows


def bench_batch(device: torch.device, model: str) -> dict:
    """The train step at each of BATCHES, as `--precision auto` runs it; img/s against batch 64's."""
    policy = resolve("auto", device)
    rows = [bench_model(model, device, policy.name, policy.channels_last, batch_size=b) for b in BATCHES]
    for r in rows:
        r["over_batch_64"] = r["train_img_per_s"] / rows[0]["train_img_per_s"]
        print(f"  {model} batch {r['batch_size']:4d}: train {r['train_img_per_s']:7.1f} img/s "
              f"({r['over_batch_64']:.2f}x batch 64)", flush=True)
    return {"stage": "batch", "model": model, "precision": policy.name, "rows": rows}


def bench_compile(device: torch.device, model: str) -> dict:
    """A train step as `--precision auto` runs it (bf16 NHWC where native, else fp32 NCHW), eager vs compiled."""
    policy = resolve("auto", device)
    eager = bench_model(model, device, policy.name, policy.channels_last)
    compiled = bench_model(model, device, policy.name, policy.channels_last, compile_model=True)
    return {"stage": "compile", "model": model, "precision": policy.name, "eager_img_per_s": eager["train_img_per_s"],
            "compiled_img_per_s": compiled["train_img_per_s"], "compile_seconds": compiled["first_step_seconds"],
            "speedup": compiled["train_img_per_s"] / eager["train_img_per_s"]}


def _fake_run(model: str, folder: Path) -> Path:
    """A run folder with an untrained model: prediction speed does not depend on the weights."""
    from gzmorph import runs

    folder.mkdir(parents=True, exist_ok=True)
    runs.write_config(folder, resolve_recipe(TrainConfig(data="", out=str(folder), model=model)))
    runs.save_weights(folder / runs.BEST, create_model(model))
    runs.write_train_mean(folder, np.zeros(37, np.float32))
    return folder


BASELINE_RUN = r"""
import sys
from gzmorph import runs
from gzmorph.config import TrainConfig
from gzmorph.models import create_model
model, folder = sys.argv[1], sys.argv[2]
import pathlib, numpy as np
folder = pathlib.Path(folder); folder.mkdir()
runs.write_config(folder, TrainConfig(data="", out=str(folder), model=model).resolved())  # 0.1's API
runs.save_weights(folder / runs.BEST, create_model(model))
runs.write_train_mean(folder, np.zeros(37, np.float32))
"""


def _time_predict(run: Path, listing: Path, csv: Path, device: torch.device, workers: int, env: dict | None = None,
                  precision: str | None = None) -> float:
    """Seconds of one whole `gzmorph predict` command (process start to CSV written); ``precision`` None: the
    command's own default (an old gzmorph may not know the flag)."""
    extra = ["--precision", precision] if precision else []
    for old in (csv, csv.with_name(csv.name + ".json")):  # every round starts from nothing written
        old.unlink(missing_ok=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gzmorph.cli", "predict", str(run), str(listing), "-o", str(csv), "-q",
                    "--device", str(device), "--workers", str(workers), *extra], env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - started


def bench_predict(model: str, data: Path, device: torch.device, tmp: Path, workers: int,
                  baseline: Path | None = None, trained: str | None = None) -> dict:
    from gzmorph import runs
    from gzmorph.inference.tta import predict_answers

    images = sorted((data / "images_test_rev1").glob("*.jpg"))
    listing = tmp / "images.txt"
    # The same files under other names would be other GalaxyIDs; a list file may name a file twice... but predict
    # refuses two files for one id, so each repeat is a symbolic link of its own.
    links = tmp / "links"
    links.mkdir()
    paths = []
    for r in range(PREDICT_REPEATS):
        for p in images:
            link = links / f"{r}{p.name}"
            link.symlink_to(p)
            paths.append(link)
    listing.write_text("\n".join(map(str, paths)) + "\n")
    if trained:  # a real run (or "pretrained"): its model, its options, its weights
        run = runs.run_folder(trained)
        model = runs.read_config(run).model
    else:
        run = _fake_run(model, tmp / "run")
    spec = get_spec(model)
    prep = Preprocess(spec.crop, spec.size)
    # The fast path against plain fp32: bf16 where native, else what `auto` picks without it (fp32 NHWC, folded).
    fast = "bf16" if native_bf16(device) else "auto"
    from gzmorph import pretrained

    if trained and pretrained.is_alias(trained):  # which model in the box, by its file
        out_run = {"run": trained, "sha256": pretrained.card()["sha256"],
                   "model_options": runs.read_config(run).model_options}
    else:
        out_run = {"run": trained or "untrained"}
    out = {"stage": "predict", "model": model, **out_run, "images": len(paths), "workers": workers, "fast": fast, "cli": {},
           "floor": {}}
    # Decode alone: the decoder with the CLI's workers and chunks, nothing else running.
    started = time.perf_counter()
    decoded = [c.pixels for c in decode_chunks(paths, prep, chunk=256, workers=workers)]
    decode_s = time.perf_counter() - started
    pixels = np.concatenate(decoded)
    # ... and again with the pixels pickled through the pool's pipes (the fallback without room in /dev/shm)
    started = time.perf_counter()
    for _ in decode_chunks(paths, prep, chunk=256, workers=workers, shared_memory=False):
        pass
    pipes_s = time.perf_counter() - started
    out["decode"] = {"shared_memory": shared_memory_works(256, prep), "seconds": decode_s,
                     "img_per_s": len(paths) / decode_s, "through_pipes_seconds": pipes_s,
                     "through_pipes_img_per_s": len(paths) / pipes_s}
    for precision in ("fp32", fast):
        loaded = runs.load_model(run, "best", device, precision)
        predict_answers(loaded, pixels[:256])  # warm
        started = time.perf_counter()
        predict_answers(loaded, pixels, 256)
        forward_s = time.perf_counter() - started
        cli_s = _time_predict(run, listing, tmp / f"{precision}.csv", device, workers, precision=precision)
        record = json.loads((tmp / f"{precision}.csv.json").read_text())
        inside = record["seconds"]
        # The wall-clock of the command (process start and torch import included), and the seconds the command
        # itself records from its model loaded to its CSV written.
        out["cli"][precision] = {"seconds": cli_s, "img_per_s": len(paths) / cli_s, "in_process_seconds": inside,
                                 "runtime": record.get("runtime")}
        out["floor"][precision] = {"decode_seconds": decode_s, "forward_seconds": forward_s,
                                   "seconds": decode_s + forward_s, "cli_over_floor": cli_s / (decode_s + forward_s)}
    out["speedup_fast_over_fp32"] = out["cli"][fast]["img_per_s"] / out["cli"]["fp32"]["img_per_s"]
    if baseline:  # an earlier gzmorph's `predict` on the same files, in the same run: what "today" was
        env = {**os.environ, "PYTHONPATH": str(baseline)}
        old_run = tmp / "baseline-run"
        subprocess.run([sys.executable, "-c", BASELINE_RUN, model, str(old_run)], env=env, check=True)
        before, now = [], []
        # Alternated and repeated: a shared machine's load drifts within seconds, and one run of each was seen to
        # put the same code at 0.85x and 1.07x of the other.
        for _ in range(BASELINE_ROUNDS):
            before.append(_time_predict(old_run, listing, tmp / "baseline.csv", device, workers, env=env))
            now.append(_time_predict(run, listing, tmp / "now.csv", device, workers, precision=fast))
        out["baseline"] = {"src": str(baseline), "rounds": BASELINE_ROUNDS, "seconds": float(np.median(before)),
                           "img_per_s": len(paths) / float(np.median(before)), "seconds_each": before,
                           "now_seconds_each": now}
        out["speedup_fast_over_baseline"] = float(np.median(before) / np.median(now))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "galaxy-zoo"))
    p.add_argument("--model", default="gznet", help="the model of the decode, warm-start, compile, predict stages")
    p.add_argument("--models", nargs="+", default=list_models(), help="the models of the models stage")
    p.add_argument("--device", default="auto")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="predict's decode workers")
    p.add_argument("--run", help="the predict stage's model: a run folder, or 'pretrained' (the model inside "
                                 "gzmorph); default: an untrained --model (speed does not depend on the weights)")
    p.add_argument("--baseline", type=Path, help="the src/ folder of an earlier gzmorph (e.g. a worktree of v0.1): "
                                                 "its `predict` is timed on the same files, in the same run")
    args = p.parse_args()
    if args.run and args.baseline:
        p.error("--baseline times an earlier gzmorph on an untrained --model: leave out --run (the two sides would "
                "be different models)")
    data, device = Path(args.data), pick_device(args.device)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    spec = get_spec(args.model)
    prep = Preprocess(spec.crop, spec.size)
    machine = describe_machine(str(device))
    machine["native_bf16"] = native_bf16(device)
    out = HERE / "results" / f"throughput-{machine_tag(machine)}.json"
    saved = json.loads(out.read_text()) if out.exists() else {}
    result = {"benchmark": "throughput", "machine": machine, "model": args.model,
              **{k: v for k, v in saved.items() if k.split(":")[0] in STAGES}}
    with tempfile.TemporaryDirectory(prefix="gzmorph-throughput-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        if "decode" in args.stages:
            result["decode"] = bench_decode(data, prep, cache)
        if "warm-start" in args.stages:
            with contextlib.suppress(StopIteration):
                result["warm-start"] = bench_warm_start(data, args.model, cache)
        if "models" in args.stages:
            print("models (train: augmentation + forward + backward + AdamW; infer: forward, batch 256):")
            result["models"] = {"rows": bench_models(device, args.models, args.model),
                                "bf16_emulated": not native_bf16(device)}
        if "batch" in args.stages:
            result["batch"] = bench_batch(device, args.model)
        if "compile" in args.stages:
            result["compile"] = bench_compile(device, args.model)
        if "predict" in args.stages:
            # an untrained --model under "predict", a given run under "predict:RUN": both are kept
            result["predict" + (f":{args.run}" if args.run else "")] = bench_predict(
                args.model, data, device, tmp, args.workers, args.baseline, args.run)
    command = "python " + " ".join(sys.argv)
    for stage in args.stages:  # stages are kept from earlier runs: each carries the command that measured it
        stage = stage + (f":{args.run}" if stage == "predict" and args.run else "")
        if stage in result:
            result[stage]["command"] = command
    result.pop("command", None)
    print_table(result)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(HERE.parent)}")


def print_table(r: dict) -> None:
    m = r["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, native bf16: {m.get('native_bf16')}, torch {m['torch']}")
    if "decode" in r:
        d = r["decode"]
        print(f"decode-cache: {d['images']} JPEGs in {d['seconds']:.2f} s ({d['img_per_s']:.0f} img/s)")
    if "warm-start" in r:
        print(f"warm start (new process -> first train step): {r['warm-start']['seconds']:.2f} s")
    if "models" in r:
        print(f"{'model':14s} {'variant':10s} {'train img/s':>11s} {'x fp32':>7s} {'infer img/s':>11s} {'x fp32':>7s}")
        rows = r["models"]["rows"]
        base = {row["model"]: row for row in rows if row["precision"] == "fp32" and not row["channels_last"]}
        for row in rows:  # (where bf16 is emulated, only the default model is timed in it)
            b = base[row["model"]]
            variant = f"{row['precision']} {'NHWC' if row['channels_last'] else 'NCHW'}"
            print(f"{row['model']:14s} {variant:10s} {row['train_img_per_s']:11.1f} "
                  f"{row['train_img_per_s'] / b['train_img_per_s']:6.2f}x {row['infer_img_per_s']:11.1f} "
                  f"{row['infer_img_per_s'] / b['infer_img_per_s']:6.2f}x")
    if "batch" in r:
        print("train step by batch size (" + r["batch"]["precision"] + "): " + ", ".join(
            f"{row['batch_size']}: {row['train_img_per_s']:.0f} img/s ({row['over_batch_64']:.2f}x)"
            for row in r["batch"]["rows"]))
    if "compile" in r:
        c = r["compile"]
        print(f"torch.compile ({c['model']}, {c.get('precision', 'bf16')} train step): {c['compile_seconds']:.0f} s to "
              f"compile, then "
              f"{c['compiled_img_per_s']:.0f} img/s against eager {c['eager_img_per_s']:.0f} ({c['speedup']:.2f}x)")
    for key in [k for k in r if k.split(":")[0] == "predict"]:
        pr = r[key]
        print(f"{key}: {pr.get('run', 'untrained')} {pr['model']}")
        fast = pr.get("fast", "bf16")
        for prec in ("fp32", fast):
            c, f = pr["cli"][prec], pr["floor"][prec]
            print(f"predict {prec}: {pr['images']} JPEGs in {c['seconds']:.1f} s ({c['img_per_s']:.0f} img/s); floor "
                  f"{f['seconds']:.1f} s = decode {f['decode_seconds']:.1f} + forward {f['forward_seconds']:.1f}; "
                  f"{f['cli_over_floor']:.2f}x the floor ({c['in_process_seconds'] / f['seconds']:.2f}x without the "
                  f"{c['seconds'] - c['in_process_seconds']:.1f} s of process start, imports and model load)")
        print(f"predict {fast} / fp32: {pr['speedup_fast_over_fp32']:.2f}x")
        if "decode" in pr:  # older results have no such figure
            d = pr["decode"]
            print(f"decode alone, {pr['workers']} workers: {d['img_per_s']:.0f} img/s through "
                  f"{'shared memory' if d['shared_memory'] else 'pipes (no room in /dev/shm)'}, "
                  f"{d['through_pipes_img_per_s']:.0f} img/s pickled through pipes "
                  f"({d['img_per_s'] / d['through_pipes_img_per_s']:.2f}x)")
        if "baseline" in pr:
            b = pr["baseline"]
            print(f"predict of {b['src']}: {b['seconds']:.1f} s ({b['img_per_s']:.0f} img/s); {fast} now is "
                  f"{pr['speedup_fast_over_baseline']:.2f}x that"
                  + (f" (medians of {b['rounds']} alternated runs: {', '.join(f'{x:.1f}' for x in b['seconds_each'])}"
                     f" s then, {', '.join(f'{x:.1f}' for x in b['now_seconds_each'])} s now)" if "rounds" in b else ""))


if __name__ == "__main__":
    main()
