#!/usr/bin/env bash
# The fast tests under other torch / transformers versions: the check behind setup.py's ranges and README's
# "Tested on" table (not part of CI; about 5 GB of downloads per torch version, ~30 min per pair on 2 cores).
#
#   bash bench/version_matrix.sh                          # the floor pair and the newest pair below
#   bash bench/version_matrix.sh 2.11.0:0.26.0:5.24.0     # TORCH:TORCHVISION:TRANSFORMERS, one or more
#   VENVS=/somewhere PYTEST_ARGS="tests/test_models.py" bash bench/version_matrix.sh 2.11.0:0.26.0:5.24.0
#
# Each pair gets its own virtual environment under $VENVS (default: ~/.cache/omni-grpo-versions; never inside
# the repository), with the project installed from this checkout and every other requirement resolved by pip
# around the pinned pair. The audio-tower test (windowed attention under sdpa and eager) runs first, then the
# fast tests; each pair's log goes to $VENVS/<pair>.log and its summary line is printed at the end.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENVS="${VENVS:-$HOME/.cache/omni-grpo-versions}"
PYTHON="${PYTHON:-python3}"
PYTEST_ARGS="${PYTEST_ARGS:-tests}"
if [[ $# -eq 0 ]]; then
  set -- 2.11.0:0.26.0:5.24.0 2.14.1:0.29.1:5.25.0
fi
case "$VENVS/" in
  "$REPO_ROOT"/*) echo "VENVS=$VENVS is inside the repository: choose a folder outside it" >&2; exit 2 ;;
esac
for pair in "$@"; do
  IFS=: read -r torch_v vision_v tf_v <<<"$pair"
  if [[ -z "${torch_v:-}" || -z "${vision_v:-}" || -z "${tf_v:-}" ]]; then
    echo "'$pair' is not TORCH:TORCHVISION:TRANSFORMERS (e.g. 2.11.0:0.26.0:5.24.0)" >&2; exit 2
  fi
done
mkdir -p "$VENVS"
summary=()
for pair in "$@"; do
  IFS=: read -r torch_v vision_v tf_v <<<"$pair"
  name="torch${torch_v}-transformers${tf_v}"
  venv="$VENVS/$name"
  log="$VENVS/$name.log"
  echo "== $name: $venv (log: $log)"
  if [[ ! -x "$venv/bin/python" ]]; then
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
  fi
  constraints="$venv/constraints.txt"
  printf 'torch==%s\ntorchvision==%s\ntransformers==%s\n' "$torch_v" "$vision_v" "$tf_v" >"$constraints"
  "$venv/bin/python" -m pip install -q -c "$constraints" "torch==$torch_v" "torchvision==$vision_v" \
    "transformers==$tf_v"
  "$venv/bin/python" -m pip install -q -c "$constraints" -e "$REPO_ROOT[dev]"
  versions="$("$venv/bin/python" -c 'import platform, torch, transformers
print(f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")')"
  echo "$versions" | tee "$log"
  set +e
  (cd "$REPO_ROOT" && OMP_NUM_THREADS=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
     tests/test_audio_towers.py && OMP_NUM_THREADS=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
     -m "not slow" $PYTEST_ARGS) >>"$log" 2>&1
  code=$?
  set -e
  summary+=("$versions: $(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$log" | tail -1) (exit $code)")
done
echo
printf '%s\n' "${summary[@]}"
