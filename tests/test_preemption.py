"""Preemption (omni_grpo/preemption.py): SIGTERM / SIGINT stop every rank at a safe point with a
checkpoint and one line naming the command that resumes; that command, run as printed, continues the run exactly
(the loss and reward curves of an uninterrupted run, each step once in TensorBoard); a second signal stops at once;
a save that fails on one rank ends every rank with that rank's message.

Signals come from a driver (tests/preemption_driver.py) that fires them from inside a chosen phase of a chosen step
— to a rank itself, or to its launcher as a terminal's Ctrl-C or a scheduler would — or from this test process.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omni_grpo import checkpoint as ckpt
from omni_grpo.config import TrainConfig
from omni_grpo.logging import log_dir
from omni_grpo.preemption import COMMAND_ENV, REPEAT_WINDOW_S, resume_command, stop_on_signals
from tests.helpers import CLI_RUN, LENGTH, common, free_port, run_args, scalars, zero3_test_config

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "preemption_driver.py"
PREEMPTED = re.compile(r"^preempted \((SIG\w+)\) at step (\d+): saved (\S+); resume with: (.+)$")


def env() -> dict:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "OMNI_GRPO"))}
    out.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return out


def the_line(stderr: str, pattern: re.Pattern = PREEMPTED) -> re.Match:
    """The run's last line, which must match `pattern`; no traceback or launcher noise anywhere."""
    assert "Traceback" not in stderr and "ChildFailedError" not in stderr, stderr[-4000:]
    last = stderr.strip().splitlines()[-1]
    match = pattern.match(last)
    assert match, stderr[-4000:]
    assert sum(bool(pattern.match(line)) for line in stderr.splitlines()) == 1, stderr[-4000:]
    return match


# ------------------------------------------------------------------------------------------------ fast

SIGNALS_SCRIPT = """import os, signal, sys, time
from omni_grpo import preemption
with preemption.stop_on_signals("RESUME-CMD", 0):
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)  # the same signal again at once: a launcher forwarding it
    while not preemption.requested():
        time.sleep(0.01)
    child = os.fork()
    if child == 0:  # a forked data-loader worker: it ignores signals, its parent decides
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        os._exit(7)
    _, status = os.waitpid(child, 0)
    print("requested", preemption.requested(), "child", os.waitstatus_to_exitcode(status), flush=True)
    time.sleep(preemption.REPEAT_WINDOW_S)
    os.kill(os.getpid(), signal.SIGINT)  # a second signal: stop at once
    time.sleep(30)
print("not reached")
"""


def test_first_signal_sets_the_flag_a_second_stops_at_once():
    proc = subprocess.run([sys.executable, "-c", SIGNALS_SCRIPT], capture_output=True, text=True, timeout=60, env=env())
    assert proc.stdout.splitlines() == [f"requested {int(signal.SIGTERM)} child 7"], proc.stdout + proc.stderr
    assert proc.returncode == 128 + signal.SIGINT
    assert proc.stderr.strip().splitlines() == [
        "stopped at once by a second signal (SIGINT), without saving; resume from the newest checkpoint with: "
        "RESUME-CMD"
    ]


STUCK_SCRIPT = """import sys
import torch.distributed as dist
from omni_grpo import preemption
with preemption.stop_on_signals("RESUME-CMD", 0):
    print("ready", flush=True)
    dist.init_process_group("gloo", init_method=sys.argv[1], rank=0, world_size=2)  # rank 1 never comes
print("not reached")
"""


def test_a_second_signal_stops_a_process_stuck_in_a_collective():
    """The main thread waits inside gloo (C++), where no Python signal handler runs, as a rank whose peer is gone
    would: the second signal still ends it at once (the test's timeout would catch a hang)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_SCRIPT, f"tcp://127.0.0.1:{free_port()}"],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(2)  # into the C call
        proc.send_signal(signal.SIGTERM)
        time.sleep(REPEAT_WINDOW_S + 0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT and "not reached" not in out
    assert err.strip().splitlines()[-1].startswith("stopped at once by a second signal (SIGINT)")


def test_previous_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with stop_on_signals("x", 0):
        assert signal.getsignal(signal.SIGTERM) not in before
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_resume_command(monkeypatch):
    cfg = TrainConfig(model_name_or_path="m")
    monkeypatch.delenv(COMMAND_ENV, raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    argv = ["--config", "my config.yaml", "data=[a, b]"]
    assert resume_command(argv, cfg) == f"{sys.executable} -m omni_grpo.train --config 'my config.yaml' 'data=[a, b]'"
    monkeypatch.setenv(COMMAND_ENV, "MODEL=m\\ 1 bash run_scripts/stage4.sh lr=1 ")
    assert resume_command(argv, cfg) == "MODEL=m\\ 1 bash run_scripts/stage4.sh lr=1"
    # Told to start again, or to start from another checkpoint: continue from this run's own newest one instead.
    fresh = TrainConfig(model_name_or_path="m", overwrite_output_dir=True, resume_from_checkpoint="other/step-2")
    assert resume_command(argv, fresh) == (
        "MODEL=m\\ 1 bash run_scripts/stage4.sh lr=1 overwrite_output_dir=false resume_from_checkpoint=auto"
    )


FAKE_PY = """#!/usr/bin/env bash
if [[ "$1" == "-c" ]]; then echo "0 40123 cpu"; exit 0; fi  # the script's probe: GPUs, a free port
echo "$OMNI_GRPO_COMMAND" > "$SEEN"; exit 3
"""


def test_stage4_exports_the_command_as_typed(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PY)
    fake.chmod(0o755)
    run_env = {k: v for k, v in env().items() if k not in ("MODEL", "DATA", "OUTPUT_DIR", "NPROC", "DEMO_DIR")}
    run_env.update(PY=str(fake), SEEN=str(tmp_path / "seen"), MODEL="my model", DATA="d")
    script = os.path.relpath(REPO / "run_scripts" / "stage4.sh", tmp_path)
    proc = subprocess.run(
        ["bash", script, "learning_rate=1e-6", "data=[a b]"],
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr  # stopped at the fake --check
    assert (tmp_path / "seen").read_text().strip() == (
        f"PY={fake} MODEL=my\\ model DATA=d bash {script} learning_rate=1e-6 data=\\[a\\ b\\]"
    )


def test_sigterm_to_a_training_process_saves_and_prints_a_command_that_resumes(tiny_model_dir, tiny_shards, tmp_path):
    """A real SIGTERM from outside while `python -m omni_grpo.train` trains: exit code 143, one line; the printed
    command (with a nearer max_steps appended, else it would train its 1000 steps) resumes from that checkpoint."""
    out = tmp_path / "out"
    args = run_args(
        tiny_model_dir, tiny_shards, out, CLI_RUN, max_steps=1000, save_steps=0, reward_funcs=f"[format, {LENGTH}]"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "omni_grpo.train", *args], cwd=tmp_path, env=env(), stderr=subprocess.PIPE, text=False
    )
    seen = b""
    try:
        while b" 1/1000 " not in seen:  # the progress bar after the first step
            chunk = os.read(proc.stderr.fileno(), 65536)
            assert chunk, seen.decode(errors="replace")[-4000:]  # ended before its first step
            seen += chunk
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    stderr = (seen + rest).decode()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-4000:]
    name, step, saved, command = the_line(stderr).groups()
    step = int(step)
    assert name == "SIGTERM" and step >= 1
    assert [p.name for p in ckpt.list_checkpoints(out)] == [ckpt.step_name(step)]
    assert saved == str(out / "checkpoints" / ckpt.step_name(step))
    resumed = subprocess.run(
        f"{command} max_steps={step + 1}",
        shell=True,
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resumed from {saved} at step {step}" in resumed.stderr
    assert scalar_steps(out) == list(range(1, step + 2))  # each step once


def scalar_steps(out: Path, tag: str = "actor/loss") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir(out)))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


# ------------------------------------------------------------------------------------- 2 ranks, ZeRO-3


def run_tree(cmd, tmp: Path, shell: bool = False) -> subprocess.CompletedProcess:
    """`subprocess.run`, except that a hang (the test fails) also kills the ranks (they run in their own sessions)."""
    import psutil

    proc = subprocess.Popen(
        cmd, shell=shell, cwd=tmp, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def launch_driver(tmp: Path, plan: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    return run_tree(
        [
            sys.executable,
            "-m",
            "omni_grpo.launch",
            "--config_file",
            str(REPO / "configs/accelerate/zero3.yaml"),
            "--num_processes",
            "2",
            "--main_process_port",
            str(free_port()),
            str(DRIVER),
            str(plan),
            *overrides,
        ],
        tmp,
    )


def as_printed(tmp: Path, command: str) -> subprocess.CompletedProcess:
    return run_tree(command, tmp, shell=True)


@pytest.mark.slow
def test_zero3_preempted_in_each_phase_resumes_to_the_uninterrupted_curve(tiny_model_dir, mixed_shards, tmp_path):
    """2 ranks under ZeRO-3, 4 steps, a checkpoint every 2. One uninterrupted run; then one run stopped again and
    again, each time continued with the command its last line printed:
      1. SIGTERM to rank 1 alone during step 2's rollouts: both ranks stop, step 2 is abandoned, step 1 saved;
      2. Ctrl-C (SIGINT to the launcher, which sends it on) while step 2's checkpoint is written: that save
         finishes and is the one reported;
      3. SIGTERM to both ranks during step 3's update, and the write of step 3's checkpoint fails on rank 1 (disk
         full): both ranks end at once with rank 1's message (not at the process-group timeout; the test's
         timeout would catch a hang), the step-2 checkpoint intact;
      4. the command of 2 again: steps 3 and 4 to the end.
    Loss, reward and grad-norm curves equal the uninterrupted run's, TensorBoard shows each step once, and the
    final weights are the same."""
    ds = zero3_test_config(tmp_path / "zero3.json")
    ref = launch_driver(
        tmp_path,
        write_plan(tmp_path / "none.json", []),
        common(tiny_model_dir, mixed_shards, tmp_path / "ref", ds, steps=4),
    )
    assert ref.returncode == 0, ref.stderr[-4000:]

    out = tmp_path / "out"
    plan = write_plan(
        tmp_path / "plan.json",
        [
            {"phase": "rollout", "step": 2, "ranks": [1], "signal": "SIGTERM"},
            {"phase": "save", "step": 2, "ranks": [0], "signal": "SIGINT", "to": "launcher"},
            {"phase": "update", "step": 3, "ranks": [0, 1], "signal": "SIGTERM"},
            {"phase": "write", "step": 3, "ranks": [1]},
        ],
    )
    first = launch_driver(tmp_path, plan, common(tiny_model_dir, mixed_shards, out, ds, steps=4))
    assert first.returncode == 143, first.stderr[-4000:]
    name, step, saved, command = the_line(first.stderr).groups()
    assert (name, step, saved) == ("SIGTERM", "1", str(out / "checkpoints" / "step-0000001"))

    second = as_printed(tmp_path, command)
    assert second.returncode == 130, second.stderr[-4000:]
    assert "resumed from" in second.stderr and "at step 1" in second.stderr
    name, step, saved, command = the_line(second.stderr).groups()
    assert (name, step, saved) == ("SIGINT", "2", str(out / "checkpoints" / "step-0000002"))

    third = as_printed(tmp_path, command)
    assert third.returncode == 1, third.stderr[-4000:]
    failed = the_line(
        third.stderr,
        re.compile(
            r"^training stopped: saving the checkpoint of step 3 .* failed on "
            r"rank 1: OSError: \[Errno 28\] No space left on device .*$"
        ),
    )
    assert "resume_from_checkpoint=latest" in failed.group(0)
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000001", "step-0000002"]

    last = as_printed(tmp_path, command)
    assert last.returncode == 0, last.stderr[-4000:]
    assert "resumed from" in last.stderr and "at step 2" in last.stderr
    for tag in ("actor/loss", "reward/total", "actor/grad_norm"):
        assert scalars(out, tag) == scalars(tmp_path / "ref", tag), tag
    assert scalar_steps(out) == [1, 2, 3, 4]
    assert weights(out / "checkpoints" / "step-0000004") == weights(tmp_path / "ref" / "checkpoints" / "step-0000004")


def write_plan(path: Path, events: list[dict]) -> Path:
    path.write_text(json.dumps(events))
    return path


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {
        k: v.tolist() for f in sorted((folder / "model").glob("*.safetensors")) for k, v in load_file(str(f)).items()
    }


SLEEPER = """import time
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_launcher_stopped_by_a_signal_says_so_in_one_line(tmp_path):
    """SIGTERM to omni_grpo.launch whose ranks cannot save (they die of it): one line and 143, not elastic's log."""
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "omni_grpo.launch",
            "--config_file",
            "configs/accelerate/zero3.yaml",
            "--num_processes",
            "2",
            "--main_process_port",
            str(free_port()),
            str(script),
        ],
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = 0
        while ready < 2:  # both ranks started
            line = proc.stdout.readline()
            assert line, f"the launcher ended early (exit {proc.wait()}): {proc.stderr.read()[-3000:]}"
            ready += line == "ready\n"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines() == [
        "stopped by SIGTERM: no rank reported a checkpoint (not started yet, or killed "
        "after TORCH_ELASTIC_SHUTDOWN_TIMEOUT=300 s)"
    ], err
