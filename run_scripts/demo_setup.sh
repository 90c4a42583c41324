#!/usr/bin/env bash
# The built-in tiny default's inputs in DIR (default outputs/demo): a random tiny thinker (DIR/base), 32 clips whose
# colour and tone pitch give the answer (DIR/clips), their shards (DIR/shards), and the thinker with its output
# layer fitted to the answer format only (DIR/model; never to the answers, see omni_grpo/demo.py). Keeps what
# exists; one line per step it runs.   bash run_scripts/demo_setup.sh [DIR]
set -euo pipefail
source "$(dirname "$0")/_env.sh"
cd "$REPO_ROOT"
demo="${1:-outputs/demo}"
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}" HF_HUB_DISABLE_PROGRESS_BARS=1  # CPU work: no notice, no file bars
step() {  # step FILE WHAT COMMAND...: unless FILE (the last thing COMMAND writes) exists, say WHAT and run it
  if [[ ! -f "$1" ]]; then echo "demo set-up: $2" >&2; "${@:3}" >/dev/null; fi
}
step "$demo/base/config.json" "a random tiny thinker in $demo/base" "$PY" -m omni_grpo.tiny_models model "$demo/base"
step "$demo/clips/manifest.jsonl" "32 colour/tone clips in $demo/clips" "$PY" -m omni_grpo.demo data "$demo/clips"
step "$demo/shards/manifest.json" "their frames and audio in $demo/shards" "$PY" -m preprocess --source jsonl \
  --manifest "$demo/clips/manifest.jsonl" --output "$demo/shards" --max-pixels 3136 --min-pixels 3136
step "$demo/model/warm_up.json" "the reply format (never the answers) fitted, into $demo/model" env OMP_NUM_THREADS=1 \
  "$PY" -m omni_grpo.demo warmup --model "$demo/base" --data "$demo/shards" --output "$demo/model" \
  --config configs/demo.yaml
