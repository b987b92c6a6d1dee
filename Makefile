# The two commands of the README, plus helpers. Each target sets up .venv first (safe to rerun).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup main study probes test test-explore docs export bench

setup:
	bash .ci/setup --browser

## main: the real job, about 20-25 minutes on 2 cores: retrain the study's headline rows (suite `headline`, seed 0,
## --preset dropout, the study's WordNet budget) as two one-thread runs side by side into scratch/ (git-ignored; an
## interrupted main resumes), then print whether each rerun reproduces the committed result in res/
RUN2 = $(BIN)/tq_experiments --threads 1 --device cpu
main: setup
	mkdir -p scratch
	TQ_NB_DATA=scratch/data $(RUN2) --suite headline --preset dropout --seeds 0 --res_dir scratch/res > scratch/main-worker2.log 2>&1 & \
	sleep 10; TQ_NB_DATA=scratch/data $(RUN2) --suite headline --preset dropout --seeds 0 --res_dir scratch/res; \
	wait; echo "(the second worker's log: scratch/main-worker2.log)"
	$(BIN)/tq_reproduce --suite headline --preset dropout --seed 0 --scratch scratch/res

## study: the whole study matrix into res/, resumably, two one-thread runs side by side: suite study on WordNet at
## --preset dropout, then vision_study and vision_plain on Fashion-MNIST at --preset base, seeds 0 1 2: many hours on
## 2 cores; rerun the same command to continue after an interruption
study: setup
	mkdir -p scratch
	for sp in study:dropout vision_study:base vision_plain:base; do \
	  s=$${sp%%:*}; p=$${sp##*:}; \
	  $(RUN2) --suite $$s --preset $$p --seeds 0 1 2 > scratch/study-worker2.log 2>&1 & \
	  sleep 10; $(RUN2) --suite $$s --preset $$p --seeds 0 1 2; wait; \
	done

## probes: measure the classifier head (live hidden units, logit spread, classes predicted) of every finished run of
## the WordNet study whose checkpoint is on this machine, into res/probes/ (chapter 11 shows why a run sits at the
## majority class); seconds a run
probes: setup
	$(BIN)/python -c "from tq_nb.report import probe_runs; probe_runs('study')"

## test: everything CI checks: library in sync with notebooks, notebook tests, property tests, docs site;
## on both cores (pytest-xdist: tests spread one by one, the docs tests kept together on one worker)
test: setup
	$(BIN)/python tests/check_export.py
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=15 tests

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
