"""The files of a run folder, by name, and the two writers that need nothing else: the weights' SHA-256 and
metrics.csv. What reads and writes whole runs is ``runs.py``; this layer sits under it so that the packaged model
(``gzmorph.pretrained``), which ``runs`` resolves, can lay out a run folder without importing ``runs`` back.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

from .fsio import atomic_write_text

CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
LAST = "model.safetensors"
BEST = "best.safetensors"
METRICS = "metrics.csv"
TRAIN_MEAN = "train_mean.json"
METRIC_FIELDS = ("epoch", "train_loss", "train_rmse", "valid_loss", "valid_rmse", "lr", "seconds")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_metrics(run: Path, history: list[dict[str, float]]) -> None:
    """metrics.csv: the columns every run has, then any others its rows hold (a fine-tuning task's per-column
    scores), in the order they first appear."""
    extra = dict.fromkeys(k for row in history for k in row if k not in METRIC_FIELDS)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*METRIC_FIELDS, *extra], lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: row.get(k, "") for k in w.fieldnames})
    atomic_write_text(run / METRICS, buf.getvalue())
