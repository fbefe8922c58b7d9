"""A run folder: its files, checkpoint writing and loading (safetensors only: loading never unpickles code).

    RUN/config.json          TrainConfig + gzmorph version (what made the run)
    RUN/checkpoint.safetensors  model + optimizer tensors, epoch and metrics history in its metadata (for --resume)
    RUN/model.safetensors    weights after the last finished epoch
    RUN/best.safetensors     weights of the epoch with the lowest valid RMSE (used by evaluate/predict)
    RUN/metrics.csv          one row per epoch
    RUN/train_mean.json      per-answer train mean: the baseline every evaluation is compared with

The checkpoint is the single source of truth and is written atomically; the other weight files and metrics.csv are
derived from it, so a run killed at any moment resumes exactly where its last checkpoint left it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .version import __version__
from .config import TrainConfig
from .errors import BadRun
from .fsio import atomic_write, atomic_write_json

if TYPE_CHECKING:
    from .precision import Policy

# The folder's file names, its SHA-256 and metrics.csv writer live one layer down (run_layout.py); they are read as
# runs.BEST, runs.file_sha256 ... everywhere.
from .run_layout import (BEST, CHECKPOINT, CONFIG, LAST, METRIC_FIELDS, METRICS, TRAIN_MEAN,  # noqa: F401
                         file_sha256, write_metrics)


def _tensors(module_state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().to("cpu").contiguous().clone() for k, v in module_state.items()}


def save_weights(path: Path, model: nn.Module | dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """A model's weights (or a state dict of them) as a safetensors file, written atomically."""
    tensors = _tensors(model if isinstance(model, dict) else model.state_dict())
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata or {}))


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file. Anything else (a pickle, a truncated file) is refused."""
    if not path.is_file():
        raise BadRun(f"{path}: file not found")
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if len(head) < 9:
        raise BadRun(f"{path}: empty or truncated ({len(head)} bytes); it cannot be used: retrain into a new "
                           f"--out, or restore the file from a copy")
    # A safetensors file is an 8-byte little-endian header length, then that many bytes of JSON starting with '{'.
    # Anything else (a pickle starts with 0x80 and a protocol byte, a torch zip with 'PK') is refused before any
    # parser sees it: loading a pickle could run code. (The first byte alone proves nothing: a header 384 bytes
    # long also starts with 0x80.)
    header_length = int.from_bytes(head[:8], "little")
    if head[8:9] != b"{" or header_length + 8 > size:
        kind = "a pickle" if head[:1] == b"\x80" else "a zip (torch.save) archive" if head[:2] == b"PK" else \
            "not safetensors"
        raise BadRun(f"{path}: not a safetensors file ({kind}); pickled/zip checkpoints are refused: loading "
                           f"them could run code")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise BadRun(f"{path}: damaged or incomplete safetensors file ({e}); it cannot be used: retrain into "
                           f"a new --out, or restore the file from a copy") from None


def upgrade_keys(tensors: dict[str, torch.Tensor], model: nn.Module, legacy_head: str,
                 prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a weights file, with the names of a gzmorph 0.1 file (a flat module per model) mapped to the
    backbone + head layout when that is what makes them fit ``model``; files that already fit are left as they are.
    ``prefix``: only keys under it (``model.`` or ``ema.`` in a checkpoint) are considered."""
    own = {prefix + k for k in model.state_dict()}
    mine = {k for k in tensors if k.startswith(prefix)}
    if not legacy_head or mine == own:
        return tensors
    from .models.net import legacy_key

    mapped = {(prefix + legacy_key(k[len(prefix):], legacy_head) if k.startswith(prefix) else k): v
              for k, v in tensors.items()}
    return mapped if {k for k in mapped if k.startswith(prefix)} == own else tensors


def load_weights(path: Path, model: nn.Module, legacy_head: str = "") -> dict[str, str]:
    tensors, metadata = read_safetensors(path)
    tensors = upgrade_keys(tensors, model, legacy_head)
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    wrong = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise BadRun(f"{path}: weights do not fit this model (missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}, wrong shape {wrong[:3]})")
    model.load_state_dict(tensors)
    return metadata


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint = model + optimizer + progress, in one atomically written safetensors file
# ----------------------------------------------------------------------------------------------------------------

def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{name}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars[f"{pid}.{name}"] = value
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in info["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})


@dataclass
class Progress:
    """What a checkpoint records besides tensors."""

    epoch: int  # epochs finished
    best_rmse: float  # lowest valid RMSE so far (inf before any)
    best_epoch: int
    history: list[dict[str, float]]  # metrics rows, one per finished epoch
    stopped_early: bool = False  # early stopping (patience) ended the run before its last epoch


def save_checkpoint(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer, progress: Progress,
                    average=None) -> None:
    """``average``: the run's :class:`gzmorph.training.WeightAverage`, if it keeps one."""
    tensors = _tensors(model.state_dict(), "model.")
    opt_tensors, opt_info = _optimizer_tensors(optimizer)
    tensors.update(opt_tensors)
    if average is not None:
        tensors.update(_tensors(average.model.state_dict(), "ema."))
    metadata = {"gzmorph_version": __version__, "optimizer": json.dumps(opt_info),
                "progress": json.dumps(progress.__dict__),
                "ema_updates": str(average.updates if average is not None else 0)}
    atomic_write(run / CHECKPOINT, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_checkpoint(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, average=None,
                    legacy_head: str = "") -> Progress:
    tensors, metadata = read_safetensors(run / CHECKPOINT)
    for prefix in ("model.", "ema."):
        tensors = upgrade_keys(tensors, model, legacy_head, prefix)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state)
        if optimizer is not None:
            _restore_optimizer(optimizer, tensors, json.loads(metadata["optimizer"]))
        if average is not None:
            average.model.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
            average.updates = int(metadata["ema_updates"])
        return Progress(**json.loads(metadata["progress"]))
    except (KeyError, ValueError, RuntimeError) as e:
        raise BadRun(f"{run / CHECKPOINT}: checkpoint does not match this run's model ({e})") from None


def read_metrics(run: Path) -> list[dict[str, float]]:
    path = run_folder(run) / METRICS
    if not path.is_file():
        raise BadRun(f"{path}: no metrics yet (has the run finished an epoch?)")
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def write_config(run: Path, cfg: TrainConfig, runtime: dict | None = None) -> None:
    """``runtime``: where and how the run trains (device, precision, layout), recorded beside the config."""
    atomic_write_json(run / CONFIG, {"gzmorph_version": __version__, "train": cfg.to_dict(),
                                     **({"runtime": runtime} if runtime else {})})


def run_folder(run: str | Path | None) -> Path:
    """The folder of ``run``: the path itself, or for ``pretrained`` (or None) the model inside gzmorph, unpacked
    into the cache (``gzmorph.pretrained``)."""
    from . import pretrained

    return pretrained.run_folder() if pretrained.is_alias(run) else Path(run)


def run_name(run: str | Path | None) -> str:
    """How outputs record the run: ``pretrained`` for the model inside gzmorph (its cache folder is an accident of
    the machine), else the folder."""
    from . import pretrained

    return "pretrained" if pretrained.is_alias(run) else str(run)


def read_config(run: str | Path | None) -> TrainConfig:
    path = run_folder(run) / CONFIG
    if not path.is_file():
        raise BadRun(f"{run}: not a gzmorph run folder (no {CONFIG}); pass the --out folder of "
                           f"`gzmorph train`")
    try:
        return TrainConfig.from_dict(json.loads(path.read_text())["train"])
    except (ValueError, KeyError, TypeError) as e:
        raise BadRun(f"{path}: unreadable run config ({e})") from None


def write_train_mean(run: Path, mean: np.ndarray, names: list[str] | None = None) -> None:
    """``names``: the outputs' names (default: Kaggle's 37 columns)."""
    from . import tree

    atomic_write_json(run / TRAIN_MEAN, dict(zip(names or tree.COLUMNS, map(float, mean))))


def read_train_mean(run: Path) -> np.ndarray:
    """The per-output train mean, in output order (Kaggle's columns, or a fine-tuning task's)."""
    d = json.loads((run_folder(run) / TRAIN_MEAN).read_text())
    return np.array(list(d.values()), np.float32)


@dataclass
class LoadedModel:
    """A trained model ready for inference, placed on its device and layout, with what is needed to prepare its
    images and the precision policy it runs under."""

    model: nn.Module
    config: TrainConfig
    weights: Path
    sha256: str
    policy: "Policy"

    @property
    def prep(self):
        from .data.images import Preprocess
        from .models import get_spec

        spec = get_spec(self.config.model)
        return Preprocess(spec.crop, spec.size)


def task_of(cfg: TrainConfig):
    """The fine-tuning task of a run (``gzmorph.tasks.Task``), or None for the 37-answer tree."""
    from .tasks import Task

    return Task.from_dict(cfg.task) if cfg.task else None


def output_names(cfg: TrainConfig) -> list[str]:
    from . import tree

    task = task_of(cfg)
    return task.output_names if task else list(tree.COLUMNS)


def build_model(cfg: TrainConfig) -> nn.Module:
    """The (untrained) network a config describes: its model, options and head, over the 37 answers or, for a
    fine-tuned run, over its task's outputs."""
    from .models import create_model
    from .models.heads import Head

    net = create_model(cfg.model, head=cfg.head, **cfg.model_options)
    task = task_of(cfg)
    if task is not None:
        net.head = Head(net.feature_dim, task.width, "task", dropout=getattr(net.head.dropout, "p", 0.0),
                        blocks=task.blocks)
    return net


def _unpacked_from_the_package(metadata: dict[str, str]) -> bool:
    """True for the float32 copy ``gzmorph.pretrained`` unpacks: its metadata names the shipped file and that file's
    SHA-256, which must be the one the installed card records (no other file can claim another's identity)."""
    from . import pretrained

    if not metadata.get("sha256") or metadata.get("source") != pretrained.WEIGHTS.name:
        return False
    try:
        return metadata["sha256"] == pretrained.card()["sha256"]
    except BadRun:  # no packaged model installed
        return False


def load_model(run: str | Path | None = None, which: str = "best", device: str | torch.device = "cpu",
               precision: str = "auto") -> LoadedModel:
    """The model of a run folder: ``which`` = "best" (lowest valid RMSE), "last", or a path to a .safetensors.

    ``precision`` (auto | fp32 | bf16, see :mod:`gzmorph.precision`) is how it will run; the weights are float32
    whatever it is."""
    from .models import get_spec
    from .models.net import fold_batchnorm
    from .precision import pick_device, resolve

    run = run_folder(run)
    cfg = read_config(run)
    path = Path(which) if which not in ("best", "last") else run / (BEST if which == "best" else LAST)
    if which == "best" and not path.exists():
        path = run / LAST
    policy = resolve(precision, device if isinstance(device, torch.device) else pick_device(device), predict_only=True)
    model = build_model(cfg)
    metadata = load_weights(path, model, get_spec(cfg.model).legacy_head)
    if policy.fold_batchnorm:  # `--precision fp32` keeps the model exactly as it was trained
        model = fold_batchnorm(model.eval())
    policy.place(model).eval()
    # The packaged model runs from a float32 copy in the cache; what identifies it is the file that ships, whose
    # SHA-256 its card and the README quote (the copy records it), not the copy's own.
    if _unpacked_from_the_package(metadata):
        return LoadedModel(model, cfg, Path(metadata.get("source_path", path)), metadata["sha256"], policy)
    return LoadedModel(model, cfg, path, file_sha256(path), policy)
