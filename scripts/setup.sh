#!/usr/bin/env bash
# Sets up everything dispersiond and its test suite need, on a fresh machine:
# a virtual environment in .venv with the package and its test extras, the pinned
# Azure emulator (Azurite) from npm, and (as root, with apt) systemd-nspawn and
# mmdebstrap for the system test. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
extras=${DISPERSIOND_EXTRAS:-test}
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
# The system test (tests/test_system.py) boots a real systemd in a container: it needs
# systemd-nspawn and mmdebstrap, from Debian's packages, and root.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
   && ! { command -v systemd-nspawn && command -v mmdebstrap; } >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd-container mmdebstrap >/dev/null
fi
if [ "${SKIP_NPM:-0}" != "1" ] && [ -f package-lock.json ]; then
  if ! command -v npm >/dev/null; then
    echo "setup: npm is needed for the Azure emulator (Azurite); install Node.js and npm" >&2
    exit 1
  fi
  npm ci --silent --no-audit --no-fund
fi
