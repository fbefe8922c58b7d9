"""The example notebook runs from top to bottom on the shared galaxies (a few of them), as a new user would run it."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "tour.ipynb"


@pytest.mark.slow
def test_the_tour_notebook_runs(real_data, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("GZMORPH_DATA_DIR", str(real_data))
    monkeypatch.setenv("GZMORPH_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("GZMORPH_NOTEBOOK_WORK", str(tmp_path / "work"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in notebook.cells if c.cell_type == "code"), "commit it without outputs"
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                     for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "RMSE over all 37 answers" in text and "barred_class" in text
    assert sum("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", [])) >= 2
