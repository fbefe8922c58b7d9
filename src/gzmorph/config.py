"""The typed training configuration, saved as JSON beside every checkpoint (the nanoGPT pattern).

Fields left as None take the model's recipe defaults (see ``models/``), so ``gzmorph train --model seed-cnn``
reproduces the report's recipe and a newer model gets its own tuned recipe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import GzmorphError


@dataclass
class TrainConfig:
    data: str  # Kaggle-layout folder (images_training_rev1/, training_solutions_rev1.csv, optional splits.csv)
    out: str = "runs/run"  # run folder: config, checkpoints, metrics
    model: str = "gznet"  # a name from `gzmorph models`; gznet is the default, seed-cnn the report's CNN
    epochs: int | None = None  # passes over the training split; None: the model's recipe
    batch_size: int | None = None  # None: the model's recipe
    lr: float | None = None  # peak Adam learning rate; None: the model's recipe
    weight_decay: float | None = None  # AdamW's decoupled decay; 0 = plain Adam as in the report; None: recipe
    schedule: str | None = None  # "constant" (the report) or "cosine" (linear warm-up, cosine decay to 0); None: recipe
    warmup_epochs: float | None = None  # linear warm-up length for "cosine" (large lr on random weights diverges)
    ema: float | None = None  # decay of an exponential moving average of the weights, evaluated and saved instead
    #                           of the raw weights (smooths the last noisy steps); 0 = off; None: recipe
    patience: int | None = None  # stop after this many epochs without a better valid RMSE; None = never stop early
    loss: str | None = None  # "bce" (the report) or "mse" (the Kaggle metric is RMSE); None: the model's recipe
    head: str | None = None  # "sigmoid" | "tree" | "tree-relu"; None: the model's recipe
    augment: str | None = None  # "none" | "report" | "strong"; None: the model's recipe
    model_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"freeze_layers": 143} for seed-resnet50
    pretrained: str | None = None  # weights file/URL for families that have them (seed-resnet50: torchvision)
    seed: int = 0  # shuffling, augmentation, dropout and init all derive from it: same seed, same run
    limit: int | None = None  # at most this many galaxies per split (quick runs, tests)
    valid_fraction: float = 0.1  # used only when the data has no splits.csv
    use_partial: bool = True  # train on training_solutions_partial.csv too (unknown answers masked in the loss)
    skip_bad: bool = False  # leave out rows with missing/unreadable images (logged, counted) instead of stopping
    device: str = "auto"  # "auto" = cuda if available, else cpu
    precision: str = "auto"  # "auto" | "fp32" | "bf16" (gzmorph.precision); saved resolved, so resume keeps it
    threads: int | None = None  # torch CPU threads; None: all cores
    workers: int | None = None  # processes decoding JPEGs; None: all cores
    cache_dir: str | None = None  # decoded-image cache; None: $GZMORPH_CACHE or ~/.cache/gzmorph

    def resolved(self) -> "TrainConfig":
        """A copy with every None recipe field filled from the model's defaults."""
        from .models import get_spec

        spec = get_spec(self.model)
        base = {"epochs": 10, "batch_size": 32, "lr": 1e-3, "loss": "mse", "head": "tree", "augment": "none",
                "weight_decay": 0.0, "schedule": "constant", "warmup_epochs": 0.0, "ema": 0.0}
        base.update(spec.defaults)
        filled = {k: (getattr(self, k) if getattr(self, k) is not None else base[k]) for k in base}
        cfg = replace(self, **filled)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        from .augment import PRESETS
        from .models.heads import HEADS

        if self.loss not in ("bce", "mse"):
            raise GzmorphError(f"--loss must be bce or mse, got {self.loss!r}")
        if self.head not in HEADS:
            raise GzmorphError(f"--head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.schedule not in ("constant", "cosine"):
            raise GzmorphError(f"--schedule must be constant or cosine, got {self.schedule!r}")
        if not 0 <= self.ema < 1:
            raise GzmorphError(f"--ema must be in [0, 1) (0 = off; 0.999 is typical), got {self.ema}")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            raise GzmorphError("--weight-decay and --warmup-epochs must not be negative")
        if self.patience is not None and self.patience < 1:
            raise GzmorphError(f"--patience must be at least 1 epoch, got {self.patience}")
        if self.augment not in PRESETS:
            raise GzmorphError(f"--augment must be one of {', '.join(PRESETS)}, got {self.augment!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise GzmorphError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        from .precision import check_precision

        check_precision(self.precision)
        if not self.lr > 0:
            raise GzmorphError(f"--lr must be positive, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        if "precision" not in d:  # a run made before the precision policy trained in fp32 (on CPUs, NCHW)
            d = {**d, "precision": "fp32"}
        return cls(**{k: v for k, v in d.items() if k in known})
