"""Several nodes, as the README runs them (slow): two launches of `run_scripts/stage4.sh` on this machine, node
ranks 0 and 1 of one process each (`NNODES=2`, `MASTER_ADDR=127.0.0.1`, a shared port), train the same curve as
two processes on one node; and a node that dies ends the other within seconds with one line, never a hang. Also
a real run's `kill PID` of stage4.sh itself (a scheduler that signals the script alone)."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import common, free_port, scalars, zero3_test_config
from tests.test_run_scripts import LAUNCH_ENV

REPO = Path(__file__).resolve().parents[1]
STAGE4 = str(REPO / "run_scripts" / "stage4.sh")
pytestmark = pytest.mark.slow


def overrides(model_dir, shards, out, ds, steps: int) -> list[str]:
    """The tiny ZeRO-3 run of test_distributed on top of configs/stage4.yaml (what stage4.sh runs), in float32."""
    return [
        *common(model_dir, shards, out, ds, steps=steps),
        "bf16=false",
        "reward_weights=[1.0, 1.0]",
        "gradient_accumulation_steps=1",
        "save_steps=0",
    ]


def node(tmp: Path, args: list[str], **env) -> subprocess.Popen:
    """One `stage4.sh` in its own session (so that a test can kill the whole node)."""
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV and not k.startswith("PYTEST")}
    base.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MODEL="unused", DATA="unused", **env)
    return subprocess.Popen(
        ["bash", STAGE4, *args],
        cwd=tmp,
        env=base,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(procs: list[subprocess.Popen], timeout: int = 420) -> list[tuple[int, str]]:
    results = []
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=timeout)
            results.append((proc.returncode, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return results


def two_nodes(tmp: Path, args: list[str]) -> list[subprocess.Popen]:
    port = str(free_port())
    return [
        node(tmp, args, NNODES="2", NODE_RANK=str(rank), NPROC="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        for rank in (0, 1)
    ]


def test_two_nodes_train_the_curve_of_two_processes_on_one_node(tiny_model_dir, tiny_shards, tmp_path):
    ds = zero3_test_config(tmp_path / "zero3.json")
    [(code, err)] = finish([node(tmp_path, overrides(tiny_model_dir, tiny_shards, tmp_path / "one", ds, 3), NPROC="2")])
    assert code == 0, err[-4000:]
    results = finish(two_nodes(tmp_path, overrides(tiny_model_dir, tiny_shards, tmp_path / "two", ds, 3)))
    assert all(code == 0 for code, _ in results), [err[-3000:] for _, err in results]
    for tag in ("actor/loss", "reward/total", "actor/grad_norm", "actor/kl"):
        assert len(scalars(tmp_path / "one", tag)) == 3
        assert scalars(tmp_path / "two", tag) == scalars(tmp_path / "one", tag), tag


def test_a_node_that_dies_ends_the_other_with_one_line(tiny_model_dir, tiny_shards, tmp_path):
    """Node 1 killed outright (SIGKILL to each of its processes) after node 0's first step: node 0's rank sees its
    connection close and the run ends there within seconds, with one `training stopped:` line naming the cause
    and the command that resumes (not gloo's traceback, not a wait for the process-group timeout)."""
    import psutil

    ds = zero3_test_config(tmp_path / "zero3.json")
    first, second = two_nodes(tmp_path, overrides(tiny_model_dir, tiny_shards, tmp_path / "out", ds, 500))
    seen = ""
    try:
        while not re.search(r" [1-9]\d*/500 ", seen):  # node 0's progress bar after a step
            chunk = os.read(first.stderr.fileno(), 65536).decode(errors="replace")
            assert chunk, seen[-4000:]  # node 0 ended before its first step
            seen += chunk
        for proc in [*psutil.Process(second.pid).children(recursive=True), psutil.Process(second.pid)]:
            proc.kill()  # the whole node: its launcher and its rank (which runs in a session of its own)
        killed = time.monotonic()
        [(code, rest)] = finish([first], timeout=120)
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    elapsed = time.monotonic() - killed
    err = seen + rest
    assert code == 1 and elapsed < 60, (code, elapsed, err[-4000:])
    last = err.strip().splitlines()[-1]
    assert last.startswith("training stopped: rank 0 lost its connection to another rank (Connection "), last
    assert "resume with: " in last and "NODE_RANK=0" in last
    assert "Traceback" not in err and "internal error" not in err, err[-4000:]


def test_kill_of_the_scripts_own_pid_saves_and_leaves_no_process(tiny_model_dir, tiny_shards, tmp_path):
    """`kill PID` of a real `stage4.sh` run (2 ranks, one node): the launcher has that PID, so the ranks stop at the
    next safe point, save, and the run ends with the preemption line; no launcher or rank is left training."""
    import psutil

    ds = zero3_test_config(tmp_path / "zero3.json")
    proc = node(tmp_path, overrides(tiny_model_dir, tiny_shards, tmp_path / "out", ds, 500), NPROC="2")
    seen = ""
    try:
        while not re.search(r" [1-9]\d*/500 ", seen):
            chunk = os.read(proc.stderr.fileno(), 65536).decode(errors="replace")
            assert chunk, seen[-4000:]
            seen += chunk
        tree = [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))]
        os.kill(proc.pid, signal.SIGTERM)  # the script's own PID, not its process group
        [(code, rest)] = finish([proc], timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = seen + rest
    assert code == 143, err[-4000:]
    assert re.match(r"preempted \(SIGTERM\) at step \d+: saved \S+; resume with: ", err.strip().splitlines()[-1])
    time.sleep(1)
    left = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left running: {left}"
