"""The run as a user sees it, through the real commands: `stage4.sh` checks the config and paths once before any rank
starts and prints one line; a failure inside the ranks is one line, not the launcher's traceback; dependencies'
deprecation warnings are hidden unless asked for; DeepSpeed's CPU shared-memory op is not built; the completions
table shows text verbatim; every command the README prints runs as typed without the venv on PATH."""

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from omni_grpo.launch import failure_lines
from omni_grpo.logging import log_dir
from tests.helpers import free_port, readme_commands
from tests.test_run_scripts import LAUNCH_ENV

REPO = Path(__file__).resolve().parents[1]


def user_env(**extra) -> dict:
    """A shell without the project's venv on PATH; PY stands in for the ./.venv that _env.sh would create."""
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV and not k.startswith("OMNI_GRPO")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env.update(PY=sys.executable, **extra)
    return env


def bash(args: list[str], timeout: int = 120, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", *args], cwd=REPO, env=user_env(**env), capture_output=True, text=True, timeout=timeout
    )


# ------------------------------------------------------------------------- errors before launch: one line, once


@pytest.mark.parametrize("case", ["misspelled_key", "missing_model", "empty_data"])
def test_stage4_config_errors_are_one_line_before_any_rank(case, tmp_path, tiny_model_dir):
    (tmp_path / "empty").mkdir()
    model, data, args = str(tiny_model_dir), str(tmp_path / "empty"), []
    expect = {
        "misspelled_key": "did you mean 'learning_rate'",
        "missing_model": "not found",
        "empty_data": "manifest.json",
    }[case]
    if case == "misspelled_key":
        args = ["learnin_rate=1e-6"]
    elif case == "missing_model":
        model = str(tmp_path / "no_such_model")
    proc = bash(["run_scripts/stage4.sh", *args], MODEL=model, DATA=data, OUTPUT_DIR=str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error:") and expect in lines[0], proc.stderr
    assert "TensorBoard logs" not in proc.stdout  # stopped before the launch, not after it


def test_train_check_passes_and_a_bug_reports_its_line(tmp_path, tiny_model_dir, tiny_shards):
    args = [
        sys.executable,
        "-m",
        "omni_grpo.train",
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        f"model_name_or_path={tiny_model_dir}",
        f"data=[{tiny_shards}]",
        f"eval_data=[{tiny_shards}]",
        f"output_dir={tmp_path / 'out'}",
    ]
    ok = subprocess.run(
        [*args, "--check"],
        cwd=tmp_path,
        env=user_env(PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    # A bug of ours (here: the trainer module cannot be imported) keeps its traceback and ends in one line to report.
    shadow = tmp_path / "shadow" / "omni_grpo"
    shadow.mkdir(parents=True)
    real = REPO / "omni_grpo"
    for item in real.iterdir():
        if item.name != "trainer.py":
            (shadow / item.name).symlink_to(item)
    (shadow / "trainer.py").write_text("raise ZeroDivisionError('planted bug')\n")
    bug = subprocess.run(
        args,
        cwd=tmp_path,
        env=user_env(PYTHONPATH=f"{shadow.parent}{os.pathsep}{REPO}"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bug.returncode == 1
    last = bug.stderr.strip().splitlines()[-1]
    assert "Traceback" in bug.stderr and last.startswith("internal error (a bug in omni-grpo")
    assert "ZeroDivisionError: planted bug at " in last and "trainer.py:1" in last


# ------------------------------------------------------------------------------ errors inside ranks: one line


def test_failure_lines_print_each_message_once(tmp_path):
    (tmp_path / "rank-0.txt").write_text("training stopped: x")
    (tmp_path / "rank-1.txt").write_text("training stopped: x")
    assert failure_lines(tmp_path, {0: 1, 1: 1}) == ["training stopped: x"]
    (tmp_path / "rank-1.txt").write_text("data error: y")
    assert failure_lines(tmp_path, {1: 2}) == ["[rank 0] training stopped: x", "[rank 1] data error: y"]
    (tmp_path / "rank-0.txt").unlink()
    (tmp_path / "rank-1.txt").unlink()
    assert failure_lines(tmp_path, {1: -9}) == [
        "rank 1 was killed by signal 9 without an error line; its output is above"
    ]


RANK_SCRIPT = """import os, sys
from omni_grpo.logging import report_error
rank = int(os.environ["RANK"])
if sys.argv[1] == "same":
    sys.exit(report_error("config error: the same on every rank", 2))
if rank == 1:
    sys.exit(report_error("data error: only rank 1", 2))
import time; time.sleep(60)  # rank 0 waits, as at a barrier, until the launcher stops it
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["same", "rank1"])
def test_launch_reports_failed_ranks_in_one_line(tmp_path, mode):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    proc = subprocess.run(
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
            mode,
        ],
        cwd=REPO,
        env=user_env(PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    want = {"same": "config error: the same on every rank", "rank1": "data error: only rank 1"}[mode]
    assert proc.stderr.count(want) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------------------ noise


@pytest.mark.parametrize("verbose", [False, True])
def test_dependency_deprecation_warnings_only_when_verbose(verbose):
    code = (
        "import warnings; from omni_grpo.logging import configure_logging; configure_logging(0, verbose=%s); "
        "warnings.warn('dep-future', FutureWarning); warnings.warn('dep-deprecated', DeprecationWarning); "
        "warnings.warn('ours', UserWarning)"
    ) % verbose
    proc = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "ours" in proc.stderr
    assert ("dep-future" in proc.stderr) == verbose and ("dep-deprecated" in proc.stderr) == verbose


def test_deepspeed_cpu_shm_op_is_not_built():
    # In a fresh process: without the skip, DeepSpeed's process group would load or JIT-compile the op here.
    code = (
        "from omni_grpo.train import skip_deepspeed_shm_op; skip_deepspeed_shm_op(); "
        "from deepspeed.comm.torch import build_shm_op; print('op', build_shm_op())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
    )
    assert proc.returncode == 0 and "op None" in proc.stdout, proc.stderr[-2000:]


# ------------------------------------------------------------------------------- the completions table


def test_completions_table_is_verbatim(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.text.text_plugin import text_array_to_html
    from tensorboard.util import tensor_util

    from omni_grpo.logging import MetricsWriter

    texts = ["<think>a\rb | c</think>\n\n*not italic* **nor bold** `x` & &amp;\n| id | fake row |", "plain"]
    rows = [
        {"id": f"q_{i}*", "answer": "A", "format": 1.0, "total": 1.0, "advantage": 0.5, "completion": t}
        for i, t in enumerate(texts)
    ]
    writer = MetricsWriter(str(tmp_path), enabled=True)
    writer.completions(rows, step=3)
    writer.close()
    acc = EventAccumulator(str(log_dir(tmp_path)), size_guidance={"tensors": 0})
    acc.Reload()
    (event,) = acc.Tensors("samples/completions/text_summary")
    table = tensor_util.make_ndarray(event.tensor_proto)
    assert event.step == 3 and table.shape == (1 + len(rows), 6)  # a header row and one row per completion
    page = text_array_to_html(table, enable_markdown=True)  # what TensorBoard's text plugin serves
    assert page.count("<tr>") == 1 + len(rows) and "<em>" not in page and "<strong>" not in page
    cells = [html.unescape(c) for c in re.findall(r"<pre>(.*?)</pre>", page, flags=re.S)]
    assert cells == [c for r in rows for c in (r["id"], r["answer"], r["completion"])]


# ------------------------------------------------------------------------- printed commands work as typed


def test_readme_commands_go_through_the_scripts():
    text = (REPO / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S))
    typed = [line.strip() for line in blocks.splitlines()] + re.findall(r"`([^`\n]+)`", text)
    bare = [c for c in typed if c.startswith(("python ", "python3 ", "tensorboard ", "pip ", "accelerate "))]
    assert not bare, f"commands that need the venv on PATH: {bare}"
    scripts = {re.search(r"bash (run_scripts/\S+)", c).group(1) for c in readme_commands()}
    assert {
        "run_scripts/stage4.sh",
        "run_scripts/test.sh",
        "run_scripts/python.sh",
        "run_scripts/tensorboard.sh",
    } <= scripts
    assert all((REPO / s).is_file() for s in scripts)


def test_printed_commands_run_as_typed():
    """The README's python.sh and tensorboard.sh commands, each asked for --help (stage4.sh and test.sh run whole
    in their own tests); and the line stage4.sh prints at its end."""
    commands = [c for c in readme_commands() if "python.sh" in c or "tensorboard.sh" in c]
    script_text = (REPO / "run_scripts" / "stage4.sh").read_text()
    printed = re.search(r'"  (bash run_scripts/tensorboard\.sh) \$out/runs"', script_text)
    assert printed, "stage4.sh no longer prints the TensorBoard command this test runs"
    commands.append(f"{printed.group(1)} outputs/demo/run/runs")
    seen = set()
    for command in commands:
        words = command.split()
        if "python.sh" in command:  # a module or script, its arguments replaced by --help; alone: the interpreter
            after = words[words.index("run_scripts/python.sh") + 1 :]
            if "-m" in words:
                words = words[: words.index("-m") + 2] + ["--help"]
            elif after and after[0].endswith(".py"):
                words = words[: words.index(after[0]) + 1] + ["--help"]
            else:
                words = [*words, "-c", "print('usage')"]
        else:
            words.append("--help")
        if " ".join(words) in seen:
            continue
        seen.add(" ".join(words))
        proc = bash(words[1:])
        assert proc.returncode == 0 and "usage" in (proc.stdout + proc.stderr).lower(), (command, proc.stderr[-2000:])
    assert len(seen) >= 5  # python.sh alone, preprocess, omni_grpo.train, omni_grpo.evaluate, tensorboard.sh
