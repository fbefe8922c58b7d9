"""The training loop: one function, readable top to bottom (the minGPT trainer pattern).

Reproducibility: every random choice of epoch ``e`` (shuffle, augmentation, dropout) is seeded from (seed, e), so
a run resumed from its epoch-``e`` checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from . import runs
from .augment import augment_batch, get_augment
from .config import TrainConfig
from .data import LabelledImages, describe, load_labelled, masked_mean
from .errors import GzmorphError
from .fsio import ensure_writable_dir
from .images import Preprocess
from .loader import batch_indices, to_input
from .metrics import masked_loss, rmse
from .models import create_model, get_spec

log = logging.getLogger("gzmorph")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GzmorphError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    return torch.device(name)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63)


@torch.no_grad()
def predict_array(model: torch.nn.Module, pixels: np.ndarray, batch_size: int = 256,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, 37) float32 predictions, in order."""
    model.eval()
    out = [model(to_input(pixels[idx], device)).float().cpu().numpy()
           for idx in batch_indices(len(pixels), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 37), np.float32)


def _evaluate_split(model, data: LabelledImages, loss_kind: str, batch_size: int, device) -> tuple[float, float]:
    pred = predict_array(model, data.pixels, batch_size, device)
    cat = data.catalogue
    loss = float(masked_loss(torch.from_numpy(pred), torch.from_numpy(cat.labels), torch.from_numpy(cat.mask),
                             loss_kind))
    return loss, rmse(pred, cat.labels, cat.mask)


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train (or, with ``resume``, continue) the run in ``cfg.out``; returns the run folder."""
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
    torch.set_num_threads(cfg.threads or len(os.sched_getaffinity(0)))
    device = pick_device(cfg.device)
    spec = get_spec(cfg.model)
    prep = Preprocess(spec.crop, spec.size)

    sets = load_labelled(cfg.data, prep, ("train", "valid"), use_partial=cfg.use_partial,
                         valid_fraction=cfg.valid_fraction, seed=cfg.seed, limit=cfg.limit, skip_bad=cfg.skip_bad,
                         cache_dir=cfg.cache_dir, workers=cfg.workers, progress=progress)
    train_set, valid_set = sets["train"], sets["valid"]
    log.info("train: %s; valid: %s", describe(train_set.catalogue), describe(valid_set.catalogue))

    torch.manual_seed(cfg.seed)  # model initialisation
    model = create_model(cfg.model, head=cfg.head, **cfg.model_options)
    if cfg.pretrained and not resume:
        if spec.load_pretrained is None:
            raise GzmorphError(f"model {cfg.model!r} has no pretrained weights to load")
        spec.load_pretrained(model, cfg.pretrained)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.weight_decay \
        else torch.optim.Adam(params, lr=cfg.lr)

    if resume:
        state = runs.load_checkpoint(run, model, optimizer)
        log.info("resuming %s after epoch %d of %d", run, state.epoch, cfg.epochs)
    else:
        state = runs.Progress(epoch=0, best_rmse=math.inf, best_epoch=0, history=[])
        runs.write_train_mean(run, masked_mean(train_set.catalogue))
    runs.write_config(run, cfg)  # the epoch count may have grown on resume

    aug = get_augment(cfg.augment)
    labels = torch.from_numpy(train_set.catalogue.labels)
    mask = torch.from_numpy(train_set.catalogue.mask)
    n_batches = math.ceil(len(train_set) / cfg.batch_size)
    from tqdm.auto import tqdm

    for epoch in range(state.epoch, cfg.epochs):
        started = time.perf_counter()
        seed = _epoch_seed(cfg.seed, epoch)
        torch.manual_seed(seed)  # dropout
        rng = np.random.default_rng(seed)  # shuffling
        gen = torch.Generator().manual_seed(seed)  # augmentation
        model.train()
        loss_sum = sq_sum = known = 0.0
        bar = tqdm(batch_indices(len(train_set), cfg.batch_size, rng), total=n_batches, unit="batch",
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress or None, leave=False)
        for idx in bar:
            x = augment_batch(to_input(train_set.pixels[idx], device), aug, gen)
            y, m = labels[idx].to(device), mask[idx].to(device)
            pred = model(x)
            loss = masked_loss(pred, y, m, cfg.loss)
            if not torch.isfinite(loss):
                raise GzmorphError(f"training diverged: the loss became {loss.item()} in epoch {epoch + 1}; the "
                                   f"last good checkpoint is kept. Try a lower --lr (now {cfg.lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                mf = m.float()
                loss_sum += loss.item() * mf.sum().item()
                sq_sum += (((pred.detach().float() - y) ** 2) * mf).sum().item()
                known += mf.sum().item()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        valid_loss, valid_rmse = _evaluate_split(model, valid_set, cfg.loss, max(256, cfg.batch_size), device)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / known, "train_rmse": math.sqrt(sq_sum / known),
               "valid_loss": valid_loss, "valid_rmse": valid_rmse, "lr": optimizer.param_groups[0]["lr"],
               "seconds": time.perf_counter() - started}
        state.history.append(row)
        state.epoch = epoch + 1
        meta = {"epoch": str(epoch + 1), "valid_rmse": f"{valid_rmse:.6f}", "model": cfg.model}
        if valid_rmse < state.best_rmse:
            state.best_rmse, state.best_epoch = valid_rmse, epoch + 1
            # Written before the checkpoint: if killed in between, the resumed epoch rewrites it identically.
            runs.save_weights(run / runs.BEST, model, meta)
        runs.save_checkpoint(run, model, optimizer, state)
        runs.save_weights(run / runs.LAST, model, meta)
        runs.write_metrics(run, state.history)
        log.info("epoch %d/%d  train loss %.4f  train RMSE %.4f  valid RMSE %.4f  (%.0f s)", epoch + 1, cfg.epochs,
                 row["train_loss"], row["train_rmse"], valid_rmse, row["seconds"])
    if state.epoch >= cfg.epochs:
        runs.write_metrics(run, state.history)
    return run
