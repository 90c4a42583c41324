# Sourced by the run scripts: sets PY to a Python that has omni-grpo and its dependencies installed.
# Uses $PY if given; else ./.venv (created and installed on first use, re-installed when setup.py changes);
# else the current python3 when it already has everything. Torch is pinned first so pip takes the local
# CPU/CUDA wheel instead of resolving a newer one.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_PIN="${TORCH_PIN:-torch==2.14.1 torchvision==0.29.1}"
if [[ -z "${PY:-}" ]]; then
  if [[ ! -x "$REPO_ROOT/.venv/bin/python" ]] && python3 -c "import omni_grpo, deepspeed, qwen_omni_utils, peft" 2>/dev/null \
     && [[ "$(python3 -c 'import omni_grpo, os; print(os.path.dirname(os.path.dirname(omni_grpo.__file__)))')" == "$REPO_ROOT" ]]; then
    PY=python3
  else
    PY="$REPO_ROOT/.venv/bin/python"
    stamp="$REPO_ROOT/.venv/.omni-grpo-installed"
    want="$(cat "$REPO_ROOT/setup.py" | sha256sum | cut -c1-16)"
    if [[ ! -x "$PY" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
      log="$REPO_ROOT/.venv/install.log"  # pip's and setuptools' output; shown only when a step fails
      echo "setting up $REPO_ROOT/.venv (first run: a few minutes; pip's output in $log)" >&2
      [[ -x "$PY" ]] || python3 -m venv "$REPO_ROOT/.venv" || exit 1
      pip_install() {
        "$PY" -m pip install -q "$@" >>"$log" 2>&1 && return 0
        tail -n 25 "$log" >&2; echo "setup failed: pip install $* (its whole output: $log)" >&2; exit 1
      }
      pip_install --upgrade pip
      # shellcheck disable=SC2086
      pip_install $TORCH_PIN
      pip_install -e "$REPO_ROOT[dev]"
      echo "$want" > "$stamp"
    fi
  fi
fi
export PY
