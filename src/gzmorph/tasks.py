"""What a model is asked: the 37-answer Galaxy Zoo tree (``gzmorph.tree``), or the user's own columns for
fine-tuning (this module).

A user's label file is ``GalaxyID`` + one or more columns; empty cells (and ``NA``, ``nan``) are unknown and masked
in the loss, like the partially labelled Kaggle galaxies. Each column becomes a block of outputs:

* ``classes``: any column with a cell that is not a number (``ring``, ``no_ring``, ``merger``...): one output per
  class, a softmax, cross-entropy. Every class needs at least two examples (one cannot be both learnt and checked).
* ``fraction``: numbers that all lie in [0, 1] (vote fractions, 0/1 flags): one sigmoid output, MSE (or BCE).
* ``number``: any other numbers (a size, a redshift): one linear output, MSE on the value standardised by the
  column's mean and spread (kept in the task, so predictions come back in the column's units).

The task is saved in the run's ``config.json``, so a fine-tuned run rebuilds its head and names its outputs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import BadData

KINDS = ("classes", "fraction", "number")
MISSING = ("", "na", "nan", "n/a", "null", "none", "?")


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # one of KINDS
    classes: tuple[str, ...] = ()  # kind "classes": the class names, sorted
    mean: float = 0.0  # kind "number": the standardisation
    std: float = 1.0

    @property
    def width(self) -> int:
        return len(self.classes) if self.kind == "classes" else 1

    @property
    def output_names(self) -> list[str]:
        return [f"{self.name}={c}" for c in self.classes] if self.kind == "classes" else [self.name]


@dataclass(frozen=True)
class Task:
    columns: tuple[Column, ...]

    @property
    def width(self) -> int:
        return sum(c.width for c in self.columns)

    @property
    def output_names(self) -> list[str]:
        return [n for c in self.columns for n in c.output_names]

    @property
    def blocks(self) -> list[tuple[str, int]]:
        """(kind, width) per column, in output order: what the head's output function needs."""
        return [(c.kind, c.width) for c in self.columns]

    def slices(self) -> list[slice]:
        out, start = [], 0
        for c in self.columns:
            out.append(slice(start, start + c.width))
            start += c.width
        return out

    def predicted_classes(self, values: np.ndarray) -> dict[str, list[str]]:
        """The most probable class of each galaxy, per classes column, from (N, width) outputs in output order
        (probabilities as predict writes them); ties go to the class named first."""
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != self.width:
            raise ValueError(f"expected (N, {self.width}) outputs of this task, got shape {values.shape}")
        return {c.name: [c.classes[i] for i in values[:, sl].argmax(1)]
                for c, sl in zip(self.columns, self.slices()) if c.kind == "classes"}

    def loss_name(self, fraction_loss: str = "mse") -> str:
        """What the training loss is, as the logs and plots name it: cross-entropy on class columns, ``fraction_loss``
        (``--loss``) on fractions, MSE on standardised numbers; a mixed task names each."""
        names = {"classes": "cross-entropy", "fraction": fraction_loss, "number": "mse"}
        return " + ".join(dict.fromkeys(names[c.kind] for c in self.columns))

    def to_dict(self) -> dict:
        return {"columns": [asdict(c) for c in self.columns]}

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        return cls(tuple(Column(**{**c, "classes": tuple(c.get("classes", ()))}) for c in d["columns"]))


@dataclass
class UserLabels:
    """A label file read against its task: (N, width) targets and mask in output order, and an optional split."""

    ids: np.ndarray  # (N,) int64
    targets: np.ndarray  # (N, width) float32: one-hot classes, fractions, standardised numbers; 0 where unknown
    mask: np.ndarray  # (N, width) bool
    split: np.ndarray | None  # (N,) "train" / "valid" from a `split` column, or None
    source: str


def _is_missing(cell: str) -> bool:
    return cell.strip().lower() in MISSING


def _number(cell: str) -> float | None:
    try:
        v = float(cell)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    from .data.catalogue import read_table

    header, rows = read_table(path, "label", "<your column>")
    body = [(line, r) for line, r in enumerate(rows[1:], start=2) if any(c.strip() for c in r)]
    for line, r in body:
        if len(r) != len(header):
            raise BadData(f"{path}, line {line}: {len(r)} fields but the header has {len(header)}")
    return header, body


def infer_task(path: str | Path, columns: list[str] | None = None, kinds: dict[str, str] | None = None) -> Task:
    """The task of a label file: every column but GalaxyID and split (or just ``columns``), each kind inferred
    from its cells unless ``kinds`` names it."""
    path = Path(path)
    header, body = _read_rows(path)
    usable = [h for h in header if h not in ("GalaxyID", "split")]
    chosen = columns or usable
    unknown = [c for c in chosen if c not in usable]
    if unknown:
        raise BadData(f"{path}: no column {unknown[0]!r}; its label columns are {usable}")
    if not chosen:
        raise BadData(f"{path}: no label column: besides GalaxyID (and split) it needs at least one column of "
                      f"classes or numbers")
    kinds = kinds or {}
    out = []
    for name in chosen:
        pos = header.index(name)
        cells = [r[pos].strip() for _, r in body if not _is_missing(r[pos])]
        if not cells:
            raise BadData(f"{path}, column {name}: every cell is empty; nothing to learn from it")
        numbers = [_number(c) for c in cells]
        kind = kinds.get(name) or ("classes" if any(v is None for v in numbers) else
                                   "fraction" if all(0.0 <= v <= 1.0 for v in numbers) else "number")
        if kind not in KINDS:
            raise BadData(f"column {name}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if kind == "classes":
            values, counts = np.unique(cells, return_counts=True)
            if len(values) < 2:
                raise BadData(f"{path}, column {name}: a single class ({str(values[0])!r}) in all {len(cells)} "
                              f"labelled galaxies; a classifier needs galaxies of at least two classes")
            rare = [str(v) for v, n in zip(values, counts) if n < 2]
            if rare:
                raise BadData(f"{path}, column {name}: class {rare[0]!r} has one example; every class needs at "
                              f"least two (merge it into another class, or leave its cells empty)")
            out.append(Column(name, kind, tuple(str(v) for v in values)))
            continue
        if any(v is None for v in numbers):
            bad = next(c for c, v in zip(cells, numbers) if v is None)
            raise BadData(f"{path}, column {name}: {bad!r} is not a number (kind {kind})")
        if kind == "fraction" and not all(0.0 <= v <= 1.0 for v in numbers):
            raise BadData(f"{path}, column {name}: fractions must lie in [0, 1]")
        arr = np.asarray(numbers, np.float64)
        if arr.min() == arr.max():  # e.g. a 0/1 flag that is 1 everywhere: a single class, in numbers
            raise BadData(f"{path}, column {name}: every value is {cells[0]}; a column that never changes has nothing "
                          f"to learn (it needs galaxies of at least two values)")
        std = float(arr.std()) if kind == "number" and arr.std() > 0 else 1.0
        out.append(Column(name, kind, (), float(arr.mean()) if kind == "number" else 0.0, std))
    return Task(tuple(out))


def read_labels(path: str | Path, task: Task) -> UserLabels:
    """Read a label file against ``task`` (from :func:`infer_task`, or a run's saved task)."""
    path = Path(path)
    header, body = _read_rows(path)
    missing = [c.name for c in task.columns if c.name not in header]
    if missing:
        raise BadData(f"{path}: no column {missing[0]!r}, which this task needs")
    ids = np.empty(len(body), np.int64)
    targets = np.zeros((len(body), task.width), np.float32)
    mask = np.zeros((len(body), task.width), bool)
    id_pos = header.index("GalaxyID")
    seen: dict[int, int] = {}
    for k, (line, r) in enumerate(body):
        where = f"{path}, line {line}"
        try:
            gid = int(r[id_pos].strip())
        except ValueError:
            raise BadData(f"{where}: GalaxyID {r[id_pos]!r} is not an integer") from None
        if gid in seen:
            raise BadData(f"{where}: GalaxyID {gid} already appears on line {seen[gid]}")
        seen[gid] = line
        ids[k] = gid
        for col, sl in zip(task.columns, task.slices()):
            cell = r[header.index(col.name)].strip()
            if _is_missing(cell):
                continue
            if col.kind == "classes":
                if cell not in col.classes:
                    raise BadData(f"{where}, column {col.name}: class {cell!r} is not one of {list(col.classes)}")
                targets[k, sl.start + col.classes.index(cell)] = 1.0
            else:
                v = _number(cell)
                if v is None:
                    raise BadData(f"{where}, column {col.name}: {cell!r} is not a number")
                if col.kind == "fraction" and not 0.0 <= v <= 1.0:
                    raise BadData(f"{where}, column {col.name}: {v} is outside [0, 1]")
                targets[k, sl.start] = (v - col.mean) / col.std
            mask[k, sl] = True
    split = None
    if "split" in header:
        split = np.array([r[header.index("split")].strip() for _, r in body])
        bad = sorted(set(split) - {"train", "valid"})
        if bad:
            raise BadData(f"{path}: split {bad[0]!r}; the split column holds train or valid")
    if not mask.any():
        raise BadData(f"{path}: no labelled cell in the task's columns")
    return UserLabels(ids, targets, mask, split, str(path))
