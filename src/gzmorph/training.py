"""The training loop: one function, readable top to bottom (the minGPT trainer pattern).

Reproducibility: every random choice of epoch ``e`` (shuffle, augmentation, dropout) is seeded from (seed, e), so
a run resumed from its epoch-``e`` checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from . import distributed, runs
from .augment import augment_batch, get_augment
from .config import TrainConfig
from .data import LabelledImages, describe, load_labelled, masked_mean
from .errors import GzmorphError
from .fsio import ensure_writable_dir
from .images import Preprocess
from .inference import predict_array
from .loader import batch_indices, to_input
from .metrics import masked_loss, rmse
from .models import create_model, get_spec
from .precision import Policy, resolve

log = logging.getLogger("gzmorph")


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63)


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate at optimizer step ``step`` (0-based): a pure function of the step, so a resumed run follows
    the same schedule with no scheduler state to save."""
    if cfg.schedule == "constant":
        return cfg.lr
    total = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class WeightAverage:
    """Exponential moving average of a model's weights and buffers (evaluated and saved instead of the raw weights).

    The decay ramps up from 0 (``min(decay, (1 + t) / (10 + t))``) so that the average does not drag the random
    initial weights along for thousands of steps in a short run.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0
        self._pairs: tuple[list[torch.Tensor], ...] | None = None

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        if self._pairs is None:
            # Paired once, at the first step: rebuilding two state_dicts every step costs more than the update on a
            # GPU. Not at construction: moving the model (.to(device), channels_last) swaps parameter storage.
            avg, live = self.model.state_dict().values(), model.state_dict().values()
            pairs = list(zip(avg, live))
            self._pairs = ([a for a, _ in pairs if a.dtype.is_floating_point],
                           [b for a, b in pairs if a.dtype.is_floating_point],
                           [a for a, _ in pairs if not a.dtype.is_floating_point],  # BatchNorm's step counters
                           [b for a, b in pairs if not a.dtype.is_floating_point])
        avg_f, live_f, avg_i, live_i = self._pairs
        torch._foreach_lerp_(avg_f, live_f, 1 - d)
        for a, b in zip(avg_i, live_i):
            a.copy_(b)


def _evaluate_split(model, data: LabelledImages, loss_kind: str, batch_size: int, policy: Policy
                    ) -> tuple[float, float]:
    pred = predict_array(model, data.pixels, batch_size, policy)
    cat = data.catalogue
    loss = float(masked_loss(torch.from_numpy(pred), torch.from_numpy(cat.labels), torch.from_numpy(cat.mask),
                             loss_kind))
    return loss, rmse(pred, cat.labels, cat.mask)


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train (or, with ``resume``, continue) the run in ``cfg.out``; returns the run folder.

    Started by ``torchrun --nproc-per-node N -m gzmorph train ...``, each of the N processes runs this function:
    they train one model with DistributedDataParallel, each on its share of every batch (see ``_fit``).
    """
    run = Path(cfg.out)
    if resume:
        saved = runs.read_config(run)
        if not (run / runs.CHECKPOINT).exists():
            raise GzmorphError(f"{run}: nothing to resume (no {runs.CHECKPOINT}); start it without --resume")
        # Only the length of the run may change on resume; everything else must match the saved run.
        cfg = replace(saved, epochs=cfg.epochs or saved.epochs)
    elif (run / runs.CHECKPOINT).exists():
        raise GzmorphError(f"{run} already holds a trained run; continue it with --resume {run}, or choose "
                           f"another --out")
    cfg = cfg.resolved()
    ensure_writable_dir(run)
    cluster = distributed.from_env()
    torch.set_num_threads(distributed.cpu_share(cluster, cfg.threads))
    device = distributed.pick_device(cluster, cfg.device)
    policy = resolve(cfg.precision, device)
    cfg = replace(cfg, precision=policy.name)  # saved resolved: a resumed run keeps the arithmetic it started with
    with distributed.process_group(cluster, device):
        return _fit(cfg, run, resume, cluster, policy, progress and cluster.is_main)


def _fit(cfg: TrainConfig, run: Path, resume: bool, cluster: distributed.Cluster, policy: Policy,
         progress: bool) -> Path:
    """The loop. With several processes, every process draws the same shuffled batches (same seed) and takes rows
    ``rank::world`` of each, so the global batch, the learning rate schedule and the epoch length are those of a
    single process; DDP averages the gradients. Only rank 0 writes files."""
    main = cluster.is_main
    device = policy.device
    spec = get_spec(cfg.model)
    prep = Preprocess(spec.crop, spec.size)

    with distributed.node_leader_first(cluster):  # one process per machine fills its image cache
        sets = load_labelled(cfg.data, prep, ("train", "valid"), use_partial=cfg.use_partial,
                             valid_fraction=cfg.valid_fraction, seed=cfg.seed, limit=cfg.limit,
                             skip_bad=cfg.skip_bad, cache_dir=cfg.cache_dir,
                             workers=distributed.cpu_share(cluster, cfg.workers), progress=progress)
    train_set, valid_set = sets["train"], sets["valid"]
    if main:
        log.info("train: %s; valid: %s", describe(train_set.catalogue), describe(valid_set.catalogue))
        if cluster.enabled:
            log.info("data parallel over %d processes (%s): %d galaxies of each batch of %d per process", cluster.world,
                     device.type, math.ceil(cfg.batch_size / cluster.world), cfg.batch_size)

    torch.manual_seed(cfg.seed)  # model initialisation: the same in every process
    net = create_model(cfg.model, head=cfg.head, **cfg.model_options)
    if cfg.pretrained and not resume:
        if spec.load_pretrained is None:
            raise GzmorphError(f"model {cfg.model!r} has no pretrained weights to load")
        spec.load_pretrained(net, cfg.pretrained)
    policy.place(net)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.weight_decay \
        else torch.optim.Adam(params, lr=cfg.lr)
    average = WeightAverage(net, cfg.ema) if cfg.ema else None

    if resume:
        state = runs.load_checkpoint(run, net, optimizer, average)
        if state.stopped_early:
            log.info("%s stopped early after epoch %d (no better valid RMSE for %d epochs); nothing to resume",
                     run, state.epoch, cfg.patience)
            return run
        if main:
            log.info("resuming %s after epoch %d of %d", run, state.epoch, cfg.epochs)
    else:
        state = runs.Progress(epoch=0, best_rmse=math.inf, best_epoch=0, history=[])
        if main:
            runs.write_train_mean(run, masked_mean(train_set.catalogue))
    if main:
        runs.write_config(run, cfg, policy.describe())  # the epoch count may have grown on resume

    aug = get_augment(cfg.augment)
    labels = torch.from_numpy(train_set.catalogue.labels)
    mask = torch.from_numpy(train_set.catalogue.mask)
    n_batches = math.ceil(len(train_set) / cfg.batch_size)
    model = net
    if cluster.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    from tqdm.auto import tqdm

    for epoch in range(state.epoch, cfg.epochs):
        started = time.perf_counter()
        seed = _epoch_seed(cfg.seed, epoch)
        torch.manual_seed(seed + cluster.rank)  # dropout: each process's rows get their own masks
        rng = np.random.default_rng(seed)  # shuffling: the same global batches in every process
        gen = torch.Generator().manual_seed(seed + cluster.rank)  # augmentation of this process's rows
        model.train()
        # Running sums stay on the device and are read every CHECK_EVERY steps: a .item() per step would stall a GPU.
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss x known, squared error, known answers
        bar = tqdm(batch_indices(len(train_set), cfg.batch_size, rng), total=n_batches, unit="batch",
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress or None, leave=False)
        for step, idx in enumerate(bar, start=epoch * n_batches):
            if len(idx) < cluster.world:
                continue  # a last batch too small to give every process a row (world > 1 only): skipped by all
            idx = idx[cluster.rank::cluster.world]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step, n_batches)
            x = augment_batch(to_input(train_set.pixels[idx], device, policy.channels_last), aug, gen)
            x = x.contiguous(memory_format=policy.memory_format)  # grid_sample hands back NCHW
            y, m = labels[idx].to(device, non_blocking=True), mask[idx].to(device, non_blocking=True)
            with policy.autocast():
                pred = model(x)
            loss = masked_loss(pred.float(), y, m, cfg.loss)
            known = m.sum()
            if cluster.enabled:
                # DDP averages gradients over processes; weighting each by its share of the known answers makes
                # that average the gradient of the whole batch's masked mean, as in one process.
                total = distributed.all_sum(cluster, known.detach().float().clone())
                (loss * known * cluster.world / total.clamp_min(1)).backward()
            else:
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if average is not None:
                average.update(net)
            with torch.no_grad():
                sums += torch.stack([loss.detach() * known, (((pred.detach().float() - y) ** 2) * m).sum(),
                                     known.float()]).double()
            if (step + 1) % CHECK_EVERY == 0:
                _check_finite(cluster, sums, epoch, cfg.lr)
                bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        _check_finite(cluster, sums, epoch, cfg.lr)  # before anything of this epoch is written
        loss_sum, sq_sum, known_sum = distributed.all_sum(cluster, sums).tolist()
        scored = average.model if average is not None else net  # what evaluate/predict will load
        # Every process scores the whole valid split with identical weights, so all agree on the best epoch and on
        # stopping early without exchanging a message; only rank 0 writes.
        valid_loss, valid_rmse = _evaluate_split(scored, valid_set, cfg.loss, max(256, cfg.batch_size), policy)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / known_sum, "train_rmse": math.sqrt(sq_sum / known_sum),
               "valid_loss": valid_loss, "valid_rmse": valid_rmse, "lr": optimizer.param_groups[0]["lr"],
               "seconds": time.perf_counter() - started}
        state.history.append(row)
        state.epoch = epoch + 1
        meta = {"epoch": str(epoch + 1), "valid_rmse": f"{valid_rmse:.6f}", "model": cfg.model}
        improved = valid_rmse < state.best_rmse
        if improved:
            state.best_rmse, state.best_epoch = valid_rmse, epoch + 1
        if cfg.patience and state.epoch - state.best_epoch >= cfg.patience and state.epoch < cfg.epochs:
            state.stopped_early = True
        if main:
            if improved:
                runs.save_weights(run / runs.BEST, scored, meta)
            # The weight files are written before the checkpoint that records their epoch: if the process dies in
            # between, the resumed run redoes the epoch and rewrites them identically; never the other way round.
            runs.save_weights(run / runs.LAST, scored, meta)
            runs.save_checkpoint(run, net, optimizer, state, average)
            runs.write_metrics(run, state.history)
            log.info("epoch %d/%d  train loss %.4f  train RMSE %.4f  valid RMSE %.4f  (%.0f s)", epoch + 1,
                     cfg.epochs, row["train_loss"], row["train_rmse"], valid_rmse, row["seconds"])
        if state.stopped_early:
            if main:
                log.info("stopping early: no better valid RMSE for %d epochs (best %.4f at epoch %d)",
                         cfg.patience, state.best_rmse, state.best_epoch)
            break
    if state.epoch >= cfg.epochs and main:
        runs.write_metrics(run, state.history)
    distributed.barrier(cluster)  # nobody returns (and reads the run) before rank 0 has written it
    return run


CHECK_EVERY = 32  # steps between reads of the running sums (the divergence check and the progress bar)


def _check_finite(cluster: distributed.Cluster, sums: torch.Tensor, epoch: int, lr: float) -> None:
    """Stop on a nan/inf loss. Every process learns it at the same step (a NaN gradient reaches all of them, but
    not at the same moment), so none is left waiting in an all-reduce for a process that has quit."""
    mine = sums[0].item()
    flag = torch.tensor([0.0 if math.isfinite(mine) else 1.0], device=sums.device)  # NCCL reduces GPU tensors only
    if distributed.all_sum(cluster, flag).item():
        raise GzmorphError(f"training diverged: the loss became {mine if not math.isfinite(mine) else 'nan'} in "
                           f"epoch {epoch + 1}; the last good checkpoint is kept. Try a lower --lr (now {lr})")
