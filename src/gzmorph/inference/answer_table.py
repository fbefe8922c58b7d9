"""A model's answers as a table a person can read: one row per galaxy, columns named after the questions and answers
of ``gzmorph.tree``, or Kaggle's 37 ``ClassN.M`` columns exactly.

Kaggle's numbers are cumulative down the tree: ``Class3.1`` (bar) is P(features) x P(not edge-on) x P(bar), the
share of *all* volunteers who were asked about a bar and said yes. What an astronomer cutting on "barred" usually
wants is the share of those *asked* who said yes (Galaxy Zoo 2's own catalogues call it the vote fraction), beside
how many were asked at all. The named table gives both, so nobody has to redo the tree's arithmetic:

    <answer>_fraction   share of the volunteers asked the question who gave this answer (each question sums to 1)
    <answer>_kaggle     Kaggle's cumulative value: <answer>_fraction x <question>_reached
    <question>_reached  share of all volunteers who were asked the question (Kaggle value of its parent answer)
    <question>_answer   the answer with the largest fraction
    tree_path           the questions a volunteer following the majority at each step is asked, and their answers

``COLUMN_TABLE`` describes every column once: the README's table, the FITS header's comments and ``--help`` read it.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from .. import tree
from ..data.layout import ID_COLUMN
from ..errors import BadArgument

COLUMN_CHOICES = ("auto", "kaggle", "named")
PATH_SEPARATOR = " > "
ROOT_SEPARATOR = " | "  # between the walk from Q1 and the one from Q6 ("anything odd?"), asked of every galaxy


def column_table(spread: bool = False, interval: bool = False) -> list[tuple[str, str]]:
    """(column name pattern, what it holds) for the named table, in its order after the id and catalogue columns."""
    rows = [("tree_path", f"the most likely walk through the tree: answer names joined by '{PATH_SEPARATOR.strip()}', "
                     f"then '{ROOT_SEPARATOR.strip()}' and the walk from Q6 (anything odd?)"),
            ("<question>_answer", "the question's most likely answer (largest fraction), e.g. bar_answer = bar_no"),
            ("<question>_reached", "share of all volunteers who were asked the question (1 for shape and odd)"),
            ("<answer>_fraction", "share of the volunteers asked the question who gave this answer; a question's "
                                  "fractions sum to 1"),
            ("<answer>_kaggle", "Kaggle's cumulative value (Class columns): fraction x reached")]
    if spread:
        rows.append(("<answer>_kaggle_spread", "standard deviation of <answer>_kaggle over the --tta views"))
    if interval:
        rows += [("<answer>_kaggle_lower", "lower bound of the calibrated --interval on <answer>_kaggle"),
                 ("<answer>_kaggle_upper", "upper bound of the calibrated --interval on <answer>_kaggle")]
    return rows


def pick_columns(columns: str, *, suffix: str, catalogue: bool, interval: float | None = None) -> str:
    """``auto`` -> Kaggle's exact submission for a CSV of images (what it always was), the named table otherwise:
    a Parquet or FITS file is for reading, a catalogue's own columns and intervals do not fit Kaggle's header."""
    if columns not in COLUMN_CHOICES:
        raise BadArgument(f"--columns must be one of {', '.join(COLUMN_CHOICES)}, got {columns!r}")
    if columns == "kaggle" and interval is not None:
        raise BadArgument("--interval writes each answer's bounds as columns of the named table; use --columns named "
                          "(or auto), not kaggle")
    if columns != "auto":
        return columns
    return "kaggle" if suffix == ".csv" and not catalogue and interval is None else "named"


def most_likely_paths(values: np.ndarray) -> list[str]:
    """The majority walk of each galaxy (``tree.most_likely_path``), as text: the walk from Q1, then from Q6.

    A walk depends only on which answer leads each question, so galaxies are grouped by that (a handful of distinct
    walks among millions of galaxies) and each distinct walk is spelt once: a row at a time would cost more than
    the model."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return []
    shares = tree.answer_shares(values)
    leaders = np.stack([np.argmax(shares[:, q.slice], axis=1) for q in tree.QUESTIONS], axis=1)
    for qi in tree.TOPOLOGICAL_ORDER:  # a question off the walk does not change it: forget its leader
        parent = tree.PARENT_INDEX[qi]
        if parent >= 0:
            owner = tree.question_of(tree.COLUMNS[parent])
            off = leaders[:, owner.number - 1] != parent - owner.start
            leaders[off, qi] = -1
    _, first, inverse = np.unique(leaders, axis=0, return_index=True, return_inverse=True)
    spelt = []
    for row in first:
        steps = tree.most_likely_path(values[row])
        names = [s.answer.name for s in steps]
        odd = next(i for i, s in enumerate(steps) if s.question.number == 6)
        spelt.append(PATH_SEPARATOR.join(names[:odd]) + ROOT_SEPARATOR + PATH_SEPARATOR.join(names[odd:]))
    return [spelt[k] for k in inverse.reshape(-1)]


def named_columns(values: np.ndarray, *, spread: np.ndarray | None = None, lower: np.ndarray | None = None,
                  upper: np.ndarray | None = None) -> dict[str, object]:
    """(N, 37) Kaggle values -> the named table's columns (name -> N values), in ``column_table``'s order."""
    values = np.asarray(values, dtype=np.float64)
    shares = tree.answer_shares(values)
    reached = tree.expected_sums(values)  # what each question's answers sum to: the share of volunteers asked it
    cols: dict[str, object] = {"tree_path": most_likely_paths(values)}
    for qi, q in enumerate(tree.QUESTIONS):
        best = np.argmax(shares[:, q.slice], axis=1)  # ties go to the first answer, as in most_likely_path
        cols[f"{q.name}_answer"] = [q.answers[b].name for b in best]
        cols[f"{q.name}_reached"] = reached[:, qi].astype(np.float32)
        for a in q.answers:
            cols[f"{a.name}_fraction"] = shares[:, a.index].astype(np.float32)
            cols[f"{a.name}_kaggle"] = values[:, a.index].astype(np.float32)
            for name, extra in (("spread", spread), ("lower", lower), ("upper", upper)):
                if extra is not None:
                    cols[f"{a.name}_kaggle_{name}"] = np.asarray(extra)[:, a.index].astype(np.float32)
    return cols


def describe(column: str) -> str:
    """What one column of any output table holds (for FITS headers and the API's docs)."""
    if column in tree.COLUMN_INDEX:
        a = tree.ANSWERS[tree.COLUMN_INDEX[column]]
        return f"Kaggle cumulative value of Q{a.question} '{a.text}' ({a.name})"
    for pattern, text in column_table(spread=True, interval=True):
        if not pattern.startswith("<"):  # a fixed name, e.g. "tree_path"
            if column == pattern:
                return text
            continue
        head, _, tail = pattern.partition(">")
        kind = head[1:]
        names = tree.ANSWER_BY_NAME if kind == "answer" else tree.QUESTION_BY_NAME
        for name in names:
            if column == name + tail:
                return text
    return ""


def answer_frame(values: np.ndarray, ids: Sequence[str], **kw):
    """:func:`answer_columns` as a pandas DataFrame (what the notebook API returns)."""
    import pandas as pd

    return pd.DataFrame(answer_columns(values, ids, **kw))


def answer_columns(values: np.ndarray, ids: Sequence[str], *, columns: str = "named", id_column: str = ID_COLUMN,
                   extra=None, output_names: Sequence[str] | None = None, task=None,
                   spread: np.ndarray | None = None, lower: np.ndarray | None = None,
                   upper: np.ndarray | None = None) -> dict[str, object]:
    """The columns of an answer table (name -> one value per galaxy): ``id_column``, then ``extra`` (a catalogue's
    other columns, or the files', as a DataFrame or a dict of columns, one row per galaxy), then the answers as ``columns`` says (``kaggle``: Kaggle's
    ClassN.M columns; ``named``: see the module). Plain arrays and lists, so writing a CSV needs no pandas.

    A fine-tuned run (``task``, a ``gzmorph.tasks.Task``) writes its own outputs by name, plus each class column's
    predicted class; ``spread`` then follows each output as ``<output>_spread``."""
    data: dict[str, object] = {id_column: list(ids)}
    # The column as it was read (nullable integers stay integers); a dict of columns is taken as it is.
    extra = extra if extra is None or isinstance(extra, dict) else {n: extra[n].array for n in extra.columns}
    for name, column in (extra or {}).items():
        if name in data:
            raise BadArgument(f"the catalogue's column {name!r} would clash with gzmorph's own column of that name")
        data[name] = column
    if task is not None:
        names = list(output_names)
        for k, name in enumerate(names):
            data[name] = np.asarray(values[:, k], np.float32)
            if spread is not None:
                data[f"{name}_spread"] = np.asarray(spread[:, k], np.float32)
        for name, labels in task.predicted_classes(values).items():
            data[f"{name}_class"] = labels
    elif columns == "kaggle":
        for k, name in enumerate(tree.COLUMNS):
            data[name] = np.asarray(values[:, k], np.float32)
    else:
        clash = [c for c in (extra or {}) if c in named_column_names()]
        if clash:
            raise BadArgument(f"the catalogue's column {clash[0]!r} would clash with gzmorph's own column of that name; "
                              f"rename it")
        data.update(named_columns(values, spread=spread, lower=lower, upper=upper))
    return data


@functools.cache
def named_column_names() -> frozenset[str]:
    """Every column the named table can have (to refuse a catalogue column that would clash with one)."""
    return frozenset(named_columns(np.full((1, tree.N_OUTPUTS), 0.5), spread=np.zeros((1, tree.N_OUTPUTS)),
                                   lower=np.zeros((1, tree.N_OUTPUTS)), upper=np.zeros((1, tree.N_OUTPUTS))))
