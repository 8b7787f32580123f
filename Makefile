# Two commands do all the set-up on a fresh machine with Python 3.10+:
#   make run    creates .venv when missing, then the main job through the MLproject's `main` entry point:
#               prepare -> pretrain -> finetune -> compare with the techniques of experiments/main.yaml
#   make test   creates .venv when missing (with the dev and ray extras), then runs the test suite (what CI runs)
# Daily loop: make test-fast (unit tests, no integration/realdata/slow; 2 processes), make lint, make format;
#             make test-all adds the slow tests. pre-commit: .venv/bin/pre-commit install (runs the same ruff and
#             mypy on commit).
# Options: make run DATA=/path/to/dataset PROFILE=quick   (DATA defaults to $FASHION_DATA; PROFILE=auto picks
#          default on a CUDA GPU, quick on CPUs; DEVICE=cpu|cuda; TECHNIQUES=a,b instead of experiments/main.yaml;
#          OVERRIDE='data.top_k=10 train.epochs=2' for every technique)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= $(FASHION_DATA)
PROFILE ?= auto
DEVICE ?= auto
TECHNIQUES ?=
OVERRIDE ?=
OUT ?= reports/compare
EXPERIMENT ?= fashion-product-images-small
MLFLOW_RUN := PATH="$(abspath $(BIN)):$$PATH" $(BIN)/mlflow run . --env-manager local --experiment-name $(EXPERIMENT)
KAGGLE_PAGE := https://www.kaggle.com/datasets/paramaggarwal/fashion-product-images-small

.PHONY: run test test-fast test-all lint format ui venv clean-venv

# .venv takes about 7 GB (PyTorch's CUDA build and its libraries): say so at once rather than after minutes of pip.
VENV_GB ?= 7
$(BIN)/fashion: pyproject.toml
	@$(PYTHON) -c "import shutil, sys; free = shutil.disk_usage('.').free / 2**30; sys.exit(0 if free >= $(VENV_GB) else 'the set-up needs about $(VENV_GB) GB free for $(VENV) (PyTorch and its CUDA libraries); %.1f GB free here: free some space (or make VENV_GB=0 to try anyway)' % free)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev,ray]'
	touch $@

venv: $(BIN)/fashion

# Checked before the set-up, so a missing DATA is one line at once, not an error after minutes of pip.
ifneq ($(filter run,$(MAKECMDGOALS)),)
ifeq ($(strip $(DATA)),)
$(error no data given: download the dataset from $(KAGGLE_PAGE), then make run DATA=/path/to/fashion-product-images-small.zip (a folder, .zip or .tar.gz) or set FASHION_DATA)
endif
ifeq ($(filter kaggle:%,$(DATA))$(wildcard $(DATA)),)
$(error DATA=$(DATA) does not exist: give the path of the downloaded folder, .zip or .tar.gz ($(KAGGLE_PAGE)))
endif
endif

run: venv
	$(MLFLOW_RUN) -e main -P data="$(DATA)" -P profile=$(PROFILE) -P device=$(DEVICE) -P techniques="$(TECHNIQUES)" -P out="$(OUT)" -P override="$(OVERRIDE)"

test: venv
	$(BIN)/python -m pytest -q

# Unit tests only: what starts no server, cluster or subprocess and needs no real data. In TEST_JOBS processes
# (pytest-xdist, from the dev extra; each has its own MLflow stores and cache folder), a test module's tests in one
# of them (--dist loadscope: a module's shared runs are made once); TEST_JOBS=0 runs them in this one.
TEST_JOBS ?= 2
test-fast: venv
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadscope -m "not integration and not realdata and not slow"

test-all: venv
	$(BIN)/python -m pytest -q -m ""

# Settings in pyproject.toml ([tool.ruff], [tool.mypy]); the same commands as .pre-commit-config.yaml.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

ui: venv
	@MLFLOW_TRACKING_URI=sqlite:///mlflow.db $(BIN)/python -c "from fashion_core.tracking.runs import print_ui_links; print_ui_links()" 2>/dev/null || true
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db

clean-venv:
	rm -rf $(VENV)
