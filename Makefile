# Two entry points for a fresh clone (see README):
#   make demo       the main job: `pangocdp ingest` of the sample orders into the sandbox
#   make test-all   install what the tests need, then lint, type-check and run every test,
#                   the slow proofs (26 simulated hours, real-time runs) included; CI runs this
# While working: make test (the same without the tests marked slow; under 30 s).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test test-all lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/pangocdp ingest pangocdp_async/examples/orders.jsonl --object-type order --source POS \
		--sandbox --job .demo-job.sqlite --restart

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -m "not slow"

test-all: lint
	$(BIN)/pytest

bench: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.limiter
	$(BIN)/python -m benchmarks.overhead
	$(BIN)/python -m benchmarks.memory
	$(BIN)/python -m benchmarks.cli
	$(BIN)/python -m benchmarks.quota

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
