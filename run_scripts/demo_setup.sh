#!/usr/bin/env bash
# The built-in tiny default's inputs in DIR (default outputs/demo): a random tiny thinker (DIR/model), 6 synthetic
# Social-IQ-style clips (DIR/raw) and their shards (DIR/shards). Keeps what exists; preprocess writes manifest.json
# last, so an interrupted preprocess runs again (and resumes).   bash run_scripts/demo_setup.sh [DIR]
set -euo pipefail
source "$(dirname "$0")/_env.sh"
cd "$REPO_ROOT"
demo="${1:-outputs/demo}"
[[ -f "$demo/model/config.json" ]] || "$PY" -m omni_grpo.testing model "$demo/model"
[[ -d "$demo/raw/qa" ]] || "$PY" -m omni_grpo.testing siq2 "$demo/raw" --n-clips 6
[[ -f "$demo/shards/manifest.json" ]] || "$PY" -m preprocess --source siq2 --root "$demo/raw" --output "$demo/shards" \
  --max-pixels 50176 --min-pixels 3136 --no-progress
