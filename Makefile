# Two commands matter: `make run` and `make test`. Both set everything up first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bioident-installed

.PHONY: setup run test lint bench bench-latency bench-load bench-fingerprint

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh biometrics/voice/model/fused_passes.c $(wildcard service/portal/translations/*/LC_MESSAGES/messages.po)
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

bench-load: setup
	$(BIN)/python -m benchmarks.load --overload-callers 48

# Fingerprint extraction, 1:1 and 1:N over 10,000 fingers (FVC2002 prints and distractor copies), then the
# till end to end over HTTP with 10,000 enrolled fingers (about 10 minutes in all on 2 cores)
bench-fingerprint: setup
	$(BIN)/python -m benchmarks.fingerprint_speed
	$(BIN)/python -m benchmarks.till_latency
