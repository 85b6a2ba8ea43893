# Two commands matter: `make run` and `make test`. Both set everything up first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bioident-installed

.PHONY: setup run test lint bench bench-latency bench-fingerprint

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	PYTHON=$(PY) bash scripts/setup.sh

# The service on embedded defaults: SQLite and a 0600 keyring in ./data, http://127.0.0.1:8000/docs
run: setup
	$(BIN)/bioident serve

lint: setup
	$(BIN)/ruff check .

test: lint
	bash scripts/ensure-postgres.sh
	$(BIN)/pytest

bench: setup
	$(BIN)/python -m benchmarks.embedding_speed

bench-latency: setup
	$(BIN)/python -m benchmarks.verify_latency

# Fingerprint extraction, 1:1 and 1:N over 10,000 fingers (FVC2002 prints and distractor copies)
bench-fingerprint: setup
	$(BIN)/python -m benchmarks.fingerprint_speed
