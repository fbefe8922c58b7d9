"""The package face and the house plan: what `import gzmorph` costs, which layer may import which, the error
kinds callers can tell apart, and the decision tree's answer names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gzmorph
from gzmorph import tree
from gzmorph.errors import BadArgument, BadData, BadRun, GzmorphError

PACKAGE = Path(gzmorph.__file__).resolve().parent


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_import_gzmorph_and_the_help_load_no_torch():
    """`import gzmorph` and `gzmorph --help` answer at once: torch (~1 s to import) is loaded on first use."""
    assert _python("import sys, gzmorph; print('torch' in sys.modules)") == "False"
    assert _python("import sys, contextlib, io\n"
                   "from gzmorph.cli import main\n"
                   "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
                   "    main(['train', '--help'])\n"
                   "print('torch' in sys.modules)") == "False"


def test_the_api_is_the_documented_functions():
    assert callable(gzmorph.train) and callable(gzmorph.synth) and gzmorph.TrainConfig.__name__ == "TrainConfig"
    with pytest.raises(AttributeError):
        gzmorph.no_such_thing  # noqa: B018


def _imports(path: Path) -> list[tuple[int, str | None, list[str]]]:
    tree_ = ast.parse(path.read_text())
    return [(n.level, n.module, [a.name for a in n.names]) for n in ast.walk(tree_) if isinstance(n, ast.ImportFrom)]


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_the_package_face(path):
    """Lower layers import the modules they need, never `gzmorph/__init__.py` (whose names are the API, loaded
    lazily): importing the face from inside would tie every module to all the others."""
    depth = len(path.relative_to(PACKAGE).parts)  # 1: gzmorph/x.py, 2: gzmorph/data/x.py
    for level, module, names in _imports(path):
        face = (level == depth and module is None) or (level == 0 and module == "gzmorph")
        assert not face or not set(names) & {*gzmorph._API, "__version__"}, (path, names)


def test_the_error_kinds_say_what_went_wrong(tmp_path):
    from gzmorph import runs
    from gzmorph.config import TrainConfig
    from gzmorph.data.catalogue import read_catalogue

    assert issubclass(BadData, GzmorphError) and issubclass(BadRun, GzmorphError)
    assert issubclass(BadArgument, GzmorphError)
    (tmp_path / "bad.csv").write_text("GalaxyID,Class1.1\n1,2.5\n")
    with pytest.raises(BadData, match="outside"):
        read_catalogue(tmp_path / "bad.csv")
    with pytest.raises(BadRun, match="not a gzmorph run folder"):
        runs.read_config(tmp_path)
    with pytest.raises(BadArgument, match="--loss"):
        TrainConfig(data="x", loss="huber").validate()


def test_every_answer_has_a_unique_name_and_its_kaggle_column():
    assert len(tree.ANSWER_BY_NAME) == tree.N_OUTPUTS == len(tree.COLUMNS)
    assert [a.column for a in tree.ANSWERS] == list(tree.COLUMNS)
    assert tree.answer("smooth").column == "Class1.1"
    assert tree.answer("bar_yes").column == "Class3.1"
    assert tree.answer("odd_merger").column == "Class8.6"
    assert tree.answer("arms_cant_tell").column == "Class11.6"
    assert tree.QUESTION_BY_NAME["bulge_shape"].parent == tree.answer("edge_on_yes").column
    with pytest.raises(KeyError, match="no answer named 'bar'"):
        tree.answer("bar")


def _module_graph() -> dict[str, set[str]]:
    """gzmorph's modules and the gzmorph modules each imports, at the top or inside a function alike (a lazy import
    still ties the two modules together; it only hides the circle from the interpreter)."""
    names = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {m: set() for m in names}
    for m, p in names.items():
        package = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                candidates = [target, *(f"{target}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            graph[m] |= {c for c in candidates if c in names and c != m}
    return graph


def test_no_import_circles():
    """Each module imports only modules that do not import it back, directly or through others: a newcomer can
    read the layers bottom-up (tree, config -> data -> models -> training -> inference -> cli)."""
    graph = _module_graph()
    assert "gzmorph.config" in graph["gzmorph.runs"]  # the graph is real
    done: set[str] = set()

    def visit(m: str, trail: list[str]) -> None:
        if m in trail:
            pytest.fail("import circle: " + " -> ".join(trail[trail.index(m):] + [m]))
        if m in done:
            return
        for n in sorted(graph[m]):
            visit(n, trail + [m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])
