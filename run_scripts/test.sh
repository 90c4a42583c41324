#!/usr/bin/env bash
# The test suite (what CI runs). Installs what it needs into ./.venv on first use.
# Fast subset: bash run_scripts/test.sh -m "not slow"
set -euo pipefail
source "$(dirname "$0")/_env.sh"
cd "$REPO_ROOT"
exec "$PY" -m pytest -q "$@"
