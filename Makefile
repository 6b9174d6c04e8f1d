# pda-repro — every target runs `setup` first (idempotent; seconds once done).
SHELL := /bin/bash
PY := .venv/bin/python
MODEL ?= default
BACKEND ?= all
DEVICE ?= cpu
BATCH ?= 160
PROFILE ?= quick
WEIGHTS ?=
FORCE ?=
THREADS ?=
EXPERIMENTS ?=
WORKERS ?=
CLUSTER ?=
INFERENCE ?=
BENCH_ARGS = --model $(MODEL) --backend $(BACKEND) --device $(DEVICE) --batch $(BATCH) --profile $(PROFILE) \
	$(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(FORCE),--force) \
	$(if $(THREADS),--threads $(THREADS)) $(if $(EXPERIMENTS),--experiments $(EXPERIMENTS)) \
	$(if $(WORKERS),--workers $(WORKERS)) $(if $(CLUSTER),--cluster $(CLUSTER)) \
	$(if $(INFERENCE),--inference $(INFERENCE))

.PHONY: setup test unit regress benchmark microbench bench-sampler bench-batch bench-parallel bench-module figures figures-data train-mnist convert-efficientnet prototxts lint clean help

help:
	@echo "make setup | test | benchmark [MODEL= BACKEND= DEVICE= BATCH= PROFILE= WEIGHTS= INFERENCE=auto|incremental|full WORKERS= CLUSTER=] | figures | regress | train-mnist | lint"

setup:
	@bash scripts/setup.sh

# The README's test command: unit tests (pycaffe ones included, never skipped in CI) + runtime regression.
test: setup
	CI=$${CI:-} $(PY) -m pytest -q
	$(MAKE) --no-print-directory regress

unit: setup
	$(PY) -m pytest -q

regress: setup
	$(PY) -m pda_repro.cli benchmark regress

benchmark: setup
	$(PY) -m pda_repro.cli benchmark run $(BENCH_ARGS)

microbench: setup
	$(PY) -m pytest benchmarks -q -p no:cacheprovider --benchmark-json results/$$($(PY) -c 'from pda_repro.bench.results import env_name; print(env_name())')/pytest-benchmark.json

bench-sampler: setup
	$(PY) -m pda_repro.cli benchmark sampler

bench-batch: setup
	$(PY) -m pda_repro.cli benchmark batch

# Ray workers vs one process, Ray start-up and memory -> results/<env>/parallel.csv
bench-parallel: setup
	$(PY) -m pda_repro.cli benchmark parallel $(if $(WORKERS),--workers $(WORKERS))

# incremental vs full inference on torchvision resnet18 -> results/<env>/incremental_module.csv
bench-module: setup
	$(PY) -m pda_repro.cli benchmark module

figures: setup
	$(PY) -m pda_repro.cli figures

# Compute the qualitative figures' maps (resumable: stored maps are reused); `make figures` re-renders
# them from results/.
figures-data: setup
	OMP_NUM_THREADS=1 $(PY) -m pda_repro.cli qualitative compute $(if $(WORKERS),--workers $(WORKERS)) \
	$(if $(CLUSTER),--cluster $(CLUSTER))

train-mnist: setup
	$(PY) -m pda_repro.cli train mnist

convert-efficientnet: setup
	$(PY) -m pda_repro.cli convert efficientnet --out models

prototxts: setup
	$(PY) -m pda_repro.cli prototxts

lint: setup
	$(PY) -m ruff check pda_repro tests benchmarks
	$(PY) -m ruff format --check pda_repro tests benchmarks

clean:
	rm -rf .venv pda_repro/_generated/_caffe_pb2.py .pytest_cache
