#!/usr/bin/env bash
# The built-in tiny default's inputs in DIR (default outputs/demo): a random tiny thinker (DIR/base), 32 clips whose
# colour and tone pitch give the answer (DIR/clips), their shards (DIR/shards), and the thinker with its output
# layer fitted to the answer format only (DIR/model; never to the answers, see omni_grpo/demo.py). Keeps what exists;
# each step's guard is the file it writes last.   bash run_scripts/demo_setup.sh [DIR]
set -euo pipefail
source "$(dirname "$0")/_env.sh"
cd "$REPO_ROOT"
demo="${1:-outputs/demo}"
[[ -f "$demo/base/config.json" ]] || "$PY" -m omni_grpo.tiny_models model "$demo/base"
[[ -f "$demo/clips/manifest.jsonl" ]] || "$PY" -m omni_grpo.demo data "$demo/clips"
[[ -f "$demo/shards/manifest.json" ]] || "$PY" -m preprocess --source jsonl --manifest "$demo/clips/manifest.jsonl" \
  --output "$demo/shards" --max-pixels 3136 --min-pixels 3136 --no-progress
[[ -f "$demo/model/warm_up.json" ]] || OMP_NUM_THREADS=1 "$PY" -m omni_grpo.demo warmup --model "$demo/base" \
  --data "$demo/shards" --output "$demo/model" --config configs/demo.yaml
