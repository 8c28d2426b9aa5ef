# tcseg: `make demo` (the main job on the embedded synthetic data) and `make test`.
# Each target creates .venv and installs the requirements when they are missing or changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-slow demo docs lint clean-demo

$(STAMP): requirements.txt requirements-dev.txt requirements-extra.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

setup: $(STAMP)

# CPU-only, no network, fast; `slow` and `gpu` tests are skipped (run them with: $(PY) -m pytest -m slow).
test: setup
	$(PY) -m pytest -q

# The slow end-to-end tests (torchrun DDP, kill-and-resume); CI runs them after `make test`.
test-slow: setup
	$(PY) -m pytest -q -m slow

# Generate the synthetic aerial video set, train the image model on it, evaluate it, print the results table.
demo: setup
	$(PY) -m training.demo

docs: setup
	$(PY) -m config.docs --write

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
