"""Re-running into an existing output_dir (omni_grpo/run_control.py): `auto` resumes this config's run, refuses a
different run with one line, `overwrite_output_dir=true` moves the old run aside; TensorBoard shows each step once."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from omni_grpo.config import ConfigError, TrainConfig, save_config
from omni_grpo.logging import log_dir
from omni_grpo.run_control import decide_resume, move_old_run
from tests.helpers import CLI_RUN, LENGTH, run_args

REPO = Path(__file__).resolve().parents[1]


def C(**kw):
    return TrainConfig(model_name_or_path="m", **kw)


def fake_checkpoint(out: Path, step: int, cfg) -> Path:
    folder = out / "checkpoints" / f"step-{step:07d}"
    folder.mkdir(parents=True)
    save_config(cfg, folder / "config.yaml")
    (folder / "COMPLETE").write_text("")
    return folder


def test_auto_resumes_this_config_and_refuses_another(tmp_path):
    out = tmp_path / "out"
    cfg = C(output_dir=str(out), learning_rate=1e-5)
    assert decide_resume(cfg) is None  # a new folder: start at step 0
    fake_checkpoint(out, 1, cfg)
    newest = fake_checkpoint(out, 2, cfg)
    assert decide_resume(cfg) == newest
    # Keys that do not change what a step computes may differ: a longer run, other logging and saving.
    longer = C(output_dir=str(out), learning_rate=1e-5, max_steps=99, save_steps=7, logging_steps=3)
    assert decide_resume(longer) == newest
    other = C(output_dir=str(out), learning_rate=2e-5, seed=5)
    with pytest.raises(ConfigError) as refused:
        decide_resume(other)
    line = str(refused.value)
    assert "\n" not in line and "holds a different run (learning_rate, seed differ" in line
    assert "new output_dir=DIR" in line and "overwrite_output_dir=true" in line
    with pytest.raises(ConfigError, match=r"holds a different run \(seed differs from "):
        decide_resume(C(output_dir=str(out), learning_rate=1e-5, seed=5))  # one key: the verb agrees
    assert decide_resume(C(output_dir=str(out), learning_rate=2e-5, overwrite_output_dir=True)) is None
    assert decide_resume(C(output_dir=str(out), resume_from_checkpoint="latest")) == newest


def test_null_never_resumes_and_refuses_a_folder_with_checkpoints(tmp_path):
    out = tmp_path / "out"
    cfg = C(output_dir=str(out), resume_from_checkpoint=None)
    assert decide_resume(cfg) is None
    fake_checkpoint(out, 1, cfg)
    with pytest.raises(ConfigError, match="holds checkpoints .* overwrite_output_dir=true"):
        decide_resume(cfg)


def test_a_folder_whose_run_never_saved_is_refused_only_for_another_config(tmp_path):
    out = tmp_path / "out"
    save_config(C(output_dir=str(out)), out / "config.yaml")
    assert decide_resume(C(output_dir=str(out))) is None
    with pytest.raises(ConfigError, match="beta differ"):
        decide_resume(C(output_dir=str(out), beta=0.5))


def test_overwrite_moves_the_old_run_aside(tmp_path):
    out = tmp_path / "out"
    fake_checkpoint(out, 1, C(output_dir=str(out)))
    (out / "runs").mkdir()
    (out / "runs" / "events").write_text("x")
    (out / "notes.txt").write_text("mine")
    moved = move_old_run(out)
    assert moved.parent == out and moved.name.startswith("overwritten-")
    assert (moved / "checkpoints" / "step-0000001" / "COMPLETE").exists() and (moved / "runs" / "events").exists()
    assert not (out / "checkpoints").exists() and not (out / "runs").exists() and (out / "notes.txt").exists()


def _train(tmp_path: Path, out: Path, *extra: str, check: bool = False) -> subprocess.CompletedProcess:
    args = run_args(
        os.environ["_MODEL"], os.environ["_DATA"], out, CLI_RUN, save_steps=1, reward_funcs=f"[format, {LENGTH}]"
    )
    cmd = [sys.executable, "-m", "omni_grpo.train", *args, *extra, *(["--check"] if check else [])]
    return subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)}
    )


def _steps(runs: Path, tag: str = "actor/loss") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(runs))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


@pytest.mark.slow  # five real runs (about 2-3 min on 2 cores)
def test_rerunning_the_same_command_resumes_and_tensorboard_shows_each_step_once(
    tmp_path, tiny_model_dir, tiny_shards, monkeypatch
):
    monkeypatch.setenv("_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("_DATA", str(tiny_shards))
    out = tmp_path / "out"
    first = _train(tmp_path, out)  # 2 steps
    assert first.returncode == 0, first.stderr
    # Leave a torn tail as a kill after step 2 would (steps 3 logged, never saved): the resumed run relogs step 3.
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir(out))) as torn:
        torn.add_scalar("actor/loss", 123.0, 3)
    again = _train(tmp_path, out, "max_steps=4")
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stderr and "at step 2" in again.stderr and "done: 4 steps" in again.stderr
    assert _steps(log_dir(out)) == [1, 2, 3, 4]
    # A different run into the same folder: one line, in --check too (before any rank would launch).
    for check in (True, False):
        other = _train(tmp_path, out, "max_steps=4", "learning_rate=0.5", check=check)
        lines = other.stderr.strip().splitlines()
        assert other.returncode == 2 and len(lines) == 1, other.stderr
        assert lines[0].startswith("config error:") and "learning_rate differ" in lines[0]
    fresh = _train(tmp_path, out, "learning_rate=0.5", "overwrite_output_dir=true")
    assert fresh.returncode == 0, fresh.stderr
    assert "resumed from" not in fresh.stderr and "done: 2 steps" in fresh.stderr
    assert _steps(log_dir(out)) == [1, 2] and len(list(out.glob("overwritten-*/checkpoints/step-*"))) == 2
