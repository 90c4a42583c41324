"""Run scripts: they parse, hold no absolute path, pass "$@" through, and stage4.sh builds the right launch command
(checked with a stand-in `PY` that records its arguments instead of training). Also the configs they run."""

import os
import re
import signal
import subprocess
import time
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
    names = {s.name for s in SCRIPTS}
    assert {"stage4.sh", "test.sh", "_env.sh", "demo_setup.sh", "python.sh", "tensorboard.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_absolute_path_pattern():
    root = "/"  # the detector's own positives, put together here so that no absolute path sits in the source
    for bad in (
        f"cd {root}work/x",
        f'PY="{root}usr/bin/python3"',
        f"x={root}data/shards",
        f"a:{root}opt/b",
        f"$({root}bin/ls)",
    ):
        assert ABSOLUTE.search(bad), bad
    for ok in (
        '"$REPO_ROOT/.venv/bin/python"',
        '"$(dirname "$0")/_env.sh"',
        "2>/dev/null",
        "outputs/demo/run",
        "https://example.org/x",
    ):
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
if [[ "$1" == "-c" ]]; then  # as torch would: CUDA_VISIBLE_DEVICES="" hides every GPU
  n="$FAKE_DEVICES" && if [[ -n "${CUDA_VISIBLE_DEVICES-x}" ]]; then :; else n=0; fi
  if [[ "$n" == 0 ]]; then echo "0 40123 cpu"; else echo "$n 40123 cuda"; fi; exit 0
fi
echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset} DS_ACCELERATOR=${DS_ACCELERATOR-unset} $*" >> "$FAKE_LOG"
echo "a/path/it/wrote"  # what the demo's builders print
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
    proc = subprocess.run(
        ["bash", str(REPO / "run_scripts" / "stage4.sh"), *args],
        cwd=tmp_path,
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
    )
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
    assert line.endswith(
        "-m omni_grpo.train --config configs/stage4.yaml model_name_or_path=ckpt/omni "
        "data=[shards/a,shards/b] output_dir=outputs/stage4 learning_rate=5e-7"
    )
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
    proc, calls = stage4(
        tmp_path, "output_dir=runs/x", MODEL="m", DATA="d", NPROC="8", NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1"
    )
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


@pytest.mark.parametrize("given", [{"MODEL": "m"}, {"DATA": "d"}, {"OUTPUT_DIR": "o"}])
def test_stage4_needs_model_and_data_together(tmp_path, given):
    proc, calls = stage4(tmp_path, **given)
    assert proc.returncode == 2 and calls == []
    assert proc.stderr.splitlines() == [
        "config error: set MODEL=DIR and DATA=SHARDS together (neither: the built-in demo)"
    ]  # no bash error


FAKE_LAUNCHER = """#!/usr/bin/env bash
# Stands in for Python: the probe and --check pass; the launcher trains until a signal, then prints its line.
if [[ "$1" == "-c" ]]; then echo "0 40123"; exit 0; fi
if [[ "$*" == *" --check "* ]]; then exit 0; fi
echo "$*" > "$FAKE_PID.args"
trap 'sleep 1; echo "preempted (SIGTERM) at step 3: saved x; resume with: y" >&2; exit 143' TERM
trap 'echo "preempted (SIGINT) at step 3: saved x; resume with: y" >&2; exit 130' INT
echo $$ > "$FAKE_PID"  # after the traps: a signal sent once this file exists is caught
for _ in $(seq 600); do sleep 0.1; done
"""


def _default_signals() -> None:
    """In the started script: SIGINT and SIGTERM at their defaults, as a terminal or a scheduler starts it. A test
    run started in the background (`cmd &`) ignores SIGINT, which its children inherit, and bash cannot trap a
    signal that was ignored when it started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def signal_a_run(
    tmp_path, cmd: list[str], sig: signal.Signals, to_launcher: bool = False, stand_in: str = FAKE_LAUNCHER, **extra
):
    """Run `cmd` (a script that ends in stage4.sh) with `stand_in` as Python (by default the stand-in launcher,
    on MODEL=m DATA=d); once the stand-in has written its PID, send `sig` to the script's own PID (or to the
    stand-in's); return (exit code, stderr, the launcher's arguments or "", PIDs left)."""
    import psutil

    fake = tmp_path / "python"
    fake.write_text(stand_in)
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env.update(PY=str(fake), FAKE_PID=str(tmp_path / "pid"))
    env.update({"MODEL": "m", "DATA": "d"} if stand_in == FAKE_LAUNCHER else {}, **extra)
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_default_signals,
    )
    try:
        for _ in range(300):
            if (tmp_path / "pid").is_file() and (tmp_path / "pid").read_text().strip():
                break
            time.sleep(0.1)
        launcher = int((tmp_path / "pid").read_text())
        time.sleep(0.3)
        tree = [proc.pid, launcher, *(p.pid for p in psutil.Process(launcher).children(recursive=True))]
        os.kill(launcher if to_launcher else proc.pid, sig)
        _, err = proc.communicate(timeout=30)
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    time.sleep(0.5)
    left = [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    args = tmp_path / "pid.args"
    return proc.returncode, err, args.read_text() if args.is_file() else "", left


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_to_the_scripts_own_pid_reaches_the_launcher(tmp_path, sig):
    """`kill PID` of stage4.sh (a scheduler, or a user who knows only that PID): the launcher gets the signal, its
    preemption line comes out and the script ends with its exit code, leaving no process behind."""
    code, err, _, left = signal_a_run(tmp_path, ["bash", str(REPO / "run_scripts" / "stage4.sh")], sig)
    assert code == 128 + sig, err
    assert err.strip().splitlines()[-1].startswith(f"preempted ({sig.name}) at step 3"), err
    assert not left, f"processes left running: {left}"


SLOW_SET_UP = """#!/usr/bin/env bash
# Stands in for Python: the demo set-up's first builder runs until a signal
if [[ "$*" == *tiny_models* ]]; then echo $$ > "$FAKE_PID"; for _ in $(seq 600); do sleep 0.1; done; fi
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_during_the_demo_set_up_ends_the_set_up_too(tmp_path, sig):
    """`kill PID` of stage4.sh while the built-in demo is still being set up (minutes on a first run): the
    script ends with the signal's code and leaves no set-up step running behind it."""
    stage4 = ["bash", str(REPO / "run_scripts" / "stage4.sh")]
    code, err, _, left = signal_a_run(tmp_path, stage4, sig, stand_in=SLOW_SET_UP, DEMO_DIR=str(tmp_path / "demo"))
    assert code == 128 + sig, err
    assert not left, f"the demo set-up kept running after its script was stopped: {left}"


# --------------------------------------------------------------------------------------- SLURM batch templates

TEMPLATES = sorted((REPO / "run_scripts").glob("*.sbatch"))


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_slurm_templates_parse_and_hold_no_absolute_path(template):
    assert subprocess.run(["bash", "-n", str(template)], capture_output=True).returncode == 0
    text = template.read_text()
    assert not [line for line in text.splitlines() if not line.startswith("#") and ABSOLUTE.search(line)]
    assert "--signal=" in text and "run_scripts/stage4.sh" in text and '"$@"' in text


def test_slurm_one_node_passes_the_schedulers_sigterm_to_the_launcher(tmp_path):
    """`--signal=B:TERM@…` signals the batch script alone: it must reach the launcher (exec all the way)."""
    code, err, _, left = signal_a_run(
        tmp_path,
        ["bash", str(REPO / "run_scripts" / "slurm_one_node.sbatch")],
        signal.SIGTERM,
        SLURM_SUBMIT_DIR=str(REPO),
    )
    assert code == 143 and err.strip().splitlines()[-1].startswith("preempted (SIGTERM) at step 3"), err
    assert not left, f"processes left running: {left}"


SRUN = """#!/usr/bin/env bash
# srun stand-in: drops its options and runs the task here as node 1 of the job
while [[ "$1" == --* ]]; do shift; done
SLURM_NODEID=1 exec "$@"
"""


def test_slurm_nodes_runs_one_stage4_per_node_and_passes_sigterm(tmp_path):
    """srun starts stage4.sh as node SLURM_NODEID, node 0's host as the rendezvous, a fixed port; SLURM's SIGTERM
    to the step's processes (the launcher) ends in the preemption line and the job ends."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", "#!/usr/bin/env bash\nprintf 'gpu-a\\ngpu-b\\n'\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    code, err, args, left = signal_a_run(
        tmp_path,
        ["bash", str(REPO / "run_scripts" / "slurm_nodes.sbatch"), "learning_rate=1e-6"],
        signal.SIGTERM,
        to_launcher=True,
        SLURM_SUBMIT_DIR=str(REPO),
        SLURM_JOB_NUM_NODES="2",
        SLURM_JOB_NODELIST="gpu-[a-b]",
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    )
    assert code == 143 and err.strip().splitlines()[-1].startswith("preempted (SIGTERM) at step 3"), err
    assert not left, f"processes left running: {left}"
    words = args.split()
    flags = dict(zip(words, words[1:]))
    assert (flags["--num_machines"], flags["--machine_rank"]) == ("2", "1")
    assert (flags["--main_process_ip"], flags["--main_process_port"]) == ("gpu-a", "29500"), (args, err)
    assert args.rstrip().endswith("learning_rate=1e-6")


def test_stage4_default_is_the_cpu_demo(tmp_path):
    proc, calls = stage4(tmp_path, "max_steps=2", DEMO_DIR="demo")
    assert proc.returncode == 0, proc.stderr
    assert any("-m omni_grpo.tiny_models model demo/base" in c for c in calls)
    assert any("-m omni_grpo.demo data demo/clips" in c for c in calls)
    preprocess = "-m preprocess --source jsonl --manifest demo/clips/manifest.jsonl --output demo/shards"
    assert any(preprocess in c for c in calls)
    assert any("-m omni_grpo.demo warmup --model demo/base --data demo/shards --output demo/model" in c for c in calls)
    line, flags = launch_args(calls)
    assert line.startswith("CUDA_VISIBLE_DEVICES= ") and flags["--num_processes"] == "2"
    assert line.endswith(
        "--config configs/demo.yaml model_name_or_path=demo/model data=[demo/shards] "
        "eval_data=[demo/shards] eval_steps=60 output_dir=demo/run max_steps=2"
    )
    assert "bash run_scripts/tensorboard.sh demo/run/runs" in proc.stdout


def test_stage4_demo_says_one_line_per_stage(tmp_path):
    proc, calls = stage4(tmp_path, DEMO_DIR="demo")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "demo set-up: a random tiny thinker in demo/base",
        "demo set-up: 32 colour/tone clips in demo/clips",
        "demo set-up: their frames and audio in demo/shards",
        "demo set-up: the reply format (never the answers) fitted, into demo/model",
    ]
    assert (
        "starting 2 processes on 1 node(s), each loading the model; TensorBoard (its Custom Scalars tab first):"
        in proc.stdout.splitlines()
    )
    assert proc.stdout.count("a/path/it/wrote") == 2  # the --check's and the launcher's, not the builders'
    # On a machine without GPUs DeepSpeed is told the accelerator instead of warning that it guessed it.
    assert all(" DS_ACCELERATOR=cpu " in c for c in calls if "omni_grpo.launch" in c or "--check" in c), calls
    _, real = stage4(tmp_path, devices=4, MODEL="m", DATA="d")
    assert all(" DS_ACCELERATOR=cuda " in c for c in real if "omni_grpo.launch" in c or "--check" in c), real


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


def test_outputs_and_shards_are_ignored_by_git():
    """What the README's commands write at the repository root (outputs/, shards/) never shows in `git status`."""
    paths = ["outputs/demo/run/config.yaml", "shards/siq2_train/manifest.json"]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True)
    assert proc.stdout.split() == paths, proc.stdout + proc.stderr


FAKE_VENV_PY = """#!/usr/bin/env bash
# Stands in for the new venv's Python: pip prints what setuptools and pip print on a first install.
echo "$*" >> "$(dirname "$0")/calls"
printf 'SetuptoolsDeprecationWarning: ...\\n!!\\n  ****\\n  Please avoid running setup.py directly\\n' >&2
echo "Successfully installed omni-grpo"
if [[ "$*" == *"$FAIL_ON"* ]]; then echo "ERROR: no matching distribution" >&2; exit 1; fi
"""


def first_install(tmp_path, fail_on: str = "never"):
    """Source a copy of _env.sh in a fresh checkout whose ./.venv Python is a stand-in (no real install)."""
    (tmp_path / "run_scripts").mkdir()
    (tmp_path / "run_scripts" / "_env.sh").write_text((REPO / "run_scripts" / "_env.sh").read_text())
    (tmp_path / "setup.py").write_text("setup()\n")
    venv_py = tmp_path / ".venv" / "bin" / "python"
    venv_py.parent.mkdir(parents=True)
    venv_py.write_text(FAKE_VENV_PY)
    venv_py.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PY", "PYTHONPATH")}
    env["FAIL_ON"] = fail_on
    proc = subprocess.run(
        ["bash", "-c", 'source run_scripts/_env.sh && echo "PY=$PY"'],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, (tmp_path / ".venv" / "bin" / "calls").read_text().splitlines()


def test_first_install_is_one_line_and_its_noise_goes_to_a_log(tmp_path):
    proc, calls = first_install(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"setting up {tmp_path}/.venv (first run: a few minutes; pip's output in {tmp_path}/.venv/install.log)"
    ]
    assert proc.stdout.splitlines() == [f"PY={tmp_path}/.venv/bin/python"]
    assert [c.split()[4] for c in calls] == ["--upgrade", "torch==2.14.1", "-e"]  # torch first, then the package
    assert "SetuptoolsDeprecationWarning" in (tmp_path / ".venv" / "install.log").read_text()


def test_a_failed_install_shows_its_output_and_stops(tmp_path):
    proc, calls = first_install(tmp_path, fail_on="torch==")
    assert proc.returncode == 1 and "PY=" not in proc.stdout
    assert "ERROR: no matching distribution" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("setup failed: pip install torch==2.14.1 torchvision==0.29.1")
    assert len(calls) == 2  # the package is not installed over a failed torch


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
