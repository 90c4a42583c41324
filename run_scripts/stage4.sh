#!/usr/bin/env bash
# Stage 4 GRPO under DeepSpeed ZeRO-3; arguments are key=value config overrides (e.g. learning_rate=5e-7).
#   MODEL=DIR DATA=SHARDS[,SHARDS] [OUTPUT_DIR=outputs/stage4] bash run_scripts/stage4.sh   # configs/stage4.yaml
#   bash run_scripts/stage4.sh   # none of the three set: the built-in demo (tiny model, colour/tone clips, 60 CPU steps) in DEMO_DIR
# NPROC processes per node (default: every GPU, else 2 on CPU); NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (default 29500; one node: a free port) span nodes.
# SIGTERM (the launcher takes this script's PID: exec) or Ctrl-C: the ranks save at the next safe point and print OMNI_GRPO_COMMAND (this command as typed) to resume.
set -euo pipefail
export OMNI_GRPO_COMMAND="${OMNI_GRPO_COMMAND:-$(for v in PY MODEL DATA OUTPUT_DIR DEMO_DIR NPROC NNODES NODE_RANK MASTER_ADDR MASTER_PORT; do [[ -z "${!v:-}" ]] || printf '%s=%q ' "$v" "${!v}"; done; printf '%q ' bash "$0" "$@")}"
source "$(dirname "$0")/_env.sh" && cd "$REPO_ROOT"
grouped() { setsid "$@" & local p=$!; trap "kill -- -$p 2>/dev/null; wait $p || :; exit 143" TERM; trap "kill -- -$p 2>/dev/null; wait $p || :; exit 130" INT; wait $p; trap - TERM INT; }  # kill or Ctrl-C of this script ends the step too (TERM: a background step ignores INT)
if [[ -z "${MODEL:-}${DATA:-}${OUTPUT_DIR:-}" ]]; then  # the built-in tiny default, on CPU
  export CUDA_VISIBLE_DEVICES="" && demo="${DEMO_DIR:-outputs/demo}" && grouped bash run_scripts/demo_setup.sh "$demo"
  set -- --config configs/demo.yaml model_name_or_path="$demo/model" data="[$demo/shards]" eval_data="[$demo/shards]" eval_steps=60 output_dir="$demo/run" "$@"
elif [[ -z "${MODEL:-}" || -z "${DATA:-}" ]]; then echo "config error: set MODEL=DIR and DATA=SHARDS together (neither: the built-in demo)" >&2; exit 2
else
  set -- --config configs/stage4.yaml model_name_or_path="$MODEL" data="[$DATA]" output_dir="${OUTPUT_DIR:-outputs/stage4}" "$@"
fi
read -r gpus free_port accel < <("$PY" -c 'import socket, torch; s = socket.socket(); s.bind(("", 0)); n = torch.cuda.device_count(); print(n, s.getsockname()[1], "cuda" if n else "cpu")')
export DS_ACCELERATOR="${DS_ACCELERATOR:-$accel}" && nodes="${NNODES:-1}" && per_node="${NPROC:-$((gpus > 0 ? gpus : 2))}" && port="${MASTER_PORT:-$((nodes > 1 ? 29500 : free_port))}"
OMNI_GRPO_WORLD_SIZE=$((per_node * nodes)) "$PY" -m omni_grpo.train --check "$@"  # config, paths, memory: before any rank starts
for arg in "$@"; do case "$arg" in output_dir=*) out="${arg#output_dir=}" ;; esac; done
echo "starting $((per_node * nodes)) processes on $nodes node(s), each loading the model; TensorBoard (its Custom Scalars tab first):"$'\n'"  bash run_scripts/tensorboard.sh $out/runs"
exec "$PY" -m omni_grpo.launch --config_file configs/accelerate/zero3.yaml --num_processes $((per_node * nodes)) \
  --num_machines "$nodes" --machine_rank "${NODE_RANK:-0}" --main_process_ip "${MASTER_ADDR:-127.0.0.1}" \
  --main_process_port "$port" --deepspeed_multinode_launcher standard -m omni_grpo.train "$@"
