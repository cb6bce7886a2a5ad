# Two entry points for a fresh clone (see README):
#   make demo       the main job: `pangocdp ingest` of the sample orders into the sandbox
#   make test-all   install what the tests need, then lint, type-check and run every test,
#                   the slow tests (simulated hours, real time, processes) included, then nox:
#                   the default suite on every supported Python (3.10 and 3.13 required), the
#                   wheel built, checked, installed and run outside the checkout, and the docs
#                   built with warnings as errors; CI runs this
# While working: make test (the same without the tests marked slow; under 30 s).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test test-all lint bench docs mutation clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,bench,docs,dev]'
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
	$(BIN)/sphinx-build -E -W --keep-going -n -q -b html docs docs/_build/html
	PANGOCDP_NOX_SOURCE_TESTED=$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
		$(BIN)/nox --no-color -s tests wheel

# Not part of test-all or CI (it takes a long while): after changing the core or its tests.
# mutmut keeps a verdict until the function changes: survivors are tried again, so tests added
# since the last run count.
# A test a mutant hangs fails after 5 s (pytest-timeout; every test left in takes under 1 s).
mutation: export PYTEST_TIMEOUT = 5
mutation: $(VENV)/.installed-test
	$(BIN)/mutmut run --max-children 2
	# mutmut traces only new tests to the functions they run: an old test that reaches a new or
	# changed function would be missed. Survivors are tried after a full trace (its cache goes).
	rm -f mutants/mutmut-stats.json
	survivors="$$($(BIN)/python tests/mutation_score.py --names)"; \
	if [ -n "$$survivors" ]; then $(BIN)/mutmut run --max-children 2 $$survivors; fi
	$(BIN)/python tests/mutation_score.py --fail-under 90

docs: $(VENV)/.installed-test
	$(BIN)/sphinx-build -E -W --keep-going -n -b html docs docs/_build/html

bench: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks.limiter
	$(BIN)/python -m benchmarks.overhead
	$(BIN)/python -m benchmarks.memory
	$(BIN)/python -m benchmarks.cli
	$(BIN)/python -m benchmarks.quota

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .nox mutants docs/_build
