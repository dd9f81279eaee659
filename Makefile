# normbench: `make help` lists the targets. Every target installs what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
NB := $(BIN)/normbench
# EXPERIMENT picks the scale of the paper targets: mini (CPU, minutes) or paper (ResNet-50,
# ImageNet, 8 GPUs, 100 epochs). ARGS adds any Hydra override, e.g. ARGS="launcher=slurm".
EXPERIMENT ?= mini
ARGS ?=

.PHONY: help setup demo test test-fast lint table-batch table-norms table-zoo table-detect ablation-groups results results-budget results-all bench report clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-16s %s\n", $$1, $$2}'
	@echo "  variables: EXPERIMENT=mini|paper  ARGS='<hydra overrides>'  TORCH='$(TORCH)'"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed ## create .venv and install normbench with torch, Hydra, W&B, pandas, matplotlib

demo: setup ## the main job: a few-minute preview of the converged Table 2 (BN vs GN, Fashion-MNIST), then its report
	$(NB) sweep experiment=$(EXPERIMENT)-batch $(ARGS)

# One pytest worker per core (pytest-xdist), each taking whole test files so that a module's
# fixtures run once. Many tests wait on processes they started, so the workers overlap well:
# 9.1 -> 5.8 min on 2 cores (CONTRIBUTING.md).
test: setup ## run the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q -n auto --dist loadfile

test-fast: setup ## the tests not marked slow: under 2 minutes, for each edit (CONTRIBUTING.md)
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m "not slow"

lint: setup ## ruff
	$(BIN)/ruff check normbench tests scripts

table-batch: setup ## Table 2 / Figure 1: BN vs GN over 32,16,8,4,2 images per GPU
	$(NB) sweep experiment=$(EXPERIMENT)-batch $(ARGS)

table-norms: setup ## Table 1: BN, LN, IN, GN at 32 images per GPU
	$(NB) sweep experiment=$(EXPERIMENT)-norms $(ARGS)

table-zoo: setup ## every norm (bn .. evonorm, iternorm, dbn) at 32, 8, 2 images per GPU: heatmap + plot (mini only)
	$(NB) sweep experiment=mini-zoo $(ARGS)

# The classification runs whose checkpoints the detection cells start from, per EXPERIMENT.
PRETRAIN_mini := experiment=detect-pretrain
PRETRAIN_paper := experiment=paper-batch batch=32

table-detect: setup ## COCO table (Mask R-CNN): pretraining, then BN*, BN, SyncBN, GN and GN from scratch at 2 images/GPU, then the report
	$(NB) sweep $(PRETRAIN_$(EXPERIMENT)) $(ARGS)
	$(NB) sweep experiment=$(EXPERIMENT)-detect $(ARGS)
	$(NB) sweep experiment=$(EXPERIMENT)-detect norm=gn model.pretrained=null $(ARGS)

ablation-groups: setup ## Table 3: GN with G = 64..1 groups, then 64..1 channels per group
	$(NB) sweep experiment=$(EXPERIMENT)-groups $(ARGS)
	$(NB) sweep experiment=$(EXPERIMENT)-group-size $(ARGS)

results: setup ## the headline: the converged Tables 1-3 on Fashion-MNIST (hours; committed cells are skipped)
	$(BIN)/python scripts/reproduce.py fashion_mnist-converged-8px

results-budget: setup ## how long `make results` takes here and on the slowest machine seen (a 12-epoch run: 7 min here)
	$(BIN)/python scripts/bench_results.py fashion_mnist-converged-8px

results-all: setup ## every committed CPU-scale result, the earlier protocols' too (each RUN.md has its time)
	$(BIN)/python scripts/reproduce.py

report: setup ## rebuild the report of a sweep: make report DIR=runs/fashion_mnist-resnet8
	$(NB) report $(DIR)

bench: setup ## speed benchmarks (results/bench/*.md)
	$(BIN)/python scripts/bench_loop.py
	$(BIN)/python scripts/bench_emulated.py
	$(BIN)/python scripts/bench_detect.py
	$(BIN)/python scripts/bench_norms.py
	$(BIN)/python scripts/bench_data.py
	$(BIN)/python scripts/bench_gpu.py
	$(BIN)/python scripts/bench_sweep.py

clean: ## remove caches (never runs/ or results/)
	rm -rf .pytest_cache .ruff_cache
