#!/usr/bin/env bash
# Lint (CI runs it before the tests): ruff check and ruff format --check, configured in ruff.toml. The pinned
# ruff is installed into the project's Python on first use (not a dependency of the package).
# Arguments go to `ruff check` (e.g. --fix); to format: bash run_scripts/python.sh -m ruff format
set -euo pipefail
source "$(dirname "$0")/_env.sh"
cd "$REPO_ROOT"
RUFF_VERSION=0.17.6  # the same pin as .pre-commit-config.yaml
if [[ "$("$PY" -m ruff --version 2>/dev/null)" != "ruff $RUFF_VERSION" ]]; then
  "$PY" -m pip install -q "ruff==$RUFF_VERSION" >&2
fi
status=0
"$PY" -m ruff check "$@" . || status=1
"$PY" -m ruff format --check . || status=1
exit "$status"
