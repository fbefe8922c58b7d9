"""A teacher's answers as a soft-label file for ``gzmorph train --soft-labels`` (distillation, pseudo-labels).

The teacher is one model or an ensemble: each run predicts every image of the folders with ``tta`` views, and the
file holds the mean over the runs. A mean of tree-consistent answer vectors is tree-consistent (every tree sum is
linear), so the file passes the catalogue checks that volunteers' files pass.

It answers every image it is given, the test split's too if the folder holds them: the training side
(``data/soft_labels.py``) is what keeps held-out galaxies out of training, so one teacher file serves every run.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.catalogue import Catalogue, read_catalogue
from ..errors import BadArgument
from ..fsio import atomic_write
from .answer_table import answer_columns, describe
from .predict import predict
from .table_writer import TableWriter

log = logging.getLogger("gzmorph")


def write_teacher_labels(teachers: Sequence[str | Path | None], folders: Sequence[str | Path], out: str | Path, *,
                         tta: int = 16, batch_size: int = 256, device: str = "auto", workers: int | None = None,
                         progress: bool = True) -> Path:
    """Write ``out``: a Kaggle CSV (GalaxyID + 37 answers) of the mean answers of ``teachers`` (runs; None = the
    packaged model) over ``tta`` views, for every image of ``folders``. Unreadable images are skipped and logged."""
    if not teachers or not folders:
        raise BadArgument("a teacher needs at least one run and one folder of images")
    out = Path(out)
    per_teacher: list[Catalogue] = []
    with tempfile.TemporaryDirectory(prefix="gzmorph-teacher-", dir=out.parent if out.parent.exists() else None) as tmp:
        for t, run in enumerate(teachers):
            parts = []
            for f, folder in enumerate(folders):
                part = Path(tmp) / f"t{t}-f{f}.csv"
                predict(run, folder, part, tta=tta, batch_size=batch_size, device=device, workers=workers,
                        skip_bad=True, columns="kaggle", progress=progress)
                parts.append(read_catalogue(part, require_all=True, check_tree=False))  # our own file
            per_teacher.append(Catalogue.concat(parts))
    ids = per_teacher[0].ids
    order = np.argsort(ids)
    mean = np.zeros((len(ids), per_teacher[0].labels.shape[1]), np.float64)
    for cat in per_teacher:
        if len(cat) != len(ids) or not np.array_equal(np.sort(cat.ids), ids[order]):
            raise BadArgument("the teachers answered different galaxies (an image one of them could not read?)")
        mean += cat.labels[np.argsort(cat.ids)]
    mean /= len(per_teacher)

    def write(tmp_out: Path) -> None:
        table = TableWriter(tmp_out, ".csv", describe)
        try:
            table.write(answer_columns(mean.astype(np.float32), [str(i) for i in ids[order]], columns="kaggle"))
        finally:
            table.close()

    atomic_write(out, write)
    log.info("wrote %s: %d galaxies, the mean of %d teacher(s) over %d views", out, len(ids), len(per_teacher), tta)
    return out
