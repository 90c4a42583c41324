"""Run scripts: they parse, hold no absolute path, pass "$@" through, and stage4.sh builds the right launch command
(checked with a stand-in `PY` that records its arguments instead of training). Also the configs they run."""

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "run_scripts").glob("*.sh"))
ENTRY = [s for s in SCRIPTS if not s.name.startswith("_")]  # `_env.sh` is sourced, not run
FIXED_ARGS = {"demo_setup.sh"}  # takes one folder, passes nothing on
OWN_CWD = {"python.sh", "tensorboard.sh"}  # paths are relative to where the user runs them, as with plain python
# A path that starts at the root: "/" at the start of a word (not `$dir/x`, `$(...)/x` or a URL's `//`).
ABSOLUTE = re.compile(r"(?:^|[\s'\"=:(])/(?!dev/null\b)[\w.~-]")
LAUNCH_ENV = ("MODEL", "DATA", "OUTPUT_DIR", "DEMO_DIR", "NPROC", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


def test_scripts_exist():
    assert {"stage4.sh", "test.sh", "_env.sh", "demo_setup.sh", "python.sh", "tensorboard.sh"} <= {s.name for s in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_absolute_path_pattern():
    root = "/"  # the detector's own positives, put together here so that no absolute path sits in the source
    for bad in (f"cd {root}work/x", f'PY="{root}usr/bin/python3"', f"x={root}data/shards", f"a:{root}opt/b",
                f"$({root}bin/ls)"):
        assert ABSOLUTE.search(bad), bad
    for ok in ('"$REPO_ROOT/.venv/bin/python"', '"$(dirname "$0")/_env.sh"', "2>/dev/null", "outputs/demo/run",
               "https://example.org/x"):
        assert not ABSOLUTE.search(ok), ok


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_absolute_paths(script):
    lines = script.read_text().splitlines()
    found = [(i + 1, line) for i, line in enumerate(lines) if not line.startswith("#!") and ABSOLUTE.search(line)]
    assert not found, f"absolute paths in {script.name}: {found}"


@pytest.mark.parametrize("script", ENTRY, ids=lambda p: p.name)
def test_entry_scripts_are_short_and_pass_arguments_through(script):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert 'source "$(dirname "$0")/_env.sh"' in text
    assert ('cd "$REPO_ROOT"' in text) != (script.name in OWN_CWD)
    assert ('"$@"' in text or '"${@:2}"' in text) != (script.name in FIXED_ARGS)
    assert len(text.splitlines()) <= 25
    assert "&& ((" not in text and ") ||" not in text  # no `a && b || c` puzzles: if/else or $((c ? a : b))


# ------------------------------------------------------------------------------------- stage4.sh, recorded

FAKE_PY = """#!/usr/bin/env bash
# Stands in for Python: answers the script's probe (device count, free port), records every other call.
if [[ "$1" == "-c" ]]; then echo "$FAKE_DEVICES 40123"; exit 0; fi
echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset} $*" >> "$FAKE_LOG"
if [[ "$*" == *" --check "* ]]; then exit "${FAKE_CHECK_RC:-0}"; fi
"""


def stage4(tmp_path, *args, devices=2, **env):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PY)
    fake.chmod(0o755)
    log = tmp_path / "calls.txt"
    log.write_text("")
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    base.update(PY=str(fake), FAKE_LOG=str(log), FAKE_DEVICES=str(devices), **env)
    proc = subprocess.run(["bash", str(REPO / "run_scripts" / "stage4.sh"), *args], cwd=tmp_path, env=base,
                          capture_output=True, text=True, timeout=60)
    return proc, log.read_text().splitlines()


def launch_args(calls):
    launches = [c for c in calls if "-m omni_grpo.launch " in c]
    assert len(launches) == 1, calls
    words = launches[0].split()
    return launches[0], dict(zip(words, words[1:]))  # each --flag to the word after it


def test_stage4_real_run_single_node(tmp_path):
    proc, calls = stage4(tmp_path, "learning_rate=5e-7", devices=4, MODEL="ckpt/omni", DATA="shards/a,shards/b")
    assert proc.returncode == 0, proc.stderr
    line, flags = launch_args(calls)
    assert flags["--config_file"] == "configs/accelerate/zero3.yaml"
    assert flags["--num_processes"] == "4" and flags["--num_machines"] == "1" and flags["--machine_rank"] == "0"
    assert flags["--main_process_port"] == "40123"  # a free port, so parallel runs do not collide
    assert line.endswith("-m omni_grpo.train --config configs/stage4.yaml model_name_or_path=ckpt/omni "
                         "data=[shards/a,shards/b] output_dir=outputs/stage4 learning_rate=5e-7")
    assert "CUDA_VISIBLE_DEVICES=unset" in line
    assert "bash run_scripts/tensorboard.sh outputs/stage4/runs" in proc.stdout
    # The config and the paths are checked once, with the same arguments, before any rank starts.
    checks = [i for i, c in enumerate(calls) if " -m omni_grpo.train --check " in c]
    assert len(checks) == 1 and checks[0] < calls.index(line)
    assert calls[checks[0]].split(" --check ")[1] == line.split(" -m omni_grpo.train ")[1]


def test_stage4_stops_when_the_check_fails(tmp_path):
    proc, calls = stage4(tmp_path, MODEL="m", DATA="d", FAKE_CHECK_RC="2")
    assert proc.returncode == 2 and not any("omni_grpo.launch" in c for c in calls)


def test_stage4_multi_node(tmp_path):
    proc, calls = stage4(tmp_path, "output_dir=runs/x", MODEL="m", DATA="d", NPROC="8", NNODES="2", NODE_RANK="1",
                         MASTER_ADDR="10.0.0.1")
    assert proc.returncode == 0, proc.stderr
    _, flags = launch_args(calls)
    assert flags["--num_processes"] == "16" and flags["--num_machines"] == "2" and flags["--machine_rank"] == "1"
    assert flags["--main_process_ip"] == "10.0.0.1"
    assert flags["--main_process_port"] == "29500"  # every node must agree; a random free port would not
    assert flags["--deepspeed_multinode_launcher"] == "standard"
    assert "tensorboard.sh runs/x/runs" in proc.stdout  # the last output_dir wins, as in the config


def test_stage4_master_port_wins(tmp_path):
    for nodes in ("1", "2"):
        proc, calls = stage4(tmp_path, MODEL="m", DATA="d", NNODES=nodes, MASTER_PORT="31000")
        assert proc.returncode == 0, proc.stderr
        assert launch_args(calls)[1]["--main_process_port"] == "31000"


def test_stage4_needs_model_and_data_together(tmp_path):
    proc, calls = stage4(tmp_path, MODEL="m")
    assert proc.returncode != 0 and "DATA=SHARDS" in proc.stderr and calls == []


def test_stage4_default_is_the_cpu_demo(tmp_path):
    proc, calls = stage4(tmp_path, "max_steps=2", DEMO_DIR="demo")
    assert proc.returncode == 0, proc.stderr
    assert any("-m omni_grpo.tiny_models model demo/base" in c for c in calls)
    assert any("-m omni_grpo.demo data demo/clips" in c for c in calls)
    assert any("-m preprocess --source jsonl --manifest demo/clips/manifest.jsonl --output demo/shards" in c for c in calls)
    assert any("-m omni_grpo.demo warmup --model demo/base --data demo/shards --output demo/model" in c for c in calls)
    line, flags = launch_args(calls)
    assert line.startswith("CUDA_VISIBLE_DEVICES= ") and flags["--num_processes"] == "2"
    assert line.endswith("--config configs/demo.yaml model_name_or_path=demo/model data=[demo/shards] "
                         "eval_data=[demo/shards] output_dir=demo/run max_steps=2")
    assert "bash run_scripts/tensorboard.sh demo/run/runs" in proc.stdout


def test_stage4_demo_reuses_what_exists(tmp_path):
    demo = tmp_path / "demo"
    for path in ("base/config.json", "clips/manifest.jsonl", "model/config.json"):
        (demo / path).parent.mkdir(parents=True, exist_ok=True)
        (demo / path).write_text("{}")
    # The script runs from the repository root, so DEMO_DIR is absolute here.
    proc, calls = stage4(tmp_path, DEMO_DIR=str(demo))
    assert proc.returncode == 0, proc.stderr
    assert not any("omni_grpo.tiny_models" in c or "omni_grpo.demo data" in c for c in calls)
    assert any("-m preprocess" in c for c in calls)  # no manifest.json: not finished, so run (it resumes)
    assert any("omni_grpo.demo warmup" in c for c in calls)  # a model without warm_up.json is not the fitted one
    (demo / "shards").mkdir()
    (demo / "shards" / "manifest.json").write_text("{}")
    (demo / "model" / "warm_up.json").write_text("{}")
    proc, calls = stage4(tmp_path, DEMO_DIR=str(demo))
    assert proc.returncode == 0 and launch_args(calls)
    assert not any("-m preprocess" in c or "omni_grpo.demo" in c for c in calls)


# ------------------------------------------------------------------------------------------------- configs


def test_stage4_config_is_the_recipe():
    from omni_grpo.config import load_config

    text = (REPO / "configs" / "stage4.yaml").read_text()
    assert "bash run_scripts/stage4.sh" in text.split("\n\n")[0]  # the header says how to run it
    cfg = load_config(REPO / "configs" / "stage4.yaml")
    assert cfg.use_audio_in_video and cfg.bf16 and cfg.gradient_checkpointing
    assert cfg.freeze_vision_tower and cfg.freeze_audio_tower
    assert cfg.reward_funcs == ["format", "accuracy", "people_focus"]
    assert cfg.num_generations == 8 and cfg.per_device_prompts == 1 and cfg.gradient_accumulation_steps == 12
    assert cfg.max_prompt_length == 2048 and cfg.max_completion_length == 1024
    assert cfg.kl_estimator == "k3" and cfg.beta_schedule == "linear" and (cfg.beta, cfg.beta_final) == (0.04, 0.0)
    assert cfg.deepspeed == "configs/deepspeed/zero3.json" and (REPO / cfg.deepspeed).is_file()


def test_demo_config_is_small():
    """Minutes on 2 CPU cores (tests/test_demo_learns.py checks that it learns)."""
    from omni_grpo.config import load_config

    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.num_generations * cfg.per_device_prompts <= 32 and 16 <= cfg.max_completion_length <= 32
    assert cfg.max_steps <= 100 and cfg.max_prompt_length <= 1024
    assert cfg.dataloader_num_workers <= 1 and cfg.logging_steps == 1
    assert 0 < cfg.save_steps <= cfg.max_steps


# ------------------------------------------------------------------------------------------------------ lint


def test_lint_runs_in_ci_with_one_ruff_pin_and_the_house_settings():
    """CI runs lint.sh; lint.sh and the pre-commit hooks install the same ruff; ruff.toml holds the line length
    and the rule sets (import order included)."""
    import tomllib

    import yaml

    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert any(line.startswith("bash run_scripts/lint.sh") for line in ci)
    pin = re.search(r"^RUFF_VERSION=(\S+)", (REPO / "run_scripts" / "lint.sh").read_text(), re.M).group(1)
    hooks = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    assert {h["id"] for h in hooks} == {"ruff-check", "ruff-format"}
    assert all(h["additional_dependencies"] == [f"ruff=={pin}"] for h in hooks)
    settings = tomllib.loads((REPO / "ruff.toml").read_text())
    assert settings["line-length"] == 120 and {"E", "F", "W", "I"} <= set(settings["lint"]["select"])
