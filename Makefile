# Two entry points for a fresh clone (see README):
#   make demo   the main job against the embedded FakePangoCDP
#   make test   install what the tests need, then lint, type-check and run every test
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test lint bench clean

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
	$(BIN)/python -m pangocdp_async

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.limiter
	$(BIN)/python -m benchmarks.overhead
	$(BIN)/python -m benchmarks.memory

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
