"""Reading and validating Kaggle-layout catalogues: every bad input is one GzmorphError naming file, line, column."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gzmorph import tree
from gzmorph.data.catalogue import Catalogue, read_catalogue
from gzmorph.errors import GzmorphError

from helpers import tree_labels, write_catalogue, write_csv

IDS = [100008, 100023, 100053, 100078]


@pytest.fixture
def labels() -> np.ndarray:
    return tree_labels(len(IDS), seed=7)


@pytest.fixture
def good(tmp_path, labels):
    return write_catalogue(tmp_path / "good.csv", IDS, labels)


def write_text(path, text: str, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return path


def full_rows(labels):
    return [[i, *map(float, labels[k])] for k, i in enumerate(IDS)]


def error_of(path, **kw) -> str:
    with pytest.raises(GzmorphError) as e:
        read_catalogue(path, **kw)
    msg = str(e.value)
    assert str(path) in msg, f"message does not name the file: {msg}"
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------------------------------------
# Good files
# ------------------------------------------------------------------------------------------------------------------

def test_reads_a_full_catalogue(good, labels):
    cat = read_catalogue(good, require_all=True)
    assert isinstance(cat, Catalogue) and len(cat) == 4
    assert cat.ids.dtype == np.int64 and list(cat.ids) == IDS
    assert cat.labels.shape == (4, 37) and cat.labels.dtype == np.float32
    assert cat.mask.shape == (4, 37) and cat.mask.dtype == bool and cat.mask.all()
    np.testing.assert_allclose(cat.labels, labels, atol=1e-6)
    assert cat.fully_labelled.all()
    assert cat.source == str(good)


def test_columns_are_placed_by_name_not_position(tmp_path, labels):
    cols = list(reversed(tree.COLUMNS))
    path = write_catalogue(tmp_path / "rev.csv", IDS, labels, cols)
    cat = read_catalogue(path, require_all=True)
    np.testing.assert_allclose(cat.labels, labels, atol=1e-6)


def test_id_column_need_not_be_first_and_whitespace_is_tolerated(tmp_path, labels):
    header = [" Class1.1", "Class1.2 ", " GalaxyID ", "Class1.3"]
    rows = [[f" {labels[k, 0]:.6f}", f"{labels[k, 1]:.6f} ", f" {i} ", f"{labels[k, 2]:.6f}"]
            for k, i in enumerate(IDS)]
    cat = read_catalogue(write_csv(tmp_path / "ws.csv", header, rows))
    assert list(cat.ids) == IDS
    np.testing.assert_allclose(cat.labels[:, 0:3], labels[:, 0:3], atol=1e-6)


def test_bom_is_accepted(tmp_path, labels):
    path = write_csv(tmp_path / "bom.csv", ["GalaxyID", *tree.COLUMNS], full_rows(labels), bom=True)
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    cat = read_catalogue(path, require_all=True)
    assert list(cat.ids) == IDS


def test_crlf_and_blank_lines_are_fine(tmp_path, labels):
    good_text = write_catalogue(tmp_path / "a.csv", IDS, labels).read_text()
    lines = good_text.splitlines()
    text = "\r\n".join(lines[:2] + ["", ",,,"] + lines[2:]) + "\r\n\r\n"
    cat = read_catalogue(write_text(tmp_path / "crlf.csv", text), require_all=True)
    assert list(cat.ids) == IDS


def test_header_only_file_is_an_empty_catalogue(tmp_path):
    path = write_text(tmp_path / "header.csv", ",".join(["GalaxyID", *tree.COLUMNS]) + "\n")
    cat = read_catalogue(path, require_all=True)
    assert len(cat) == 0
    assert cat.ids.shape == (0,) and cat.labels.shape == (0, 37) and cat.mask.shape == (0, 37)


def test_partial_columns_are_masked(tmp_path, labels):
    cols = tree.columns_of([1, 6])
    path = write_catalogue(tmp_path / "partial.csv", IDS, labels, cols)
    cat = read_catalogue(path)
    known = np.zeros(37, bool)
    known[[tree.COLUMN_INDEX[c] for c in cols]] = True
    assert (cat.mask == known).all()
    assert (cat.labels[:, ~known] == 0).all()
    np.testing.assert_allclose(cat.labels[:, known], labels[:, known], atol=1e-6)
    assert not cat.fully_labelled.any()


def test_value_a_hair_outside_the_range_is_clipped(tmp_path):
    header = ["GalaxyID", "Class6.1", "Class6.2"]
    cat = read_catalogue(write_csv(tmp_path / "hair.csv", header, [[1, "1.0000005", "-0.0000005"]]))
    assert cat.labels[0, 13] == 1.0 and cat.labels[0, 14] == 0.0


# ------------------------------------------------------------------------------------------------------------------
# Bad headers
# ------------------------------------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    msg = error_of(tmp_path / "nope.csv")
    assert "not found" in msg


def test_empty_file(tmp_path):
    msg = error_of(write_text(tmp_path / "empty.csv", ""))
    assert "empty" in msg and "GalaxyID" in msg


def test_missing_galaxy_id_column(tmp_path, labels):
    path = write_csv(tmp_path / "noid.csv", ["ID", *tree.COLUMNS], full_rows(labels))
    msg = error_of(path)
    assert "GalaxyID" in msg


@pytest.mark.parametrize("bogus", ["Class12.1", "class1.1", "Class1.4", "Class0.1", ""])
def test_unknown_column(tmp_path, labels, bogus):
    header = ["GalaxyID", *tree.COLUMNS[:-1], bogus]
    path = write_csv(tmp_path / "unknown.csv", header, full_rows(labels))
    msg = error_of(path)
    assert "unknown column" in msg and repr(bogus) in msg
    assert "Class1.1" in msg and "Class11.6" in msg  # says what the valid names are


def test_duplicate_header_column(tmp_path):
    path = write_text(tmp_path / "dup.csv", "GalaxyID,Class6.1,Class6.1\n1,0.5,0.5\n")
    msg = error_of(path)
    assert "Class6.1" in msg and "twice" in msg


def test_no_class_columns(tmp_path):
    msg = error_of(write_text(tmp_path / "idonly.csv", "GalaxyID\n1\n2\n"))
    assert "no Class columns" in msg


def test_missing_columns_with_require_all(tmp_path, labels):
    cols = [c for c in tree.COLUMNS if c not in ("Class5.2", "Class8.7")]
    path = write_catalogue(tmp_path / "missing.csv", IDS, labels, cols)
    msg = error_of(path, require_all=True)
    assert "missing column" in msg and "Class5.2" in msg and "Class8.7" in msg
    # Without require_all the same file is a partial catalogue.
    cat = read_catalogue(path)
    assert not cat.mask[:, tree.COLUMN_INDEX["Class5.2"]].any()


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"GalaxyID,Class6.1,Class6.2\n1,0.5,0.5\n\xff\xfe,0.1,0.9\n")
    msg = error_of(path)
    assert "CSV" in msg


# ------------------------------------------------------------------------------------------------------------------
# Bad cells: file, line and column named
# ------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell, why", [
    ("nan", "not a number"), ("NaN", "not a number"), ("", "not a number"), ("  ", "not a number"),
    ("abc", "not a number"), ("inf", "not a number"), ("0,5", "not a number"), ("-0.1", "outside [0, 1]"),
    ("1.5", "outside [0, 1]"), ("2", "outside [0, 1]"),
])
def test_bad_value_names_file_line_and_column(tmp_path, labels, cell, why):
    rows = [[str(c) for c in r] for r in full_rows(labels)]
    col = tree.COLUMN_INDEX["Class5.3"]
    rows[2][1 + col] = cell  # third data row = line 4
    path = write_csv(tmp_path / "bad.csv", ["GalaxyID", *tree.COLUMNS], rows)
    msg = error_of(path)
    assert "line 4" in msg and why in msg and "column Class5.3" in msg


@pytest.mark.parametrize("gid, why", [("abc", "not an integer"), ("12.5", "not an integer"), ("", "not an integer"),
                                      ("-5", "negative"), ("99999999999999999999999", "GalaxyID")])
def test_bad_galaxy_id(tmp_path, gid, why):
    path = write_text(tmp_path / "id.csv", f"GalaxyID,Class6.1,Class6.2\n1,0.5,0.5\n{gid},0.2,0.8\n")
    msg = error_of(path)
    assert "line 3" in msg and why in msg


def test_duplicate_galaxy_id(tmp_path):
    path = write_text(tmp_path / "dupid.csv", "GalaxyID,Class6.1,Class6.2\n7,0.5,0.5\n8,0.5,0.5\n7,0.2,0.8\n")
    msg = error_of(path)
    assert "7" in msg and "line 4" in msg and "line 2" in msg


@pytest.mark.parametrize("row", ["1,0.5", "1,0.5,0.5,0.1", "1,0.5,0.5,"])
def test_wrong_number_of_fields(tmp_path, row):
    path = write_text(tmp_path / "fields.csv", f"GalaxyID,Class6.1,Class6.2\n2,0.5,0.5\n{row}\n")
    msg = error_of(path)
    assert "line 3" in msg and "fields" in msg


# ------------------------------------------------------------------------------------------------------------------
# Tree sums
# ------------------------------------------------------------------------------------------------------------------

def test_row_breaking_tree_sums(tmp_path, labels):
    bad = labels.copy()
    bad[1, tree.COLUMN_INDEX["Class2.1"]] += 0.1  # Q2 no longer sums to Class1.2 (and Q9 to Class2.1)
    path = write_catalogue(tmp_path / "tree.csv", IDS, np.clip(bad, 0, 1))
    msg = error_of(path)
    assert "line 3" in msg and f"GalaxyID {IDS[1]}" in msg and "Class2" in msg and "Class1.2" in msg
    assert "1 row(s)" in msg
    # The same file passes when the check is off, or with a loose enough tolerance.
    assert len(read_catalogue(path, check_tree=False)) == 4
    assert len(read_catalogue(path, tolerance=0.5)) == 4


def test_unweighted_fractions_are_caught(tmp_path, labels):
    # A classic mistake: per-question fractions that each sum to 1, not weighted down the tree.
    raw = labels.copy()
    for q in tree.QUESTIONS:
        s = raw[:, q.slice].sum(1, keepdims=True)
        raw[:, q.slice] = np.where(s > 0, raw[:, q.slice] / np.maximum(s, 1e-12), 1 / len(q.answers))
    msg = error_of(write_catalogue(tmp_path / "raw.csv", IDS, raw))
    assert "unweighted" in msg and "4 row(s)" in msg


def test_small_rounding_errors_pass(tmp_path, labels):
    off = labels.copy()
    off[:, tree.COLUMN_INDEX["Class1.1"]] += 0.005  # within tree.DEFAULT_SUM_TOLERANCE
    assert 0.005 < tree.DEFAULT_SUM_TOLERANCE
    cat = read_catalogue(write_catalogue(tmp_path / "round.csv", IDS, np.clip(off, 0, 1)))
    assert len(cat) == 4
    # ... but not within a stricter one.
    error_of(tmp_path / "round.csv", tolerance=0.001)


def test_partial_file_checks_only_known_questions(tmp_path, labels):
    cols = tree.columns_of([1, 7])  # Q7 hangs from Class1.1, which is known: checked
    bad = labels.copy()
    bad[0, tree.COLUMN_INDEX["Class7.2"]] += 0.2
    msg = error_of(write_catalogue(tmp_path / "p.csv", IDS, np.clip(bad, 0, 1), cols))
    assert "line 2" in msg and "Class7" in msg
    # Q3 alone (its parent Class2.2 unknown, the question complete): cannot be checked, so any values in range pass.
    path = write_csv(tmp_path / "q3.csv", ["GalaxyID", "Class3.1", "Class3.2"], [[1, 0.9, 0.9]])
    assert len(read_catalogue(path)) == 1


# ------------------------------------------------------------------------------------------------------------------
# Property: random CSV text -> a consistent Catalogue or a GzmorphError, never anything else
# ------------------------------------------------------------------------------------------------------------------

_NAMES = ["GalaxyID"] * 4 + list(tree.COLUMNS) + ["Class12.1", "class1.1", "Class1.4", "", " GalaxyID", "id",
                                                   "Class6.1 ", "Galaxy ID", "Ｃlass1.1", "Class1.1\x00"]
_cells = st.one_of(
    st.floats(0, 1).map(lambda v: f"{v:.6f}"),
    st.integers(0, 1).map(str),
    st.integers(-5, 10**25).map(str),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e400", "-0", "0x1", "1_0", "٣", "½", "0.5 ", "\"", "a,b",
                     "1\n2", "\x00", "ü", "0.25e0", "+0.5", "1.0000001", "-0.0000001", "𝟘"]),
    st.text(max_size=6),
)
_numbers = st.one_of(st.floats(0, 1).map(lambda v: f"{v:.6f}"), st.sampled_from(["0", "1", "0.5", "1.0", " 0.25 "]))
_ids = st.one_of(st.integers(0, 10**6).map(str), st.integers(2**63 - 3, 2**63 + 3).map(str),
                 st.integers(-3, 10**30).map(str), _cells)


@st.composite
def csv_texts(draw) -> str:
    header = draw(st.lists(st.sampled_from(_NAMES), min_size=0, max_size=8))
    well_formed = draw(st.booleans())
    if well_formed:  # often a good header with mostly good rows, so that the body and the tree check get exercised
        header = ["GalaxyID", *draw(st.lists(st.sampled_from(tree.COLUMNS), min_size=1, max_size=6, unique=True))]
    rows = []
    for _ in range(draw(st.integers(0, 5))):
        if well_formed and draw(st.integers(0, 9)):
            gid = draw(_ids if draw(st.integers(0, 9)) == 0 else st.integers(0, 10**6).map(str))
            rows.append([gid, *(draw(_cells if draw(st.integers(0, 19)) == 0 else _numbers) for _ in header[1:])])
            continue
        n = len(header) if draw(st.integers(0, 4)) else draw(st.integers(0, len(header) + 2))
        rows.append(draw(st.lists(_cells, min_size=n, max_size=n)))
    sep = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = sep.join(",".join(r) for r in [header, *rows])
    if draw(st.booleans()):
        text += sep
    if draw(st.integers(0, 9)) == 0:
        text = "\ufeff" + text
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=csv_texts(), check_tree=st.booleans())
def test_random_csv_gives_a_catalogue_or_a_gzmorph_error(tmp_path, text, check_tree):
    path = tmp_path / "random.csv"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        cat = read_catalogue(path, check_tree=check_tree)
    except GzmorphError as e:
        msg = str(e)
        assert msg and str(path) in msg
        return
    n = len(cat)
    assert cat.ids.shape == (n,) and cat.ids.dtype == np.int64 and (cat.ids >= 0).all()
    assert len(np.unique(cat.ids)) == n
    assert cat.labels.shape == (n, 37) and cat.labels.dtype == np.float32
    assert cat.mask.shape == (n, 37) and cat.mask.dtype == bool
    assert np.isfinite(cat.labels).all() and (cat.labels >= 0).all() and (cat.labels <= 1).all()
    assert (cat.labels[~cat.mask] == 0).all()
    # The mask is the header's columns, the same for every row.
    first_line = re.split(r"\r\n|\r|\n", text.lstrip("\ufeff"))[0]
    header = {h.strip() for h in first_line.split(",")}
    expected = np.array([c in header for c in tree.COLUMNS])
    assert (cat.mask == expected).all()
    if check_tree and n:
        assert not tree.tree_violations(cat.labels, cat.mask).any()
    assert not math.isnan(float(cat.labels.sum()))


def test_concat_and_subset(tmp_path, labels):
    a = read_catalogue(write_catalogue(tmp_path / "a.csv", IDS[:2], labels[:2]))
    b = read_catalogue(write_catalogue(tmp_path / "b.csv", IDS[2:], labels[2:], tree.columns_of([1])))
    both = Catalogue.concat([a, b])
    assert list(both.ids) == IDS and both.labels.shape == (4, 37)
    assert list(both.fully_labelled) == [True, True, False, False]
    assert list(both.subset(np.array([3, 0])).ids) == [IDS[3], IDS[0]]
    # The same galaxy in two files is an error naming both.
    c = read_catalogue(write_catalogue(tmp_path / "c.csv", IDS[1:2], labels[1:2]))
    with pytest.raises(GzmorphError, match=rf"a\.csv \+ .*c\.csv: GalaxyID {IDS[1]}"):
        Catalogue.concat([a, c])
