"""The decision tree: Kaggle's 37-column layout, parents, tree-consistent normalisation and the consistency check.

Also a guard that tree.py stays the only module that knows the layout (no scattered column names or slices).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from gzmorph import tree

SRC = Path(__file__).resolve().parents[1] / "src" / "gzmorph"

KAGGLE_COLUMNS = [
    "Class1.1", "Class1.2", "Class1.3",
    "Class2.1", "Class2.2",
    "Class3.1", "Class3.2",
    "Class4.1", "Class4.2",
    "Class5.1", "Class5.2", "Class5.3", "Class5.4",
    "Class6.1", "Class6.2",
    "Class7.1", "Class7.2", "Class7.3",
    "Class8.1", "Class8.2", "Class8.3", "Class8.4", "Class8.5", "Class8.6", "Class8.7",
    "Class9.1", "Class9.2", "Class9.3",
    "Class10.1", "Class10.2", "Class10.3",
    "Class11.1", "Class11.2", "Class11.3", "Class11.4", "Class11.5", "Class11.6",
]
ANSWER_COUNTS = [3, 2, 2, 2, 4, 2, 3, 7, 3, 3, 6]
PARENTS = {1: None, 2: "Class1.2", 3: "Class2.2", 4: "Class2.2", 5: "Class2.2", 6: None, 7: "Class1.1",
           8: "Class6.1", 9: "Class2.1", 10: "Class4.1", 11: "Class4.1"}


# ------------------------------------------------------------------------------------------------------------------
# Layout
# ------------------------------------------------------------------------------------------------------------------

def test_columns_are_kaggles_37_in_order():
    assert tree.N_OUTPUTS == 37
    assert list(tree.COLUMNS) == KAGGLE_COLUMNS
    assert tree.COLUMN_INDEX == {c: i for i, c in enumerate(KAGGLE_COLUMNS)}
    assert [a.column for a in tree.ANSWERS] == KAGGLE_COLUMNS
    assert [a.index for a in tree.ANSWERS] == list(range(37))


def test_eleven_questions_with_their_answer_counts():
    assert len(tree.QUESTIONS) == 11
    assert [q.number for q in tree.QUESTIONS] == list(range(1, 12))
    assert [len(q.answers) for q in tree.QUESTIONS] == ANSWER_COUNTS
    # Slices tile 0..37 with no gap or overlap, in column order.
    stop = 0
    for q in tree.QUESTIONS:
        assert q.start == stop and q.stop == q.start + len(q.answers)
        assert list(tree.COLUMNS[q.slice]) == q.columns
        assert all(c.startswith(f"Class{q.number}.") for c in q.columns)
        stop = q.stop
    assert stop == 37


def test_parents():
    assert {q.number: q.parent for q in tree.QUESTIONS} == PARENTS
    for q, p in zip(tree.QUESTIONS, tree.PARENT_INDEX):
        assert p == (-1 if q.parent is None else KAGGLE_COLUMNS.index(q.parent))


def test_topological_order_puts_parents_first():
    order = list(tree.TOPOLOGICAL_ORDER)
    assert sorted(order) == list(range(11))
    for qi in order:
        parent = tree.QUESTIONS[qi].parent
        if parent is not None:
            owner = tree.question_of(parent).number - 1
            assert order.index(owner) < order.index(qi)


def test_lookup_helpers():
    assert tree.question(8).columns == [f"Class8.{k}" for k in range(1, 8)]
    assert tree.question_of("Class5.3").number == 5
    assert tree.columns_of([1, 6]) == ["Class1.1", "Class1.2", "Class1.3", "Class6.1", "Class6.2"]
    assert tree.columns_of([]) == []


# ------------------------------------------------------------------------------------------------------------------
# normalise
# ------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["softmax", "relu"])
def test_normalise_satisfies_every_tree_sum(mode):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(200, 37, generator=g, dtype=torch.float64) * 3
    if mode == "relu":  # give every question one positive score (all-negative questions give 0: tested below)
        for q in tree.QUESTIONS:
            scores[:, q.start] = scores[:, q.slice].abs().amax(1) + 0.01
    out = tree.normalise(scores, mode)
    assert out.shape == (200, 37) and out.dtype == torch.float64
    v = out.numpy()
    assert (v >= 0).all() and (v <= 1 + 1e-12).all()
    # (softmax runs in float32 even for float64 input, so allow float32 rounding)
    np.testing.assert_allclose(tree.question_sums(v), tree.expected_sums(v), rtol=0, atol=1e-6)
    assert not tree.tree_violations(v, tolerance=1e-5).any()
    # The two roots (Q1 and Q6) sum to 1 whatever happens below them.
    np.testing.assert_allclose(v[:, 0:3].sum(1), 1, rtol=0, atol=1e-6)
    np.testing.assert_allclose(v[:, 13:15].sum(1), 1, rtol=0, atol=1e-6)


def test_normalise_float32_and_batch_dimensions():
    scores = torch.randn(2, 5, 37)
    out = tree.normalise(scores)
    assert out.shape == (2, 5, 37) and out.dtype == torch.float32
    flat = out.reshape(-1, 37).numpy()
    assert not tree.tree_violations(flat, tolerance=1e-5).any()
    # Same numbers as the flat batch: normalise works on the last dimension only.
    torch.testing.assert_close(out.reshape(10, 37), tree.normalise(scores.reshape(10, 37)))


def test_normalise_relu_question_with_no_positive_score_gets_equal_shares():
    """Dieleman's ReLU-and-divide has nothing to divide when every score of a question is <= 0; the question then
    gets equal shares (a valid distribution), so the tree's sums still hold instead of the question summing to 0."""
    scores = torch.randn(4, 37)
    scores[:, 0:3] = -1.0  # Q1 all negative
    scores[:, 3:5] = 0.0  # Q2 all exactly zero
    out = tree.normalise(scores, "relu")
    assert torch.isfinite(out).all()
    assert torch.allclose(out[:, 0:3], torch.full((4, 3), 1 / 3))
    assert torch.allclose(out[:, 3:5], out[:, 1:2].expand(4, 2) / 2)  # equal shares of its parent's value
    assert not tree.tree_violations(out.numpy(), tolerance=1e-6).any()


@pytest.mark.parametrize("mode", ["softmax", "relu"])
def test_normalise_gradients_flow_to_every_score(mode):
    g = torch.Generator().manual_seed(1)
    scores = (torch.rand(16, 37, generator=g) + 0.1).requires_grad_()  # positive: relu passes gradients everywhere
    weights = torch.randn(16, 37, generator=g)
    (tree.normalise(scores, mode) * weights).sum().backward()
    assert scores.grad is not None
    assert torch.isfinite(scores.grad).all()
    assert (scores.grad.abs().sum(0) > 0).all(), "some score gets no gradient"


def test_normalise_rejects_bad_shapes_and_modes():
    for n in (36, 38, 1):
        with pytest.raises(ValueError, match="37"):
            tree.normalise(torch.zeros(3, n))
    with pytest.raises(ValueError, match="softmax"):
        tree.normalise(torch.zeros(3, 37), mode="sigmoid")


# ------------------------------------------------------------------------------------------------------------------
# tree_violations
# ------------------------------------------------------------------------------------------------------------------

def _consistent(n=8, seed=3) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return tree.normalise(torch.randn(n, 37, generator=g, dtype=torch.float64)).numpy()


def test_tree_violations_flags_only_the_corrupted_row():
    v = _consistent()
    assert tree.tree_violations(v).shape == (8, 11)
    assert not tree.tree_violations(v).any()
    v[3, 0] += 0.2  # Class1.1: Q1 no longer sums to 1, and Q7 (hangs from Class1.1) no longer sums to its parent
    bad = tree.tree_violations(v)
    assert bad[3, 0] and bad[3, 6]
    assert bad.sum() == 2
    assert not np.delete(bad, 3, axis=0).any()


def test_tree_violations_flags_a_misplaced_column():
    v = _consistent()
    v = np.roll(v, 1, axis=1)  # every column one place off, as if the file lost one
    assert tree.tree_violations(v).any(axis=1).all()


def test_tree_violations_tolerance():
    v = _consistent()
    v[2, 13] += 0.5 * tree.DEFAULT_SUM_TOLERANCE  # Class6.1: small rounding-sized error passes
    assert not tree.tree_violations(v).any()
    v[2, 13] += 2 * tree.DEFAULT_SUM_TOLERANCE
    assert tree.tree_violations(v)[2, 5]
    assert not tree.tree_violations(v, tolerance=1.0).any()


def test_tree_violations_respects_mask():
    v = _consistent()
    v[3, 0] += 0.2
    mask = np.ones_like(v, dtype=bool)
    mask[3, 0] = False  # Class1.1 unknown: neither Q1 (incomplete) nor Q7 (unknown parent) can be checked
    assert not tree.tree_violations(v, mask).any()
    # Masking an unrelated column does not hide the error.
    mask = np.ones_like(v, dtype=bool)
    mask[3, 36] = False
    assert tree.tree_violations(v, mask)[3].any()
    # A partial catalogue (only Q1, Q6 columns known) is checked on those questions only.
    w = _consistent()
    mask = np.zeros_like(w, dtype=bool)
    mask[:, 0:3] = mask[:, 13:15] = True
    w[:, 20] = 0.9  # garbage in an unknown column
    assert not tree.tree_violations(w, mask).any()
    w[5, 14] += 0.3
    bad = tree.tree_violations(w, mask)
    assert bad[5, 5] and bad.sum() == 1


# ------------------------------------------------------------------------------------------------------------------
# Guard: tree.py is the only module that knows the layout
# ------------------------------------------------------------------------------------------------------------------

_COLUMN_RE = re.compile(r"Class\d+\.\d+")
_BOUNDARIES = {(q.start, q.stop) for q in tree.QUESTIONS} | {(0, 37)}


def _layout_literals(path: Path) -> list[str]:
    """Places in a source file that hard-code the column layout, described for the failure message."""
    found = []
    module = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(module):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            # A string that is a column name (used as a key), or a header listing several columns. One example
            # column inside a sentence (an error message saying "GalaxyID,Class1.1,...") is documentation.
            if _COLUMN_RE.fullmatch(node.value.strip()) or len(_COLUMN_RE.findall(node.value)) > 1:
                found.append(f"{where}: column name literal {node.value!r}")
        elif isinstance(node, (ast.List, ast.Tuple)):
            ints = [e.value for e in node.elts if isinstance(e, ast.Constant) and type(e.value) is int]
            if len(node.elts) == 37:
                found.append(f"{where}: a 37-element literal")
            elif len(ints) == 11 and ints == [3, 2, 2, 2, 4, 2, 3, 7, 3, 3, 6]:
                found.append(f"{where}: the answer counts as a literal")
        elif isinstance(node, ast.Slice):
            lo, hi = node.lower, node.upper
            if isinstance(lo, ast.Constant) and isinstance(hi, ast.Constant) and (lo.value, hi.value) in _BOUNDARIES \
                    and (lo.value, hi.value) != (0, 37) and hi.value - lo.value >= 2:
                found.append(f"{where}: slice {lo.value}:{hi.value} looks like a question's columns")
    return found


def test_guard_detects_what_it_is_meant_to(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = y[:, 3:5]\nz = d['Class1.1']\nh = 'GalaxyID,Class1.1,Class1.2'\nc = [3, 2, 2, 2, 4, 2, 3, 7, 3, 3, 6]\n")
    assert len(_layout_literals(bad)) == 4
    fine = tmp_path / "fine.py"
    fine.write_text("msg = f\"{p}: expected a header 'GalaxyID,Class1.1,...'\"\ny = x[:, q.slice]\nz = c[11][:5]\n")
    assert _layout_literals(fine) == []


def test_only_tree_py_hard_codes_the_layout():
    files = [p for p in sorted(SRC.rglob("*.py")) if p.name != "tree.py" or p.parent != SRC]
    assert len(files) > 5
    found = [hit for p in files for hit in _layout_literals(p)]
    assert not found, "column layout hard-coded outside tree.py (ask tree for columns/slices):\n" + "\n".join(found)


# ---------------------------------------------------------------------------------------------------------------
# Reading one galaxy's answers: shares and the most likely path
# ---------------------------------------------------------------------------------------------------------------

def _values(**answers: float) -> np.ndarray:
    """37 Kaggle values from {"Class1_2": 0.7, ...}; unspecified answers are 0."""
    v = np.zeros(tree.N_OUTPUTS)
    for key, value in answers.items():
        v[tree.COLUMN_INDEX[key.replace("_", ".")]] = value
    return v


def test_answer_shares_sum_to_one_per_question_and_unreached_questions_are_uniform():
    v = _values(Class1_1=0.2, Class1_2=0.6, Class1_3=0.2, Class2_1=0.15, Class2_2=0.45, Class6_1=0.1, Class6_2=0.9)
    shares = tree.answer_shares(v)
    for q in tree.QUESTIONS:
        assert shares[q.slice].sum() == pytest.approx(1.0)
    assert shares[tree.COLUMN_INDEX["Class2.2"]] == pytest.approx(0.75)  # 0.45 of the 0.6 that reached Q2
    assert shares[tree.question(10).slice] == pytest.approx([1 / 3] * 3)  # nobody reached Q10


def test_path_of_a_smooth_galaxy():
    v = _values(Class1_1=0.8, Class1_2=0.15, Class1_3=0.05, Class7_1=0.1, Class7_2=0.6, Class7_3=0.1,
                Class6_1=0.1, Class6_2=0.9)
    steps = tree.most_likely_path(v)
    assert [(s.question.number, s.answer.column) for s in steps] == [(1, "Class1.1"), (7, "Class7.2"),
                                                                     (6, "Class6.2")]
    assert steps[1].share == pytest.approx(0.75) and steps[1].value == pytest.approx(0.6)


def test_path_of_an_odd_barred_spiral_follows_galaxy_zoo_order():
    v = _values(Class1_2=1.0, Class2_2=1.0, Class3_1=0.7, Class3_2=0.3, Class4_1=0.9, Class4_2=0.1,
                Class10_3=0.9, Class11_2=0.9, Class5_3=1.0, Class6_1=0.8, Class6_2=0.2, Class8_6=0.8)
    steps = tree.most_likely_path(v)
    assert [s.question.number for s in steps] == [1, 2, 3, 4, 10, 11, 5, 6, 8]
    assert [s.answer.text for s in steps][-1] == "Merger"
    d = steps[0].as_dict()
    assert d["question"] == 1 and d["answer"] == "Class1.2" and d["answer_text"] == "Features or disk"


def test_path_of_an_edge_on_disk_asks_the_bulge_shape():
    v = _values(Class1_2=1.0, Class2_1=0.9, Class2_2=0.1, Class9_2=0.9, Class6_2=1.0)
    assert [s.question.number for s in tree.most_likely_path(v)] == [1, 2, 9, 6]


def test_path_needs_37_values():
    with pytest.raises(ValueError, match="37"):
        tree.most_likely_path(np.zeros(36))
