"""The typed training configuration, saved as JSON beside every checkpoint (the nanoGPT pattern), and the value sets
its fields accept.

Each field carries its own help text: ``gzmorph train``'s flags are built from these fields (``cli.py``), so a new
field is a new flag with nothing else to edit. Fields left as None take the model's recipe (``models/``), so
``gzmorph train --model seed-cnn`` reproduces the report's recipe and a newer model gets its own tuned recipe.

This module imports no torch: ``gzmorph --help`` reads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import BadArgument

LOSSES = ("bce", "mse")
HEADS = ("sigmoid", "tree", "tree-relu")  # see models/heads.py
SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16")  # see precision.py
TTA_VIEWS = (1, 2, 4, 8, 16, 32)  # see inference/tta.py


@dataclass(frozen=True)
class Augment:
    """One augmentation recipe (applied by ``training/augment.py``): galaxy morphology does not depend on orientation,
    mirror image or (within limits) distance, so none of these changes a label."""

    rotation: str = "none"  # "none" | "90" (multiples of 90 degrees: exact, no interpolation) | "any"
    flip: bool = False  # mirror image with probability 1/2
    shift: float = 0.0  # maximum shift, as a fraction of the image side, uniform in [-shift, shift] on each axis
    zoom: float = 1.0  # maximum zoom factor: scale log-uniform in [1/zoom, zoom]
    brightness: float = 0.0  # per-image, per-channel gain log-uniform in [exp(-b), exp(b)]

    @property
    def is_identity(self) -> bool:
        return self == Augment()


AUGMENTATIONS: dict[str, Augment] = {
    "none": Augment(),
    # The report's Keras generator: flips, 90-degree rotations, small shifts and rescaling.
    "report": Augment(rotation="90", flip=True, shift=0.05, zoom=1.1),
    # Dieleman (2014): any angle, flips, log-uniform zoom 1/1.3..1.3, shifts of a few pixels, colour perturbation.
    "strong": Augment(rotation="any", flip=True, shift=0.05, zoom=1.3, brightness=0.1),
}


def knob(default: Any = None, help: str = "", *, choices: tuple | None = None, factory=None,  # noqa: A002
         train_only: bool = False) -> Any:
    """A config field with its help text (and accepted values) kept beside it, for the CLI built from the fields.
    ``train_only``: meaningless when fine-tuning (the Kaggle catalogue, or what the ``--init`` run decides), so
    ``gzmorph finetune`` has no flag for it."""
    metadata = {"help": help, "choices": choices, "train_only": train_only}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


RECIPE = "; default: the model's recipe"
# Fine-tuning from a pretrained backbone (`gzmorph finetune`): the new head alone first, so that its random start
# does not send large gradients into the backbone, then everything, the backbone at a tenth of the rate. epochs=None
# is resolved from the number of labelled galaxies (at least MIN_FINETUNE_STEPS optimizer steps).
FINETUNE_RECIPE = {"epochs": None, "lr": 1e-3, "head_epochs": 2, "backbone_lr": 0.1, "ema": 0.99, "warmup_epochs": 1,
                   "schedule": "cosine", "weight_decay": 5e-4, "augment": "strong", "batch_size": 64}
MIN_FINETUNE_STEPS = 400


@dataclass
class TrainConfig:
    data: str = knob("", "Kaggle-layout folder (images_training_rev1/, training_solutions_rev1.csv, optional "
                         "splits.csv)", train_only=True)
    out: str = knob("runs/run", "run folder to create: config, checkpoints, metrics")
    model: str = knob("gznet", "a model from `gzmorph models`; gznet is the default, seed-cnn the report's CNN",
                      train_only=True)
    epochs: int | None = knob(None, "passes over the training split" + RECIPE)
    minutes: float | None = knob(None, "instead of --epochs: train for about this many minutes, the epoch count picked "
                                       "from the first epoch's time and saved in the run's config (decoding the "
                                       "images into the cache beforehand is not counted)")
    batch_size: int | None = knob(None, "galaxies per optimizer step (the global batch under torchrun); without --lr, "
                                        "the model's rate scales with it" + RECIPE)
    lr: float | None = knob(None, "peak learning rate" + RECIPE)
    weight_decay: float | None = knob(None, "AdamW's decoupled decay; 0 = plain Adam, as in the report" + RECIPE)
    schedule: str | None = knob(None, "learning-rate schedule: constant (the report) or cosine (linear warm-up, "
                                      "cosine decay to 0)" + RECIPE, choices=SCHEDULES)
    warmup_epochs: float | None = knob(None, "linear warm-up before the cosine decay (a large lr on random weights "
                                             "diverges)" + RECIPE)
    ema: float | None = knob(None, "decay of a moving average of the weights, evaluated and saved instead of the "
                                   "raw weights (smooths the last noisy steps), e.g. 0.999; 0 = off" + RECIPE)
    patience: int | None = knob(None, "stop after this many epochs without a better valid RMSE (default: never)")
    loss: str | None = knob(None, "bce (the report) or mse (the Kaggle metric is RMSE)" + RECIPE, choices=LOSSES)
    head: str | None = knob(None, "output head: tree (per-question softmax x parent answer), tree-relu "
                                  "(Dieleman's), sigmoid (the report's)" + RECIPE, choices=HEADS, train_only=True)
    augment: str | None = knob(None, "augmentation: none, report (flips, quarter turns, shifts, zoom) or strong "
                                     "(any angle, zoom, shifts, colour)" + RECIPE, choices=tuple(AUGMENTATIONS))
    model_options: dict[str, Any] = knob(help="model options (see `gzmorph models`), e.g. {'widths': [48, 96, 192, "
                                              "384]}; on the command line --option KEY=VALUE", factory=dict,
                                         train_only=True)
    init: str | None = knob(None, "start from the weights of this run (a run folder, or 'pretrained' for the "
                                  "model inside gzmorph): the backbone always, the head too where the task is the "
                                  "same; the model and its options are then the run's")
    labels: str | None = knob(None, "fine-tuning: a CSV of GalaxyID + your own columns (classes, fractions or numbers; "
                                    "empty cells unknown), instead of the Kaggle catalogue")
    images: str | None = knob(None, "fine-tuning: the folder of the label file's images (<GalaxyID>.jpg, .png, "
                                    "FITS)")
    columns: list[str] = knob(help="fine-tuning: the label columns to learn (default: all but GalaxyID and split)",
                              factory=list)
    task: dict[str, Any] | None = knob(None, "fine-tuning: the task read from the label file (set by gzmorph, "
                                             "saved so the run rebuilds its head)")
    head_epochs: int | None = knob(None, "fine-tuning: epochs that train the new head alone, before the whole "
                                         "network" + RECIPE)
    backbone_lr: float | None = knob(None, "the backbone's learning rate as a fraction of --lr once it trains (a "
                                           "pretrained backbone wants small steps)" + RECIPE)
    pretrained: str | None = knob(None, "weights file or URL for families that have them (seed-resnet50, "
                                        "resnet50: torchvision's; 'imagenet' for its ImageNet weights)",
                                   train_only=True)
    seed: int = knob(0, "shuffling, augmentation, dropout and initialisation all derive from it: same seed, "
                        "same run")
    limit: int | None = knob(None, "at most this many galaxies per split (quick runs, tests)")
    valid_fraction: float = knob(0.1, "the valid share of a seeded random split, used only without splits.csv")
    train_on_valid: bool = knob(False, "train on the valid split too, for a final model: no galaxy is then held out, "
                                       "so valid RMSE is no longer a held-out score and the last weights are the ones "
                                       "to use")
    mask_questions: list[str] = knob(help="questions never to learn, by name (gzmorph.tree), e.g. ['bar']: their "
                                          "answers are masked everywhere, as unknown ones are. For measuring transfer "
                                          "to a question the model never saw", factory=list, train_only=True)
    use_partial: bool = knob(True, "train on training_solutions_partial.csv too (its unknown answers are masked "
                                   "in the loss)", train_only=True)
    soft_labels: str | None = knob(None, "distillation / pseudo-labels: a Kaggle CSV of a teacher's 37 answers for more "
                                         "galaxies (e.g. `gzmorph predict DIR --tta 16 -o teacher.csv`). Unlabelled "
                                         "galaxies join the train split; partially labelled ones get their unknown "
                                         "answers filled; valid/test galaxies are left out (data/soft_labels.py)",
                                   train_only=True)
    soft_images: str | None = knob(None, "the folder of the --soft-labels galaxies without labels "
                                         "(<GalaxyID>.jpg ...)", train_only=True)
    checkpoint_every: float = knob(60.0, "seconds between checkpoints (and best/last weight files); one is always "
                                         "written after the last epoch and on SIGTERM. Every epoch on a CPU; on a "
                                         "GPU, whose epochs take seconds, writing each would cost more than training")
    skip_bad: bool = knob(False, "leave out rows with missing or unreadable images (logged, counted) instead of "
                                 "stopping")
    device: str = knob("auto", "cpu, cuda, cuda:1 ...; auto = the GPU if there is one")
    precision: str = knob("auto", "fp32, or bf16 autocast + channels-last; auto = bf16 where the hardware does it "
                                  "natively. Saved resolved, so a resumed run keeps it", choices=PRECISIONS)
    threads: int | None = knob(None, "torch CPU threads (default: all cores)")
    workers: int | None = knob(None, "processes decoding images (default: all cores)")
    cache_dir: str | None = knob(None, "decoded-image cache (default: $GZMORPH_CACHE or ~/.cache/gzmorph)")

    def with_recipe(self, model_defaults: dict[str, Any]) -> "TrainConfig":
        """A copy with every None recipe field filled from ``model_defaults`` (its model's recipe: the registry
        knows it, and ``gzmorph.models.resolve_recipe`` passes it here; a config never imports the models)."""
        base = {"epochs": 10, "batch_size": 32, "lr": 1e-3, "loss": "mse", "head": "tree", "augment": "none",
                "weight_decay": 0.0, "schedule": "constant", "warmup_epochs": 0.0, "ema": 0.0, "head_epochs": 0,
                "backbone_lr": 1.0}
        base.update(model_defaults)
        if self.labels:
            base.update(FINETUNE_RECIPE)
        filled = {k: (getattr(self, k) if getattr(self, k) is not None else base[k]) for k in base}
        cfg = replace(self, **filled)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for f in fields(self):
            choices, value = f.metadata.get("choices"), getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise BadArgument(f"--{f.name.replace('_', '-')} must be one of {', '.join(choices)}, got {value!r}")
        if not 0 <= self.ema < 1:
            raise BadArgument(f"--ema must be in [0, 1) (0 = off; 0.999 is typical), got {self.ema}")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            raise BadArgument("--weight-decay and --warmup-epochs must not be negative")
        if not self.checkpoint_every >= 0:
            raise BadArgument(f"--checkpoint-every must be 0 (every epoch) or more seconds, got {self.checkpoint_every}")
        if self.patience is not None and self.patience < 1:
            raise BadArgument(f"--patience must be at least 1 epoch, got {self.patience}")
        if self.head_epochs < 0 or not self.backbone_lr >= 0:
            raise BadArgument("--head-epochs and --backbone-lr must not be negative")
        if self.soft_labels and self.labels:
            raise BadArgument("--soft-labels adds galaxies to the Kaggle catalogue's 37 answers; it cannot be combined "
                              "with fine-tuning on --labels")
        if self.soft_images and not self.soft_labels:
            raise BadArgument("--soft-images is the folder of the --soft-labels galaxies; give --soft-labels too")
        if self.labels and not self.images:
            raise BadArgument("fine-tuning on --labels needs --images DIR, the folder of their images")
        for name in ("epochs", "batch_size"):
            if name == "epochs" and self.epochs is None and self.labels:
                continue  # resolved from the number of labelled galaxies when they are read
            if getattr(self, name) < 1:
                raise BadArgument(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        from .tree import QUESTION_BY_NAME

        unknown = [q for q in self.mask_questions if q not in QUESTION_BY_NAME]
        if unknown:
            raise BadArgument(f"--mask-questions: no question named {unknown[0]!r}; the names are "
                              f"{', '.join(QUESTION_BY_NAME)}")
        if not self.lr > 0:
            raise BadArgument(f"--lr must be positive, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        if "precision" not in d:  # a run made before the precision policy trained in fp32 (on CPUs, NCHW)
            d = {**d, "precision": "fp32"}
        return cls(**{k: v for k, v in d.items() if k in known})
