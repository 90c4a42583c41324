"""How a command-line process starts: a Python without the project's dependencies (not the project's venv) gets one
line that says to use `bash run_scripts/python.sh` or to install the project, never a traceback or "a bug in
omni-grpo"; and one process trains with one torch thread unless OMP_NUM_THREADS is set."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from omni_grpo.logging import missing_dependency

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "omni_grpo.train": ["--config", "configs/demo.yaml"],
    "preprocess": ["--source", "jsonl", "--manifest", "m.jsonl", "--output", "out"],
    "omni_grpo.launch": ["--num_processes", "2", "-m", "omni_grpo.train"],
}


@pytest.mark.parametrize("module", COMMANDS)
def test_a_python_without_the_dependencies_gets_one_line(module, tmp_path):
    """`python -S`: this interpreter without its site-packages (no torch, numpy, yaml), the repository on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "OMNI_GRPO"))}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-S", "-m", module, *COMMANDS[module]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("setup error: this Python"), proc.stderr
    assert f"bash run_scripts/python.sh -m {module} " in lines[0] and "pip install -e ." in lines[0]
    assert "bug" not in lines[0]


def test_a_missing_module_of_the_project_is_still_a_bug():
    assert missing_dependency(ModuleNotFoundError("x", name="omni_grpo.gone"), "omni_grpo.train") is None
    assert missing_dependency(ModuleNotFoundError("x", name="preprocess.gone"), "preprocess") is None
    assert missing_dependency(ValueError("x"), "preprocess") is None
    assert "'deepspeed'" in missing_dependency(ModuleNotFoundError("x", name="deepspeed.ops"), "omni_grpo.train")


def test_one_process_runs_one_torch_thread_unless_told(tmp_path):
    """torch's default (a thread per core) made a one-process run 10-30x slower on a shared CPU; torchrun gives each
    rank OMP_NUM_THREADS=1 and `python -m omni_grpo.train` does the same, unless OMP_NUM_THREADS is set."""
    script = (
        "import sys; from omni_grpo import train; code = train.main(['--check', '--config', 'missing.yaml']); "
        "import torch; print(code, torch.get_num_threads())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",) and not k.startswith("PYTEST")}
    env["PYTHONPATH"] = str(REPO)
    for given, expected in ((None, "1"), ("2", "2")):
        run_env = dict(env, **({"OMP_NUM_THREADS": given} if given else {}))
        proc = subprocess.run(
            [sys.executable, "-c", script], cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=120
        )
        assert proc.stdout.split() == ["2", expected], proc.stdout + proc.stderr  # code 2: the config error


def test_an_error_from_a_loader_worker_is_its_own_message_in_one_line():
    """A prompt too long found in a data-loader worker comes back re-raised with the worker's traceback as its
    message; the run's line keeps the original message alone."""
    import torch

    from omni_grpo.logging import one_line
    from omni_grpo.models.qwen2_5_omni import PromptTooLongError

    class TooLong(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise PromptTooLongError("sample 'clip_7': the prompt is 2068 tokens, over max_prompt_length=2048")

    loader = torch.utils.data.DataLoader(TooLong(), num_workers=1, multiprocessing_context="fork")
    with pytest.raises(PromptTooLongError) as caught:
        next(iter(loader))
    assert "Original Traceback" in str(caught.value)  # what torch re-raises
    assert one_line(caught.value) == "sample 'clip_7': the prompt is 2068 tokens, over max_prompt_length=2048"
    assert one_line(ValueError("a\nb")) == "a b"


def test_ranks_the_launcher_ended_are_not_listed_as_failures(tmp_path):
    from omni_grpo.launch import failure_lines

    (tmp_path / "rank-0.txt").write_text("training stopped: sample 'x' too long")
    assert failure_lines(tmp_path, {0: 1, 1: -15}) == ["training stopped: sample 'x' too long"]
    assert failure_lines(tmp_path, {0: 1, 1: -9})[1] == (
        "rank 1 was killed by signal 9 without an error line; its output is above"
    )  # the out-of-memory killer: listed
    (tmp_path / "rank-0.txt").unlink()
    assert failure_lines(tmp_path, {1: -15}) == [
        "rank 1 was killed by signal 15 without an error line; its output is above"
    ]  # nobody else said why


def test_dropping_a_configs_reward_options_is_said_and_works():
    """configs/demo.yaml gives `format` options; overriding reward_funcs without it says how to drop them, and
    that override loads."""
    from omni_grpo.config import ConfigError, load_config

    demo = REPO / "configs" / "demo.yaml"
    with pytest.raises(ConfigError) as refused:
        load_config(demo, ["reward_funcs=[accuracy]"])
    assert "reward_kwargs=null" in str(refused.value) and "\n" not in str(refused.value)
    assert load_config(demo, ["reward_funcs=[accuracy]", "reward_kwargs=null"]).reward_kwargs == {}
