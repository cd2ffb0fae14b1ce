#!/usr/bin/env bash
# One command: set up, then run the whole test suite (emulators are started by the suite itself).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export AWS_EC2_METADATA_DISABLED=true
exec .venv/bin/python -m pytest "$@"
