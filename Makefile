# Two commands matter: `make run` and `make test`. Both set everything up first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bioident-installed
SPEECH := ../shared/data/speech/librispeech/test-other
A ?= $(SPEECH)/1688/1688-142285-0000.flac
B ?= $(SPEECH)/1688/1688-142285-0003.flac

.PHONY: setup run test lint bench

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	PYTHON=$(PY) bash scripts/setup.sh

# The main job on embedded defaults: verify the model, then compare two recordings (A, B).
run: setup
	$(BIN)/bioident model info
	$(BIN)/bioident compare "$(A)" "$(B)" --json

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest

bench: setup
	$(BIN)/python benchmarks/embedding_speed.py
