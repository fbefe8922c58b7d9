"""The Galaxy Zoo 2 decision tree as the Kaggle challenge encoded it.

This module is the ONLY place that knows the 37-column layout. Everything else asks it for column names,
question slices, parents, the consistency check and the tree-normalising maths.

Kaggle's encoding (see the competition's "decision tree" page and benanne/kaggle-galaxies):
each answer's vote fraction is multiplied by the value of the answer that led to its question, so a
question's answers sum to its parent answer's value. Two quirks worth remembering:

* Q1 (smooth / features / star) is the root: its answers sum to 1.
* Q6 ("anything odd?") is asked of every galaxy in GZ2, but in the Kaggle file it is weighted by 1, not
  by the answers that reach it, so it also sums to 1 and hangs from nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

N_OUTPUTS = 37

# Kaggle's file is rounded to 6 decimals; its worst tree-sum error is ~2e-6. We allow 0.01 so that hand-made or
# re-exported catalogues (fewer decimals) pass, while a row that is really inconsistent (a misplaced column,
# unweighted fractions) is caught: those errors are of order 0.1 or more.
DEFAULT_SUM_TOLERANCE = 0.01


@dataclass(frozen=True)
class Answer:
    question: int  # 1..11
    number: int  # 1-based within its question
    name: str  # a Python-style name for code (``smooth``, ``bar_yes``, ...); the CSVs use ``column``
    text: str  # what the volunteers read
    index: int  # position among the 37 outputs

    @property
    def column(self) -> str:
        return f"Class{self.question}.{self.number}"


@dataclass(frozen=True)
class Question:
    number: int  # 1..11
    name: str  # short name for code and figure labels (``shape``, ``bar``, ...)
    text: str
    answers: tuple[Answer, ...]
    parent: str | None  # column of the answer that leads here; None for the questions weighted by 1

    @property
    def start(self) -> int:
        return self.answers[0].index

    @property
    def stop(self) -> int:
        return self.answers[-1].index + 1

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def columns(self) -> list[str]:
        return [a.column for a in self.answers]


# (question name, question text, [(answer name, answer text)], parent answer). Order = Kaggle column order.
_SPEC: list[tuple[str, str, list[tuple[str, str]], str | None]] = [
    ("shape", "Is the galaxy simply smooth and rounded, with no sign of a disk?",
     [("smooth", "Smooth"), ("features_or_disk", "Features or disk"), ("star_or_artifact", "Star or artifact")],
     None),
    ("edge_on", "Could this be a disk viewed edge-on?", [("edge_on_yes", "Yes"), ("edge_on_no", "No")],
     "features_or_disk"),
    ("bar", "Is there a sign of a bar feature through the centre of the galaxy?",
     [("bar_yes", "Bar"), ("bar_no", "No bar")], "edge_on_no"),
    ("spiral", "Is there any sign of a spiral arm pattern?", [("spiral_yes", "Spiral"), ("spiral_no", "No spiral")],
     "edge_on_no"),
    ("bulge", "How prominent is the central bulge, compared with the rest of the galaxy?",
     [("bulge_none", "No bulge"), ("bulge_noticeable", "Just noticeable"), ("bulge_obvious", "Obvious"),
      ("bulge_dominant", "Dominant")], "edge_on_no"),
    # Q6 is weighted by 1 in the Kaggle file (every galaxy is asked it), so no parent here.
    ("odd", "Is there anything odd?", [("odd_yes", "Yes"), ("odd_no", "No")], None),
    ("roundness", "How rounded is it?",
     [("round_completely", "Completely round"), ("round_in_between", "In between"), ("round_cigar", "Cigar-shaped")],
     "smooth"),
    ("odd_feature", "Is the odd feature a ring, or is the galaxy disturbed or irregular?",
     [("odd_ring", "Ring"), ("odd_lens_or_arc", "Lens or arc"), ("odd_disturbed", "Disturbed"),
      ("odd_irregular", "Irregular"), ("odd_other", "Other"), ("odd_merger", "Merger"), ("odd_dust_lane", "Dust lane")],
     "odd_yes"),
    ("bulge_shape", "Does the galaxy have a bulge at its centre? If so, what shape?",
     [("bulge_shape_rounded", "Rounded"), ("bulge_shape_boxy", "Boxy"), ("bulge_shape_none", "No bulge")],
     "edge_on_yes"),
    ("arm_winding", "How tightly wound do the spiral arms appear?",
     [("arms_tight", "Tight"), ("arms_medium", "Medium"), ("arms_loose", "Loose")], "spiral_yes"),
    ("arm_count", "How many spiral arms are there?",
     [("arms_1", "1"), ("arms_2", "2"), ("arms_3", "3"), ("arms_4", "4"), ("arms_more_than_4", "More than four"),
      ("arms_cant_tell", "Can't tell")], "spiral_yes"),
]


def _build() -> tuple[tuple[Question, ...], tuple[Answer, ...]]:
    questions, answers = [], []
    column_of = {}
    for qi, (qname, text, spec, _) in enumerate(_SPEC, start=1):
        for ai, (aname, _) in enumerate(spec, start=1):
            column_of[aname] = f"Class{qi}.{ai}"
    for qi, (qname, text, spec, parent) in enumerate(_SPEC, start=1):
        qa = tuple(Answer(qi, ai, aname, atext, len(answers) + ai - 1)
                   for ai, (aname, atext) in enumerate(spec, start=1))
        answers.extend(qa)
        questions.append(Question(qi, qname, text, qa, None if parent is None else column_of[parent]))
    return tuple(questions), tuple(answers)


QUESTIONS, ANSWERS = _build()
COLUMNS: tuple[str, ...] = tuple(a.column for a in ANSWERS)
COLUMN_INDEX: dict[str, int] = {c: i for i, c in enumerate(COLUMNS)}
ANSWER_BY_NAME: dict[str, Answer] = {a.name: a for a in ANSWERS}
QUESTION_BY_NAME: dict[str, Question] = {q.name: q for q in QUESTIONS}
assert len(COLUMNS) == N_OUTPUTS and len(ANSWER_BY_NAME) == N_OUTPUTS and len(QUESTION_BY_NAME) == len(QUESTIONS)

# For each question, the index of its parent answer (-1: weighted by 1).
PARENT_INDEX: tuple[int, ...] = tuple(-1 if q.parent is None else COLUMN_INDEX[q.parent] for q in QUESTIONS)

# An order in which every question comes after the question owning its parent answer.
_QUESTION_OF_COLUMN = {a.column: a.question for a in ANSWERS}


def _topological_order() -> tuple[int, ...]:
    done: list[int] = []
    pending = list(range(len(QUESTIONS)))
    while pending:
        for qi in list(pending):
            parent = QUESTIONS[qi].parent
            if parent is None or _QUESTION_OF_COLUMN[parent] - 1 in done:
                done.append(qi)
                pending.remove(qi)
    return tuple(done)


TOPOLOGICAL_ORDER = _topological_order()


def answer(name: str) -> Answer:
    """The answer called ``name`` (``"bar_yes"``), or a clear error listing the names."""
    try:
        return ANSWER_BY_NAME[name]
    except KeyError:
        raise KeyError(f"no answer named {name!r}; the names are {', '.join(ANSWER_BY_NAME)}") from None


def question(number: int) -> Question:
    return QUESTIONS[number - 1]


def question_of(column: str) -> Question:
    return QUESTIONS[_QUESTION_OF_COLUMN[column] - 1]


# --------------------------------------------------------------------------------------------------------------
# Tree-consistent outputs
# --------------------------------------------------------------------------------------------------------------

def normalise(scores: torch.Tensor, mode: str = "softmax", eps: float = 1e-12) -> torch.Tensor:
    """Turn 37 raw scores per galaxy into outputs that satisfy every tree sum.

    Per question, the answers become a distribution (softmax of the scores, or Dieleman's ReLU-then-divide), which
    is then multiplied by the parent answer's (already weighted) value. Shape (..., 37) in and out.
    """
    if scores.shape[-1] != N_OUTPUTS:
        raise ValueError(f"expected {N_OUTPUTS} scores in the last dimension, got {scores.shape[-1]}")
    parts: list[torch.Tensor | None] = [None] * len(QUESTIONS)
    for qi in TOPOLOGICAL_ORDER:
        q = QUESTIONS[qi]
        s = scores[..., q.slice]
        if mode == "softmax":
            p = torch.softmax(s.float(), dim=-1).to(scores.dtype)
        elif mode == "relu":
            # Dieleman's ReLU-and-divide. When every score of a question is <= 0 nothing is left to divide, and
            # r / (0 + eps) would be all zeros, a question whose answers sum to 0 instead of their parent's value:
            # such a question gets equal shares (the distribution of no information) instead.
            r = torch.relu(s)
            total = r.sum(dim=-1, keepdim=True)
            p = torch.where(total > 0, r / (total + eps), torch.full_like(r, 1.0 / r.shape[-1]))
        else:
            raise ValueError(f"unknown normalisation mode {mode!r}; use 'softmax' or 'relu'")
        parent = PARENT_INDEX[qi]
        if parent >= 0:
            pq = _QUESTION_OF_COLUMN[COLUMNS[parent]] - 1
            owner = QUESTIONS[pq]
            p = p * parts[pq][..., parent - owner.start: parent - owner.start + 1]
        parts[qi] = p
    return torch.cat(parts, dim=-1)  # questions are stored in column order, so this is the Kaggle layout


def question_sums(values: np.ndarray) -> np.ndarray:
    """(N, 37) -> (N, 11): the sum of each question's answers."""
    return np.stack([values[:, q.slice].sum(axis=1) for q in QUESTIONS], axis=1)


def expected_sums(values: np.ndarray) -> np.ndarray:
    """(N, 37) -> (N, 11): what each question's answers should sum to (1, or the parent answer's value)."""
    cols = [np.ones(len(values)) if p < 0 else values[:, p] for p in PARENT_INDEX]
    return np.stack(cols, axis=1)


def tree_violations(values: np.ndarray, mask: np.ndarray | None = None,
                    tolerance: float = DEFAULT_SUM_TOLERANCE) -> np.ndarray:
    """(N, 11) boolean: True where a question's answers do not sum to their parent's value within ``tolerance``.

    Questions with any unknown (masked) answer, or whose parent is unknown, are not checked.
    """
    values = np.asarray(values, dtype=np.float64)
    bad = np.abs(question_sums(values) - expected_sums(values)) > tolerance
    if mask is not None:
        known = np.stack([mask[:, q.slice].all(axis=1) for q in QUESTIONS], axis=1)
        parent_known = np.stack([np.ones(len(values), bool) if p < 0 else mask[:, p] for p in PARENT_INDEX], axis=1)
        bad &= known & parent_known
    return bad


def columns_of(questions: Sequence[int]) -> list[str]:
    return [c for n in questions for c in question(n).columns]


# --------------------------------------------------------------------------------------------------------------
# Reading one galaxy's 37 numbers as answers to the questions a volunteer was asked
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One question on a galaxy's walk through the tree: the answer most volunteers gave, and how strongly."""

    question: Question
    answer: Answer
    share: float  # fraction of this question's votes that went to ``answer`` (its value / the question's sum)
    value: float  # the Kaggle (cumulative) value of ``answer``: share x the value of the answer that led here

    def as_dict(self) -> dict:
        return {"question": self.question.number, "question_text": self.question.text,
                "answer": self.answer.column, "answer_text": self.answer.text,
                "share": self.share, "value": self.value}


def answer_shares(values: np.ndarray) -> np.ndarray:
    """(..., 37) Kaggle values -> (..., 37) where each question's answers sum to 1: the share of that question's
    votes each answer got. A question nobody reached (all zeros) gets equal shares."""
    values = np.asarray(values, dtype=np.float64)
    out = np.empty_like(values)
    for q in QUESTIONS:
        v = np.clip(values[..., q.slice], 0.0, None)
        total = v.sum(axis=-1, keepdims=True)
        out[..., q.slice] = np.where(total > 0, v / np.where(total > 0, total, 1.0), 1.0 / len(q.answers))
    return out


def _children(answer: Answer) -> list[Question]:
    return [q for q in QUESTIONS if q.parent == answer.column]


def most_likely_path(values: np.ndarray) -> list[Step]:
    """The questions a volunteer following the majority answer at each step is asked, in Galaxy Zoo 2's order.

    Depth first from Q1 (so a disk galaxy goes Q2 -> Q3 -> Q4 -> [Q10 -> Q11 if spiral] -> Q5), then Q6 ("anything
    odd?", asked of every galaxy), and Q8 if the majority said yes. Ties go to the first answer.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.shape != (N_OUTPUTS,):
        raise ValueError(f"expected {N_OUTPUTS} values for one galaxy, got shape {values.shape}")
    shares = answer_shares(values)
    steps: list[Step] = []

    def visit(q: Question) -> None:
        best = max(q.answers, key=lambda a: (shares[a.index], -a.index))
        steps.append(Step(q, best, float(shares[best.index]), float(values[best.index])))
        for child in _children(best):
            visit(child)

    for root in (q for q in QUESTIONS if q.parent is None):  # Q1, then Q6
        visit(root)
    return steps
