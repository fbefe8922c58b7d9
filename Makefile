# Quick start: `make demo` (creates .venv, installs, runs train -> evaluate -> predict -> plot) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench clean

install: $(STAMP)

# torch==2.13.0 first: it is the CPU wheel these machines carry; the package itself asks only for a range, which
# that install then satisfies (an unpinned torch would pull gigabytes of CUDA packages).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test,fast,onnx,fits,search,parquet]'
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/reproduce_report.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info .pytest_cache
