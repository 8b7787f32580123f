# Two commands do all the set-up on a fresh machine with Python 3.10+:
#   make run    creates .venv when missing, then prepare -> pretrain -> finetune through the MLproject
#   make test   creates .venv when missing, then runs the test suite
# Options: make run DATA=/path/to/dataset PROFILE=quick   (DATA defaults to $FASHION_DATA)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= $(FASHION_DATA)
PROFILE ?= default
EXPERIMENT ?= fashion-product-images-small
MLFLOW_RUN := PATH="$(abspath $(BIN)):$$PATH" $(BIN)/mlflow run . --env-manager local --experiment-name $(EXPERIMENT)

.PHONY: run test test-all ui venv clean-venv

$(BIN)/fashion: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

venv: $(BIN)/fashion

run: venv
	$(MLFLOW_RUN) -e prepare -P data="$(DATA)"
	$(MLFLOW_RUN) -e pretrain -P data="$(DATA)" -P profile=$(PROFILE)
	$(MLFLOW_RUN) -e finetune -P data="$(DATA)" -P profile=$(PROFILE)

test: venv
	$(BIN)/python -m pytest -q

test-all: venv
	$(BIN)/python -m pytest -q -m ""

ui: venv
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db

clean-venv:
	rm -rf $(VENV)
