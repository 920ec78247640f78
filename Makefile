# Two commands do everything on a fresh machine with only Python:  `make demo`  and  `make test`.
# They create .venv when missing (uv, pinned by constraints.txt), install perpo into it, and fetch the
# WordNet data that METEOR needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.perpo-installed
UV_VERSION := 0.13.8
# Keep the test process count at the core count; tests set their own torch threads.
PYTEST_ARGS ?= -n 2 --dist loadgroup

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help venv demo demo-quick demo-ocr test lint format clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/python -m uv pip install --python $(BIN)/python --constraint constraints.txt --editable ".[dev]"
	$(BIN)/perpo setup
	@touch $@

venv: $(STAMP)  ## create .venv and install perpo (idempotent)

demo: $(STAMP)  ## the whole loop on the embedded default (synthetic data + tiny LLaVA)
	$(BIN)/perpo demo --out runs/demo

demo-quick: $(STAMP)  ## a minute-scale smoke run of the demo
	$(BIN)/perpo demo --quick --out runs/demo-quick

demo-ocr: $(STAMP)  ## the OCR half of the paper in miniature: synthetic pages, edit-distance rewards, Table 2 twin
	$(BIN)/perpo demo --track ocr --out runs/demo_ocr

test: $(STAMP)  ## the whole test suite (unit + integration; gpu-marked tests skip without a GPU)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff check + format check
	$(BIN)/ruff check perpo lmms_tasks reports tests benchmarks scripts
	$(BIN)/ruff format --check perpo lmms_tasks reports tests benchmarks scripts

format: $(STAMP)
	$(BIN)/ruff format perpo lmms_tasks reports tests benchmarks scripts
	$(BIN)/ruff check --fix perpo lmms_tasks reports tests benchmarks scripts

clean:  ## remove build outputs (keeps .venv)
	rm -rf build dist *.egg-info .pytest_cache runs/demo-quick
