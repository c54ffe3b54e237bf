# cramming-simple: one target per stage. Every target that needs the environment creates .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CS := $(BIN)/cramming-simple
# Pin a torch build before the project installs, e.g. TORCH=torch==2.13.0 (CI's local CPU wheel).
TORCH ?=

BLOCK ?= preln
BLOCKS ?= preln sas sasp
BUDGET ?= 24h
# make all BUDGET=24h REFERENCE=rtx2080ti-he2023 ARGS=train.microbatch=64: the budget's hours are hours on that
# reference device (reports/reference/hardware.yaml, your own from `cramming-simple calibrate --save`, or a YAML file);
# each run calibrates here once per kind of device (RUNS/.calibration/) and trains the same amount of work
REFERENCE ?=
PROTOCOL ?= paper
TASKS ?= all
SEEDS ?=
RUNS ?= runs
RUN ?=
GPUS ?= 1
OUT ?= reports/latest
ARGS ?=
GLUE_ARGS ?=
# make demo: the smoke budget for three blocks, the smoke GLUE protocol on a few tasks, the report.
DEMO_BLOCKS ?= preln sas sasp
DEMO_TASKS ?= sst2,rte,stsb
DEMO_RUNS ?= runs/demo
DEMO_OUT ?= reports/demo
DEMO_ARGS ?=
# make demo's side-by-side speed: an interleaved bench of its blocks at the smoke size (arch tiny, microbatch 32)
DEMO_BENCH_ARGS ?= --arch tiny --batch 32 --steps 6 --warmup 2
GLUE_DIR ?=
# make test: the default suite (what CI runs); make test-all adds the tests marked slow
TEST_MARKS ?= not slow
PYTEST_ARGS ?=
# make all PRETRAIN_SEEDS="0 1 2": replicate pretraining runs per block (runs/<block>-<budget>-s<seed>), which the
# report folds into one row (GLUE over pretraining x fine-tuning seeds, speed and loss mean ± std)
PRETRAIN_SEEDS ?=
# make all LAUNCHER=slurm SLURM="partition=gpu gpus_per_node=1 constraint=a100 time=1500": the same comparison as
# Slurm jobs (cramming-simple sweep; README "On a cluster")
LAUNCHER ?= local
SLURM ?=
comma := ,
space := $(empty) $(empty)

# a reference budget's runs are named <block>-<budget>-<reference> and share one calibration per kind of device
REF_TAG := $(if $(REFERENCE),-$(basename $(notdir $(REFERENCE))))
REF_ARGS := $(if $(REFERENCE),--reference $(REFERENCE) --calibration-dir $(RUNS)/.calibration)

ifeq ($(GPUS),1)
LAUNCH := $(CS)
else
LAUNCH := $(BIN)/torchrun --standalone --nproc_per_node=$(GPUS) -m cramming_simple
endif

.PHONY: help setup test test-all test-hf format demo data pretrain glue report bench calibrate check-block export all params \
	clean-venv

help:
	@echo "make demo | make test                 first two commands on a fresh machine"
	@echo "make test-all                         the suite with its slow end-to-end tests (CI runs make test)"
	@echo "make test-hf                          transformers' own common model tests on the HF classes"
	@echo "make format                           ruff: fix what it can, format the code"
	@echo "make pretrain BLOCK=sas BUDGET=24h    pretrain one block (resumes if the run exists)"
	@echo "make glue BLOCK=sas [RUN=runs/..]     fine-tune the latest run of BLOCK on GLUE"
	@echo "make report                           tables and plots from every run in $(RUNS)/"
	@echo "make bench                            speed of every block at crammed-bert size"
	@echo "make check-block BLOCK=my.py:MyBlock  a block's report card before any GPU time (BLOCK: any block)"
	@echo "make export RUN=runs/sas-24h          a run's model as a Hugging Face folder with a model card (exports/)"
	@echo "make all BLOCKS=\"preln sas sasp\" BUDGET=24h PROTOCOL=paper [PRETRAIN_SEEDS=\"0 1 2\"]"
	@echo "make all BUDGET=24h REFERENCE=rtx3090-notrainnogain   24 h of an RTX 3090, calibrated here (docs/recipe.md)"
	@echo "make calibrate BUDGET=24h                       Pre-LN's rate here, and the hours each reference maps to"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(BIN)/python -m pip install -q "$(TORCH)")
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

test: setup
	$(BIN)/ruff check cramming_simple tests
	$(BIN)/ruff format --check cramming_simple tests
	$(BIN)/python -m pytest -q -m "$(TEST_MARKS)" $(PYTEST_ARGS)

test-all:  # the slow end-to-end tests too (what CI leaves out to stay within 15 minutes)
	$(MAKE) --no-print-directory test TEST_MARKS=

# transformers' own common model tests (ModelTesterMixin) against the three Hugging Face classes, every block:
# fetches the installed transformers version's test modules from its source distribution (once, into
# ~/.cache/cramming-simple; needs the package registry), then runs tests/hf_common (docs/huggingface.md)
test-hf: setup
	@dir=$$($(BIN)/python tests/hf_common/fetch.py) && \
	  CRAMMING_SIMPLE_HF_TESTS=$$dir $(BIN)/python -m pytest -q -p no:cacheprovider tests/hf_common $(PYTEST_ARGS)

format: setup
	$(BIN)/ruff check --fix cramming_simple tests
	$(BIN)/ruff format cramming_simple tests

demo: setup
	@set -e; for b in $(DEMO_BLOCKS); do \
	  $(CS) pretrain --block $$b --budget smoke --runs-dir $(DEMO_RUNS) --resume $(DEMO_ARGS); \
	done
	@if [ -n "$(GLUE_DIR)" ]; then glue_data="--data-dir $(GLUE_DIR)"; \
	elif $(BIN)/python -c "from huggingface_hub import HfApi; HfApi().dataset_info('nyu-mll/glue', timeout=10)" >/dev/null 2>&1; then glue_data=""; \
	else glue_data=skip; fi; \
	if [ "$$glue_data" = skip ]; then \
	  echo "GLUE skipped: the Hugging Face hub is unreachable and GLUE_DIR is not set (make demo GLUE_DIR=path/to/glue)"; \
	else for b in $(DEMO_BLOCKS); do \
	  $(CS) glue $(DEMO_RUNS)/$$b-smoke --protocol smoke --tasks $(DEMO_TASKS) $$glue_data || exit 1; \
	done; fi
	$(CS) bench $(DEMO_BENCH_ARGS) --blocks $(shell echo $(DEMO_BLOCKS) | tr ' ' ',') --out $(DEMO_OUT)/bench > /dev/null
	$(CS) report --runs-dir $(DEMO_RUNS) --out $(DEMO_OUT) --bench $(DEMO_OUT)/bench/bench.json
	@echo ""
	@cat $(DEMO_OUT)/table1.md
	@echo ""
	@echo "The Speed column above divides whole-run step counts, which move with everything else the machine does."
	@echo "Side by side on this machine (interleaved bench of the same blocks at the demo's size; vs preln: paired ratio, 95 % interval):"
	@cat $(DEMO_OUT)/bench/bench.md
	$(CS) export $(DEMO_RUNS)/$(firstword $(DEMO_BLOCKS))-smoke --out $(DEMO_OUT)/export/$(firstword $(DEMO_BLOCKS))-smoke
	@echo ""
	@echo "Demo done. Tables and plots: $(DEMO_OUT)/index.md (table1.md, table2.md, *.png, *.pdf); side-by-side speed: $(DEMO_OUT)/bench/bench.md; runs: $(DEMO_RUNS)/"
	@echo "A Hugging Face folder with its model card: $(DEMO_OUT)/export/$(firstword $(DEMO_BLOCKS))-smoke/README.md"

params: setup
	$(CS) params

data: setup
	$(CS) data --budget $(BUDGET) $(if $(REFERENCE),--reference $(REFERENCE)) $(ARGS)

pretrain: setup
	$(LAUNCH) pretrain --block $(BLOCK) --budget $(BUDGET) --runs-dir $(RUNS) --resume $(REF_ARGS) $(ARGS)

glue: setup
	$(CS) glue $(if $(RUN),$(RUN),--block $(BLOCK) --runs-dir $(RUNS)) --protocol $(PROTOCOL) --tasks $(TASKS) \
	  $(if $(SEEDS),--seeds $(SEEDS)) $(if $(GLUE_DIR),--data-dir $(GLUE_DIR)) --gpus $(GPUS) $(GLUE_ARGS)

report: setup
	$(CS) report --runs-dir $(RUNS) --out $(OUT) $(if $(wildcard reports/bench/bench.json),--bench reports/bench/bench.json)

bench: setup
	$(CS) bench --arch crammed-bert --peer hf --compile --out reports/bench $(ARGS)

# Pre-LN's training rate here at a budget's settings, and the hours here of each known reference's budget
# (ARGS="--save my-gpu" keeps it as your own reference; ARGS="--json" prints it as a hardware.yaml entry)
calibrate: setup
	$(CS) calibrate --budget $(BUDGET) $(if $(REFERENCE),--reference $(REFERENCE)) $(ARGS)

# A run's model as a Hugging Face folder with a model card, e.g. make export RUN=runs/sas-24h, into exports/sas-24h
# (EXPORT_OUT=...); ARGS="--glue mnli" for a fine-tuned model, ARGS="--push-to-hub me/crammed-sas" to upload it
export: setup
	$(CS) export $(RUN) --out $(if $(EXPORT_OUT),$(EXPORT_OUT),exports/$(notdir $(RUN))) $(ARGS)

# A block's report card before any GPU time, e.g. make check-block BLOCK=examples/blocks/rezero.py:ReZero ARGS="--arch tiny"
check-block: setup
	$(CS) check-block $(BLOCK) $(ARGS)

# Pretrain every block, fine-tune every block, report. A block that fails (e.g. a non-finite loss) does not
# stop the others; the report shows what is missing and why. Rerunning resumes and skips what is done.
all: setup
ifeq ($(LAUNCHER),slurm)
	$(CS) sweep --launcher slurm --blocks $(subst $(space),$(comma),$(strip $(BLOCKS))) \
	  --seeds $(subst $(space),$(comma),$(strip $(if $(PRETRAIN_SEEDS),$(PRETRAIN_SEEDS),0))) --budget $(BUDGET) \
	  --protocol $(PROTOCOL) --tasks $(TASKS) --runs-dir $(RUNS) --out $(OUT) $(if $(GLUE_DIR),--data-dir $(GLUE_DIR)) \
	  $(if $(REFERENCE),--reference $(REFERENCE)) $(foreach o,$(SLURM),--slurm $(o)) $(ARGS)
else
	@failed=""; runs=""; for b in $(BLOCKS); do \
	  for s in $(if $(PRETRAIN_SEEDS),$(PRETRAIN_SEEDS),-); do \
	    case $$b in *:*) short=$$(echo "$${b##*:}" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]\{1,\}/-/g');; *) short=$$b;; esac; \
	    if [ "$$s" = - ]; then name=$$short-$(BUDGET)$(REF_TAG); extra=""; else name=$$short-$(BUDGET)$(REF_TAG)-s$$s; extra="train.seed=$$s"; fi; \
	    runs="$$runs $$name"; \
	    $(MAKE) --no-print-directory pretrain BLOCK=$$b BUDGET=$(BUDGET) RUNS=$(RUNS) GPUS=$(GPUS) REFERENCE=$(REFERENCE) ARGS="--name $$name $$extra $(ARGS)" || failed="$$failed pretrain:$$name"; \
	  done; \
	done; for name in $$runs; do \
	  if [ -f $(RUNS)/$$name/model/config.json ]; then \
	    $(MAKE) --no-print-directory glue RUN=$(RUNS)/$$name PROTOCOL=$(PROTOCOL) TASKS=$(TASKS) SEEDS=$(SEEDS) GPUS=$(GPUS) GLUE_DIR=$(GLUE_DIR) GLUE_ARGS="$(GLUE_ARGS)" || failed="$$failed glue:$$name"; \
	  fi; \
	done; \
	$(MAKE) --no-print-directory report RUNS=$(RUNS) OUT=$(OUT) || failed="$$failed report"; \
	if [ -n "$$failed" ]; then echo "make all: these steps did not finish:$$failed (rerun to resume)"; exit 1; fi
endif

clean-venv:
	rm -rf $(VENV)
