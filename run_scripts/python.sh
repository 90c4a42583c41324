#!/usr/bin/env bash
# The project's Python (./.venv, created on first use; or $PY), so that its commands work as typed:
#   bash run_scripts/python.sh -m preprocess --source siq2 --root SIQ2_ROOT --output shards/siq2_train
#   bash run_scripts/python.sh -m omni_grpo.evaluate --model CHECKPOINT --data SHARDS
# Paths are relative to the folder you run it from, as with plain python.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
exec "$PY" "$@"
