"""The training loop (the minGPT trainer pattern): ``train`` resolves the recipe and where it runs, then ``_fit`` reads
top to bottom as its steps -- load the data, build the model, start or resume, then per epoch train, validate and
record.

Reproducibility: every random choice of epoch ``e`` (shuffle, augmentation, dropout) is seeded from (seed, e), so
a run resumed from its epoch-``e`` checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .. import runs
from ..config import TrainConfig
from ..data.batches import batch_indices
from ..config import MIN_FINETUNE_STEPS
from ..data.images import Preprocess
from ..data.labelled import (LabelledImages, describe, load_catalogue_splits, load_labelled, load_user_labelled,
                             masked_mean, without_questions)
from ..data.layout import open_layout
from ..data.soft_labels import add_soft_labels
from ..errors import BadData, BadRun, GzmorphError, TrainingStopped
from ..fsio import atomic_write_json, ensure_writable_dir
from ..inference.tta import predict_array
from ..metrics import rmse
from ..models import get_spec, resolve_recipe
from ..precision import Policy, resolve
from .. import task_metrics
from . import distributed
from .augment import draw_augment, get_augment
from .resident import EpochPlan, TrainingBatches, keep_on_device
from .average import WeightAverage
from .loss import masked_loss, task_loss
from .schedule import learning_rate
from .stop_signal import stop_on_sigterm
from .time_budget import check_budget, check_request, epochs_for, fewest_epochs

log = logging.getLogger("gzmorph")

CHECK_EVERY = 32  # steps between reads of the running sums (the divergence check and the progress bar)


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train (or, with ``resume``, continue) the run in ``cfg.out``; returns the run folder.

    Started by ``torchrun --nproc-per-node N -m gzmorph train ...``, each of the N processes runs this function:
    they train one model with DistributedDataParallel, each on its share of every batch (see ``_train_epoch``).
    """
    run = Path(cfg.out)
    if resume:
        saved = runs.read_config(run)
        if not (run / runs.CHECKPOINT).exists():
            raise BadRun(f"{run}: nothing to resume (no {runs.CHECKPOINT}); start it without --resume")
        # Only the length of the run may change on resume; everything else must match the saved run.
        cfg = replace(saved, epochs=cfg.epochs or saved.epochs)
    elif (run / runs.CHECKPOINT).exists():
        raise BadRun(f"{run} already holds a trained run; continue it with --resume {run}, or choose another --out")
    else:
        check_request(cfg)
        cfg = _with_init_and_task(cfg)
    cluster = distributed.from_env()
    torch.set_num_threads(distributed.cpu_share(cluster, cfg.threads))
    device = distributed.pick_device(cluster, cfg.device)
    cfg = resolve_recipe(cfg, device.type)  # a GPU gets the model's large-batch recipe, saved with the run
    check_budget(cfg)
    ensure_writable_dir(run)
    policy = resolve(cfg.precision, device)
    cfg = replace(cfg, precision=policy.name)  # saved resolved: a resumed run keeps the arithmetic it started with
    with distributed.process_group(cluster, device):
        return _fit(cfg, run, resume, cluster, policy, progress and cluster.is_main)


def _with_init_and_task(cfg: TrainConfig) -> TrainConfig:
    """A new run's config with the model of its ``init`` run (weights only fit the same network) and, when it
    fine-tunes on a label file, the task read from that file."""
    if cfg.init:
        init = runs.read_config(cfg.init)
        cfg = replace(cfg, init=str(runs.run_folder(cfg.init)), model=init.model, model_options=init.model_options,
                      head=cfg.head or init.head)
    if cfg.labels:
        from ..tasks import infer_task

        cfg = replace(cfg, task=infer_task(cfg.labels, cfg.columns or None).to_dict())
    return cfg


@dataclass
class TrainingParts:
    """What the loop trains: the model, its optimizer, and the weight average (None when ``--ema 0``)."""

    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    average: WeightAverage | None

    @property
    def scored(self) -> torch.nn.Module:
        """What is validated and saved (and what evaluate/predict will load)."""
        return self.average.model if self.average is not None else self.net


def _fit(cfg: TrainConfig, run: Path, resume: bool, cluster: distributed.Cluster, policy: Policy,
         progress: bool) -> Path:
    """The loop. With several processes every process runs it; only rank 0 writes files."""
    main = cluster.is_main
    train_set, valid_set = _load_data(cfg, cluster, policy, progress)
    if cfg.epochs is None:  # a fine-tuning recipe: long enough in optimizer steps, whatever the number of labels
        cfg = replace(cfg, epochs=max(10, math.ceil(MIN_FINETUNE_STEPS / math.ceil(len(train_set) / cfg.batch_size))))
    if cfg.minutes is not None and not resume:  # a count the pick cannot go below: epoch 1's rates do not depend on it
        cfg = replace(cfg, epochs=max(cfg.epochs, fewest_epochs(cfg)))
    parts = build_parts(cfg, policy, resume)
    state = _start(cfg, run, parts, train_set, resume, main)
    # What a model that learnt nothing would answer: each task column is scored beside it every epoch.
    train_mean = masked_mean(train_set.catalogue)
    if state.stopped_early:
        log.info("%s stopped early after epoch %d (no better valid RMSE for %d epochs); nothing to resume",
                 run, state.epoch, cfg.patience)
        return run
    if main:
        runs.write_config(run, cfg, policy.describe())  # the epoch count may have grown on resume
    model = parts.net
    if cluster.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(parts.net, device_ids=[policy.device.index]
                                        if policy.device.type == "cuda" else None)
    batches = TrainingBatches(train_set, policy.device, policy.channels_last,
                              on_device=keep_on_device(train_set, policy.device))
    saver = _Saver(cfg, run, parts, main)
    with stop_on_sigterm() as stop:
        while state.epoch < cfg.epochs:  # (--minutes may set the count after the first epoch)
            epoch = state.epoch
            started = time.perf_counter()
            loss_sum, sq_sum, known_sum = _train_epoch(cfg, epoch, model, parts, batches, cluster, policy, progress)
            trained = time.perf_counter()  # _train_epoch ends on a read of its sums: the device has finished
            # Every process scores the whole valid split with identical weights, so all agree on the best epoch and
            # on stopping early without exchanging a message.
            valid_loss, valid_rmse, valid_pred = _validate(parts.scored, valid_set, cfg, max(256, cfg.batch_size),
                                                           policy)
            validated = time.perf_counter()
            row = {"epoch": epoch + 1, "train_loss": loss_sum / known_sum,
                   "train_rmse": math.sqrt(sq_sum / known_sum), "valid_loss": valid_loss, "valid_rmse": valid_rmse,
                   "lr": parts.optimizer.param_groups[0]["lr"], "seconds": validated - started,
                   "train_seconds": trained - started, "valid_seconds": validated - trained}
            summary = ""
            if cfg.task:
                cat = valid_set.catalogue
                report = task_metrics.task_report(runs.task_of(cfg), valid_pred, cat.labels, cat.mask, train_mean)
                row.update(task_metrics.epoch_scores(report))
                summary = task_metrics.one_line(report)
            if epoch == 0 and cfg.minutes is not None:
                cfg = _fit_to_minutes(cfg, row["seconds"], cluster, policy)
                if main:
                    runs.write_config(run, cfg, policy.describe())
            _record(cfg, state, row, saver, main, summary)
            stopping = stop.agreed(cluster, policy.device)
            if stopping or state.stopped_early or state.epoch >= cfg.epochs or saver.due():
                saver.save(state, row)
            if stopping:
                raise TrainingStopped(f"SIGTERM: stopped after epoch {state.epoch} of {cfg.epochs}, checkpoint "
                                      f"written; continue with `gzmorph train --resume {run}`")
            if state.stopped_early:
                if main:
                    log.info("stopping early: no better valid RMSE for %d epochs (best %.4f at epoch %d)",
                             cfg.patience, state.best_rmse, state.best_epoch)
                break
    if state.epoch >= cfg.epochs and main:
        runs.write_metrics(run, state.history)
    if cfg.task and main:
        _report_held_out(cfg, run, valid_set, train_mean, policy, state.best_epoch)
    distributed.barrier(cluster)  # nobody returns (and reads the run) before rank 0 has written it
    return run


def _fit_to_minutes(cfg: TrainConfig, seconds: float, cluster: distributed.Cluster, policy: Policy) -> TrainConfig:
    """The run's epoch count for its --minutes, from its first epoch's seconds (under torchrun, the processes'
    mean: all of them must train the same epochs)."""
    if cluster.enabled:
        mine = torch.tensor([seconds], dtype=torch.float64, device=policy.device)
        seconds = distributed.all_sum(cluster, mine).item() / cluster.world
    epochs = epochs_for(cfg.minutes, seconds, fewest_epochs(cfg))
    if cluster.is_main:
        log.info("--minutes %g: the first epoch took %.1f s, so this run trains %d epochs (saved in its config; "
                 "`--epochs %d` repeats it)", cfg.minutes, seconds, epochs, epochs)
    return replace(cfg, epochs=epochs)


def _load_data(cfg: TrainConfig, cluster: distributed.Cluster, policy: Policy, progress: bool
               ) -> tuple[LabelledImages, LabelledImages]:
    spec = get_spec(cfg.model)
    prep = Preprocess(spec.crop, spec.size)
    common = dict(seed=cfg.seed, limit=cfg.limit, skip_bad=cfg.skip_bad, cache_dir=cfg.cache_dir,
                  workers=distributed.cpu_share(cluster, cfg.workers), progress=progress)
    with distributed.node_leader_first(cluster):  # one process per machine fills its image cache
        if cfg.labels:
            sets = load_user_labelled(cfg.labels, cfg.images, runs.task_of(cfg), prep,
                                      valid_fraction=cfg.valid_fraction, **common)
        else:
            sets = load_labelled(cfg.data, prep, ("train", "valid"), use_partial=cfg.use_partial,
                                 valid_fraction=cfg.valid_fraction, **common)
    train_set, valid_set = sets["train"], sets["valid"]
    if cfg.mask_questions:  # never learnt, never scored: as if no volunteer had been asked
        train_set, valid_set = (without_questions(s, cfg.mask_questions) for s in (train_set, valid_set))
    if cfg.train_on_valid:
        train_set = LabelledImages.concat([train_set, valid_set])
    if cfg.soft_labels:
        train_set = _with_soft_labels(cfg, train_set, prep, common)
    if cfg.labels:
        _check_every_class_is_trained(cfg, train_set)
    if cluster.is_main:
        log.info("train: %s; valid: %s%s", describe(train_set.catalogue), describe(valid_set.catalogue),
                 " (also trained on)" if cfg.train_on_valid else "")
        if cfg.labels:
            _log_task_data(cfg, train_set, valid_set)
        if cluster.enabled:
            log.info("data parallel over %d processes (%s): %d galaxies of each batch of %d per process",
                     cluster.world, policy.device.type,
                     math.ceil(cfg.batch_size / cluster.world), cfg.batch_size)
    return train_set, valid_set


def _with_soft_labels(cfg: TrainConfig, train_set: LabelledImages, prep: Preprocess, common: dict
                      ) -> LabelledImages:
    """The train split with the teacher's answers of ``--soft-labels`` added; the test split, and the valid split
    unless it is trained on, are never among them (``data/soft_labels.py``)."""
    cats = load_catalogue_splits(open_layout(cfg.data), use_partial=True, valid_fraction=cfg.valid_fraction,
                                 seed=cfg.seed)
    held = [cats["test"].ids] + ([] if cfg.train_on_valid else [cats["valid"].ids])
    labelled = np.concatenate([c.ids for c in cats.values()])
    common = {k: v for k, v in common.items() if k not in ("seed", "limit")}
    out, _ = add_soft_labels(train_set, cfg.soft_labels, cfg.soft_images, prep, held_out_ids=np.concatenate(held),
                             labelled_ids=labelled, **common)
    return out


def _class_counts(cat, column, sl: slice) -> dict[str, int]:
    known = cat.mask[:, sl.start]
    return dict(zip(column.classes, map(int, cat.labels[known, sl].sum(axis=0).round())))


def _check_every_class_is_trained(cfg: TrainConfig, train_set: LabelledImages) -> None:
    """A class with no training galaxy (a split column that holds all of them out) can never be predicted."""
    task = runs.task_of(cfg)
    for col, sl in zip(task.columns, task.slices()):
        if col.kind != "classes":
            continue
        absent = [c for c, n in _class_counts(train_set.catalogue, col, sl).items() if n == 0]
        if absent:
            raise BadData(f"{cfg.labels}, column {col.name}: class {absent[0]!r} has no galaxy in the train split "
                          f"(all are held out for validation); put some of them in train")


def _has_split_column(labels: str) -> bool:
    with open(labels, newline="", encoding="utf-8-sig") as f:
        return "split" in [h.strip() for h in next(csv.reader(f), [])]


def _log_task_data(cfg: TrainConfig, train_set: LabelledImages, valid_set: LabelledImages) -> None:
    """What the user's columns hold, said before any training: how many galaxies are held out, and each class
    column's balance (a 90/10 column makes 90% accuracy worthless)."""
    n_valid, n_all = len(valid_set), len(train_set) + len(valid_set) - (len(valid_set) if cfg.train_on_valid else 0)
    chosen = "by the label file's split column" if _has_split_column(cfg.labels) else \
        f"drawn at random: --valid-fraction {cfg.valid_fraction}, --seed {cfg.seed}; a split column in the label " \
        f"file would choose them"
    log.info("%d of %d galaxies held out for validation (%s)%s", n_valid, n_all, chosen,
             "; also trained on (--train-on-valid), so no score below is held out" if cfg.train_on_valid else "")
    task = runs.task_of(cfg)
    for col, sl in zip(task.columns, task.slices()):
        if col.kind == "classes":
            train, valid = (_class_counts(s.catalogue, col, sl) for s in (train_set, valid_set))
            log.info("class balance of %s: train %s; valid %s", col.name,
                     ", ".join(f"{c} {n}" for c, n in train.items()), ", ".join(f"{c} {n}" for c, n in valid.items()))
            if sum(1 for n in valid.values() if n) < 2:
                log.warning("WARNING: the valid galaxies of %s are all of one class: its held-out scores cannot show "
                            "whether the model tells the classes apart", col.name)
        else:
            known = train_set.catalogue.mask[:, sl.start]
            values = train_set.catalogue.labels[known, sl.start] * col.std + col.mean
            log.info("%s (%s): %d train values, mean %.4g, standard deviation %.4g (the RMSE of predicting the "
                     "mean)", col.name, col.kind, len(values), values.mean(), values.std())


def build_parts(cfg: TrainConfig, policy: Policy, resume: bool = False) -> TrainingParts:
    """The model (initialised, or loaded from ``cfg.init`` / ``cfg.pretrained`` unless resuming), placed on the
    policy's device, with its optimizer and weight average, as the loop trains them (benchmarks/gpu.py times this
    loop's step with the same parts)."""
    spec = get_spec(cfg.model)
    torch.manual_seed(cfg.seed)  # model initialisation: the same in every process
    net = runs.build_model(cfg)
    if cfg.pretrained and not resume:
        if spec.load_pretrained is None:
            raise GzmorphError(f"model {cfg.model!r} has no pretrained weights to load")
        spec.load_pretrained(net, cfg.pretrained)
    if cfg.init and not resume:
        _load_init(net, cfg)
    policy.place(net)
    if _two_rates(cfg):  # the backbone and the head at their own rates (see _lr_factors)
        groups = [{"params": [p for p in part.parameters() if p.requires_grad]} for part in (net.backbone, net.head)]
    else:
        groups = [{"params": [p for p in net.parameters() if p.requires_grad]}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.weight_decay \
        else torch.optim.Adam(groups, lr=cfg.lr)
    return TrainingParts(net, optimizer, WeightAverage(net, cfg.ema) if cfg.ema else None)


def _load_init(net: torch.nn.Module, cfg: TrainConfig) -> None:
    """The init run's weights: its backbone always; its head as well when it has the same outputs."""
    # A run that trained on its valid split has no held-out score to pick a best epoch by: its last weights are the
    # ones to use (packaging ships them). The packaged model's folder holds only those, as "best".
    folder = runs.run_folder(cfg.init)
    last = runs.read_config(folder).train_on_valid and (folder / runs.LAST).exists()
    init = runs.load_model(folder, "last" if last else "best", "cpu", "fp32").model
    net.backbone.load_state_dict(init.backbone.state_dict())
    if runs.output_names(runs.read_config(cfg.init)) == runs.output_names(cfg):
        net.head.load_state_dict(init.head.state_dict())
    log.info("started from the weights of %s", cfg.init)


def _two_rates(cfg: TrainConfig) -> bool:
    # One parameter group unless the recipe asks for more, so runs of gzmorph 0.1 resume with their optimizer state.
    return cfg.head_epochs > 0 or cfg.backbone_lr != 1.0


def _lr_factors(cfg: TrainConfig, epoch: int) -> list[float]:
    """Each parameter group's share of the scheduled rate: the backbone rests during the head-only epochs."""
    if not _two_rates(cfg):
        return [1.0]
    return [0.0 if epoch < cfg.head_epochs else cfg.backbone_lr, 1.0]


def _start(cfg: TrainConfig, run: Path, parts: TrainingParts, train_set: LabelledImages, resume: bool,
           main: bool) -> runs.Progress:
    """The progress to continue from: the checkpoint's on resume, else a fresh start (writing the train mean)."""
    if resume:
        state = runs.load_checkpoint(run, parts.net, parts.optimizer, parts.average, get_spec(cfg.model).legacy_head)
        if main and not state.stopped_early:
            log.info("resuming %s after epoch %d of %d", run, state.epoch, cfg.epochs)
        return state
    if main:
        runs.write_train_mean(run, masked_mean(train_set.catalogue), runs.output_names(cfg))
    return runs.Progress(epoch=0, best_rmse=math.inf, best_epoch=0, history=[])


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63)


def _train_epoch(cfg: TrainConfig, epoch: int, model: torch.nn.Module, parts: TrainingParts, batches: TrainingBatches,
                 cluster: distributed.Cluster, policy: Policy, progress: bool) -> list[float]:
    """One pass over the training split; returns the sums over all processes of (loss x known answers, squared
    error, known answers).

    With several processes, every process draws the same shuffled batches (same seed) and takes rows
    ``rank::world`` of each, so the global batch, the learning rate schedule and the epoch length are those of a
    single process; DDP averages the gradients."""
    from tqdm.auto import tqdm

    device = policy.device
    n_batches = math.ceil(batches.n / cfg.batch_size)
    seed = _epoch_seed(cfg.seed, epoch)
    torch.manual_seed(seed + cluster.rank)  # dropout: each process's rows get their own masks
    plan = _epoch_plan(cfg, seed, batches.n, cluster, n_batches * epoch)
    model.train()
    if epoch < cfg.head_epochs:
        parts.net.backbone.eval()  # its BatchNorm statistics stay those it came with while only the head learns
    factors = _lr_factors(cfg, epoch)
    # Running sums stay on the device and are read every CHECK_EVERY steps: a .item() per step would stall a GPU.
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss x known, squared error, known answers
    bar = tqdm(batches.epoch(plan), total=len(plan.steps), unit="batch", desc=f"epoch {epoch + 1}/{cfg.epochs}",
               disable=not progress or None, leave=False)
    for step, x, y, m in bar:
        for group, factor in zip(parts.optimizer.param_groups, factors):
            group["lr"] = learning_rate(cfg, step, n_batches) * factor
        x = x.contiguous(memory_format=policy.memory_format)  # grid_sample hands back NCHW
        with policy.autocast():
            pred = model(x)
        loss = _loss(cfg, pred.float(), y, m)
        known = m.sum()
        if cluster.enabled:
            # DDP averages gradients over processes; weighting each by its share of the known answers makes that
            # average the gradient of the whole batch's masked mean, as in one process.
            total = distributed.all_sum(cluster, known.detach().float().clone())
            (loss * known * cluster.world / total.clamp_min(1)).backward()
        else:
            loss.backward()
        parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)
        if parts.average is not None:
            parts.average.update(parts.net)
        with torch.no_grad():
            sums += torch.stack([loss.detach() * known, (((pred.detach().float() - y) ** 2) * m).sum(),
                                 known.float()]).double()
        if (step + 1) % CHECK_EVERY == 0:
            _check_finite(cluster, sums, epoch, cfg.lr)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    _check_finite(cluster, sums, epoch, cfg.lr)  # before anything of this epoch is written
    return distributed.all_sum(cluster, sums).tolist()


def _epoch_plan(cfg: TrainConfig, seed: int, n: int, cluster: distributed.Cluster, first_step: int) -> EpochPlan:
    """Every random choice of the epoch's batches, made before its first step: the shuffled rows of each batch
    (this process's share of them) and their augmentation. The numbers are those a step-by-step draw gives, in
    the same order, from generators seeded by (seed, epoch)."""
    rng = np.random.default_rng(seed)  # shuffling: the same global batches in every process
    gen = torch.Generator().manual_seed(seed + cluster.rank)  # augmentation of this process's rows
    aug = get_augment(cfg.augment)
    steps, rows, draws = [], [], []
    for step, idx in enumerate(batch_indices(n, cfg.batch_size, rng), start=first_step):
        if len(idx) < cluster.world:
            continue  # a last batch too small to give every process a row (world > 1 only): skipped by all
        idx = idx[cluster.rank::cluster.world]
        steps.append(step)
        rows.append(idx)
        draws.append(draw_augment(len(idx), aug, gen))
    return EpochPlan(steps, rows, draws)


def _loss(cfg: TrainConfig, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if cfg.task:
        return task_loss(pred, target, mask, runs.task_of(cfg).blocks, cfg.loss)
    return masked_loss(pred, target, mask, cfg.loss)


def _validate(model: torch.nn.Module, data: LabelledImages, cfg: TrainConfig, batch_size: int, policy: Policy
              ) -> tuple[float, float, np.ndarray]:
    """(masked loss, RMSE over the known outputs, the outputs themselves) of ``model`` on ``data``."""
    pred = predict_array(model, data.pixels, batch_size, policy)
    cat = data.catalogue
    loss = float(_loss(cfg, torch.from_numpy(pred), torch.from_numpy(cat.labels), torch.from_numpy(cat.mask)))
    return loss, rmse(pred, cat.labels, cat.mask), pred


def loss_name(cfg: TrainConfig) -> str:
    """The loss a run trains, as its logs and plots name it (a fine-tuning task names its own)."""
    task = runs.task_of(cfg)
    return task.loss_name(cfg.loss or "mse") if task else cfg.loss


def held_out_report_path(run: Path) -> Path:
    return run / "eval-valid.json"


def _report_held_out(cfg: TrainConfig, run: Path, valid_set: LabelledImages, train_mean: np.ndarray,
                     policy: Policy, best_epoch: int) -> None:
    """The best weights scored on the held-out galaxies, column by column beside the baseline: logged, with a
    WARNING for every column the model has not learnt, and written to RUN/eval-valid.json (what `plot` draws)."""
    loaded = runs.load_model(run, "best", policy.device, policy.name)
    pred = predict_array(loaded.model, valid_set.pixels, max(256, cfg.batch_size), loaded.policy)
    cat = valid_set.catalogue
    report = task_metrics.task_report(runs.task_of(cfg), pred, cat.labels, cat.mask, train_mean)
    atomic_write_json(held_out_report_path(run), task_metrics.json_ready({
        "run": str(run), "model": cfg.model, "weights": loaded.weights.name, "weights_sha256": loaded.sha256,
        "best_epoch": best_epoch, "labels": cfg.labels, "split": "valid", "n_galaxies": int(len(cat)),
        "held_out": not cfg.train_on_valid, "loss": loss_name(cfg), "columns": report}))
    log.info("the best weights (epoch %d) on the %d %s galaxies:\n%s", best_epoch, len(cat),
             "valid (also trained on)" if cfg.train_on_valid else "held-out", task_metrics.format_report(report))
    for line in task_metrics.warnings(report):
        log.warning("WARNING: %s", line)
    log.info("wrote %s", held_out_report_path(run))


class _Saver:
    """Writes the run's files -- the best and last weights, the checkpoint, the metrics -- when they are due: every
    ``--checkpoint-every`` seconds, after the last epoch, on early stopping and on SIGTERM. Between writes the best
    weights wait in memory. On two CPU cores an epoch takes a minute and every epoch is written; on a GPU it takes a
    second, and writing three files after each would cost more than the training.

    Resuming is unchanged: a run continues from its last checkpoint, and the epochs after it come out exactly as
    the first time, including which was best. Only rank 0 writes."""

    def __init__(self, cfg: TrainConfig, run: Path, parts: TrainingParts, main: bool):
        self.cfg, self.run, self.parts, self.main = cfg, run, parts, main
        self.best: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None  # not yet written
        self.last_write = time.perf_counter()

    def keep_best(self, row: dict) -> None:
        if self.main:
            state = {k: v.detach().clone() for k, v in self.parts.scored.state_dict().items()}
            self.best = state, self._meta(row)

    def due(self) -> bool:
        return time.perf_counter() - self.last_write >= self.cfg.checkpoint_every

    def save(self, state: runs.Progress, row: dict) -> None:
        started = time.perf_counter()
        if self.main:
            # The weight files are written before the checkpoint that records their epoch: if the process dies in
            # between, the resumed run redoes the epochs and rewrites them identically; never the other way round.
            if self.best is not None:
                runs.save_weights(self.run / runs.BEST, *self.best)
                self.best = None
            runs.save_weights(self.run / runs.LAST, self.parts.scored, self._meta(row))
            runs.save_checkpoint(self.run, self.parts.net, self.parts.optimizer, state, self.parts.average)
            row["save_seconds"] = time.perf_counter() - started  # after the checkpoint: only metrics.json has it
            row["seconds"] += row["save_seconds"]
            runs.write_metrics(self.run, state.history)
        self.last_write = time.perf_counter()

    def _meta(self, row: dict) -> dict[str, str]:
        return {"epoch": str(row["epoch"]), "valid_rmse": f"{row['valid_rmse']:.6f}", "model": self.cfg.model}


def _record(cfg: TrainConfig, state: runs.Progress, row: dict, saver: _Saver, main: bool, summary: str = "") -> None:
    """Add the epoch's row to the progress, decide on the best epoch and early stopping, and log the epoch."""
    epoch = row["epoch"]
    state.history.append(row)
    state.epoch = epoch
    if row["valid_rmse"] < state.best_rmse:
        state.best_rmse, state.best_epoch = row["valid_rmse"], epoch
        saver.keep_best(row)
    if cfg.patience and state.epoch - state.best_epoch >= cfg.patience and state.epoch < cfg.epochs:
        state.stopped_early = True
    if not main:
        return
    if summary:  # a fine-tuning task: its own loss and scores; an RMSE over class probabilities would say little
        name = loss_name(cfg)
        log.info("epoch %d/%d  train %s %.4f  valid %s %.4f  valid %s  (%.0f s)", epoch, cfg.epochs, name,
                 row["train_loss"], name, row["valid_loss"], summary, row["seconds"])
        return
    log.info("epoch %d/%d  train loss %.4f  train RMSE %.4f  valid RMSE %.4f  (%.0f s)", epoch, cfg.epochs,
             row["train_loss"], row["train_rmse"], row["valid_rmse"], row["seconds"])


def _check_finite(cluster: distributed.Cluster, sums: torch.Tensor, epoch: int, lr: float) -> None:
    """Stop on a nan/inf loss. Every process learns it at the same step (a NaN gradient reaches all of them, but
    not at the same moment), so none is left waiting in an all-reduce for a process that has quit."""
    mine = sums[0].item()
    flag = torch.tensor([0.0 if math.isfinite(mine) else 1.0], device=sums.device)  # NCCL reduces GPU tensors only
    if distributed.all_sum(cluster, flag).item():
        raise GzmorphError(f"training diverged: the loss became {mine if not math.isfinite(mine) else 'nan'} in "
                           f"epoch {epoch + 1}; the last good checkpoint is kept. Try a lower --lr (now {lr})")
