# The two commands of the README, plus helpers. Each target sets up .venv first (safe to rerun).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup main test test-explore docs export bench

setup:
	bash .ci/setup --browser

## main: run the main job (the quick experiment suite on the embedded default dataset)
main: setup
	$(BIN)/tq_experiments --suite main --preset quick --seeds 0

## test: everything CI checks: library in sync with notebooks, notebook tests, property tests, docs site
test: setup
	$(BIN)/python tests/check_export.py
	$(BIN)/python -m pytest -q tests

## test-explore: the property tests with fresh random examples (the gate above is derandomized, so reproducible)
test-explore: setup
	TQ_NB_EXPLORE=1 $(BIN)/python -m pytest -q tests --ignore=tests/test_notebooks.py --ignore=tests/test_docs.py

## docs: build the static documentation site into _docs/ (offline; Quarto users can run nbdev_docs)
docs: setup
	$(BIN)/python .ci/build_docs.py

## export: notebooks -> library, clean notebooks, README.md from nbs/index.ipynb (nbdev_readme needs Quarto)
export:
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean && $(BIN)/python .ci/readme.py

bench: setup
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done
