#!/usr/bin/env bash
# TensorBoard from the project's Python: bash run_scripts/tensorboard.sh [LOGDIR] [tensorboard options]
# LOGDIR (default outputs/demo/run/runs, the main job's) is relative to the folder you run it from.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
exec "$PY" -m tensorboard.main --logdir "${1:-outputs/demo/run/runs}" "${@:2}"
