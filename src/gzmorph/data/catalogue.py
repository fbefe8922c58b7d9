"""Label catalogues in the Kaggle layout: ``GalaxyID`` + some or all of the 37 ``Class*`` columns.

Every problem with a file is one :class:`BadData` naming the file, the row (1-based line number in the file,
header = line 1), the column and what to do. Nothing is silently dropped or clipped.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import tree
from ..errors import BadData
from .layout import ID_COLUMN
# Values may stray this far outside [0, 1] through rounding in the file; anything further is an error.
RANGE_TOLERANCE = 1e-6


@dataclass
class Catalogue:
    """Labels for a set of galaxies.

    ``labels`` is (N, 37) float32 in Kaggle column order; ``mask`` is (N, 37) bool, True where the answer is known.
    Unknown answers hold 0 in ``labels`` and must never be read as zero votes: use the mask.
    """

    ids: np.ndarray  # (N,) int64
    labels: np.ndarray  # (N, 37) float32
    mask: np.ndarray  # (N, 37) bool
    source: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> "Catalogue":
        return Catalogue(self.ids[rows], self.labels[rows], self.mask[rows], self.source)

    @staticmethod
    def concat(parts: list["Catalogue"]) -> "Catalogue":
        ids = np.concatenate([p.ids for p in parts])
        _check_unique(ids, " + ".join(p.source for p in parts))
        return Catalogue(ids, np.concatenate([p.labels for p in parts]), np.concatenate([p.mask for p in parts]),
                         " + ".join(p.source for p in parts))

    @property
    def fully_labelled(self) -> np.ndarray:
        return self.mask.all(axis=1)


def _check_unique(ids: np.ndarray, source: str) -> None:
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = values[counts > 1]
        raise BadData(f"{source}: GalaxyID {dup[0]} appears {counts[counts > 1][0]} times "
                           f"({len(dup)} duplicated id(s) in all); each galaxy must have one row")


def parse_id(text: str, where: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise BadData(f"{where}: GalaxyID {text!r} is not an integer") from None
    if value < 0:
        raise BadData(f"{where}: GalaxyID {value} is negative")
    if value > np.iinfo(np.int64).max:
        raise BadData(f"{where}: GalaxyID {value} is too large (at most {np.iinfo(np.int64).max})")
    return value


def read_table(path: Path, what: str, example: str, id_hint: str = "") -> tuple[list[str], list[list[str]]]:
    """(stripped header, rows) of a CSV that must have a ``GalaxyID`` column and no column twice: a catalogue or a
    fine-tuning label file (``what``, with an ``example`` column for the messages)."""
    if not path.is_file():
        raise BadData(f"{path}: {what} file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: tolerate a BOM from spreadsheet exports
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise BadData(f"{path}: not a readable CSV file ({e})") from None
    if not rows:
        raise BadData(f"{path}: file is empty; expected a header line '{ID_COLUMN},{example},...'")
    header = [h.strip() for h in rows[0]]
    if ID_COLUMN not in header:
        raise BadData(f"{path}: no '{ID_COLUMN}' column in the header {header[:4]}...{id_hint}")
    if len(set(header)) != len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise BadData(f"{path}: column {dup!r} appears twice in the header")
    return header, rows


def _parse_clean(body: list, width: int, id_pos: int, label_pos: list[int]
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids, values) parsed by numpy in C when the whole file is clean, or None when anything is off, and the
    cell-by-cell loop must find the first bad cell and name it. Every check of that loop is made here too, as
    whole-array tests; this path only makes the common case (a clean file) about 5x faster."""
    if any(len(r) != width for _, r in body):
        return None
    try:
        ids = np.array([r[id_pos] for _, r in body], dtype=np.int64)
        values = np.array([[r[p] for p in label_pos] for _, r in body], dtype=np.float64).reshape(len(body), -1)
    except (ValueError, OverflowError):
        return None
    if (ids < 0).any() or len(np.unique(ids)) != len(ids) or not np.isfinite(values).all() \
            or (values < -RANGE_TOLERANCE).any() or (values > 1 + RANGE_TOLERANCE).any():
        return None
    return ids, values


def read_catalogue(path: str | Path, *, require_all: bool = False, check_tree: bool = True,
                   tolerance: float = tree.DEFAULT_SUM_TOLERANCE) -> Catalogue:
    """Read and validate a Kaggle-layout CSV.

    Columns may be any subset of the 37 (``training_solutions_partial.csv`` has 17): missing ones are masked.
    ``require_all`` makes a missing column an error (for the full solutions file). ``check_tree`` rejects rows whose
    answers do not sum to their parent's value within ``tolerance`` (see :data:`tree.DEFAULT_SUM_TOLERANCE`).
    """
    path = Path(path)
    header, rows = read_table(path, "catalogue", tree.COLUMNS[0],
                              "; the first column of a Kaggle catalogue is GalaxyID")
    unknown = [h for h in header if h != ID_COLUMN and h not in tree.COLUMN_INDEX]
    if unknown:
        raise BadData(f"{path}: unknown column(s) {unknown[:5]}; label columns are Kaggle's "
                           f"{tree.COLUMNS[0]} ... {tree.COLUMNS[-1]}")
    label_columns = [h for h in header if h != ID_COLUMN]
    if not label_columns:
        raise BadData(f"{path}: no Class columns; expected some of {tree.COLUMNS[0]} ... {tree.COLUMNS[-1]}")
    missing = [c for c in tree.COLUMNS if c not in label_columns]
    if require_all and missing:
        raise BadData(f"{path}: missing column(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                           f"this file must have all 37 Kaggle columns")

    id_pos = header.index(ID_COLUMN)
    positions = [(header.index(c), tree.COLUMN_INDEX[c]) for c in label_columns]
    body = [(line, r) for line, r in enumerate(rows[1:], start=2) if any(cell.strip() for cell in r)]
    n = len(body)
    ids = np.empty(n, np.int64)
    labels = np.zeros((n, tree.N_OUTPUTS), np.float32)
    mask = np.zeros((n, tree.N_OUTPUTS), bool)
    for c in label_columns:
        mask[:, tree.COLUMN_INDEX[c]] = True
    fast = _parse_clean(body, len(header), id_pos, [f for f, _ in positions])
    if fast is not None:
        ids, values = fast
        labels[:, [o for _, o in positions]] = np.clip(values, 0.0, 1.0)
    first_line: dict[int, int] = {}  # GalaxyID -> line where it first appears
    for k, (line, r) in enumerate(body if fast is None else ()):
        where = f"{path}, line {line}"
        if len(r) != len(header):
            raise BadData(f"{where}: {len(r)} fields but the header has {len(header)}")
        ids[k] = gid = parse_id(r[id_pos], where)
        if gid in first_line:
            raise BadData(f"{where}: GalaxyID {gid} already appears on line {first_line[gid]}; each galaxy "
                               f"must have one row")
        first_line[gid] = line
        for file_pos, out_pos in positions:
            cell = r[file_pos].strip()
            try:
                v = float(cell)
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise BadData(f"{where}, column {header[file_pos]}: value {cell!r} is not a number; "
                                   f"every listed answer needs a vote fraction in [0, 1] (leave the column out "
                                   f"of the file if it is unknown for all rows)")
            if v < -RANGE_TOLERANCE or v > 1 + RANGE_TOLERANCE:
                raise BadData(f"{where}, column {header[file_pos]}: value {v} is outside [0, 1]")
            labels[k, out_pos] = min(max(v, 0.0), 1.0)
    _check_unique(ids, str(path))
    if check_tree and n:
        bad = tree.tree_violations(labels, mask, tolerance)
        if bad.any():
            row, qi = np.argwhere(bad)[0]
            q = tree.QUESTIONS[qi]
            got = labels[row, q.slice].sum()
            want = 1.0 if q.parent is None else labels[row, tree.COLUMN_INDEX[q.parent]]
            raise BadData(
                f"{path}, line {body[row][0]} (GalaxyID {ids[row]}): Class{q.number} answers sum to {got:.4f} but "
                f"should sum to {want:.4f} ({'1' if q.parent is None else q.parent}); {int(bad.any(axis=1).sum())} "
                f"row(s) break the tree sums (tolerance {tolerance}). Kaggle's fractions are weighted down the tree: "
                f"is a column misplaced, or are the fractions unweighted?")
    return Catalogue(ids, labels, mask, str(path))
