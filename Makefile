# Quick start: `make train` runs the main job, `make test` runs the test suite.
# Both create .venv from pyproject.toml on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install train test bench

$(VENV)/.installed: pyproject.toml examples/plugins/towerkit-hashing/pyproject.toml examples/plugins/towerkit-faiss/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test,plot,baselines]"
	# The example plugins, installed for real (entry points), as their authors would ship them.
	$(BIN)/python -m pip install -q --disable-pip-version-check \
		-e examples/plugins/towerkit-hashing -e examples/plugins/towerkit-faiss
	touch $@

install: $(VENV)/.installed

train: install
	$(BIN)/towerkit train

# Two pytest workers, a test file each at a time (a file's fixtures are built once): most of the
# suite's time is single-threaded (tracing, subprocess start-up), so two cores run two files.
test: install
	TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: install
	$(BIN)/python benchmarks/train_bench.py
