"""End to end, the README's main job: `bash run_scripts/stage4.sh` from an empty folder builds the tiny model and the
synthetic Social-IQ-style clips, preprocesses them, trains 2 GRPO steps on 2 CPU processes under DeepSpeed ZeRO-3
(gloo), logs the documented TensorBoard tags and writes a checkpoint that `python -m omni_grpo.evaluate` answers
with. Every tag it writes is documented in the README; no dependency deprecation warning and no DeepSpeed op build
shows.
A reward that fails inside the ranks ends the run with one line, not the launcher's traceback."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from omni_grpo.logging import log_dir

REPO = Path(__file__).resolve().parents[1]
SCALARS = [
    "reward/total",
    "reward/format",
    "actor/kl",
    "actor/entropy",
    "actor/clip_ratio",
    "actor/grad_norm",
    "actor/lr",
    "actor/beta",
    "rollout/completion_length",
    "rollout/truncated_ratio",
    "rollout/temperature",
    "timing/rollout",
    "throughput/samples_per_s",
]
TEXT = "samples/completions"


def demo_env(demo: Path, **extra) -> dict:
    """The environment of `bash run_scripts/stage4.sh` on the built-in default in `demo`, 2 ranks."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MODEL", "DATA", "OUTPUT_DIR", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    return {**env, "PY": sys.executable, "NPROC": "2", "DEMO_DIR": str(demo), **extra}


def documented(tag: str) -> bool:
    """Whether `tag` is in the README's TensorBoard table, where `<name>` and `<phase>` stand for any one word."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## TensorBoard") : text.index("A healthy run:")]
    cells = [row.split("|")[1] for row in section.splitlines() if row.startswith("| `")]
    names = [n for cell in cells for n in re.findall(r"`([^`]+)`", cell)]
    word = "[A-Za-z0-9_.:-]+"
    return any(re.fullmatch(word.join(map(re.escape, re.split(r"<\w+>", n))), tag) for n in names)


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _run(cmd: list[str], timeout: int, **kwargs) -> subprocess.CompletedProcess:
    """Run `cmd` in its own process group; on timeout kill the whole group (the launcher's ranks too) and fail."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(
            f"{' '.join(cmd[:3])} did not finish in {timeout} s (a rank hung?)\n"
            + _failure(subprocess.CompletedProcess(cmd, -9, out, err))
        )
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _failure(proc) -> str:
    """The first Python traceback of any rank (what went wrong), then the end of the output."""
    first = proc.stderr.find("Traceback")
    return (
        (proc.stderr[first : first + 4000] if first >= 0 else "")
        + "\n...\n"
        + proc.stdout[-2000:]
        + proc.stderr[-3000:]
    )


@pytest.mark.slow
def test_stage4_demo_end_to_end(tmp_path):
    # Shard every weight and never keep one gathered, so that a rank running a module the other skips would hang
    # here instead of hiding behind the tiny model's persistent parameters.
    ds = json.loads((REPO / "configs" / "deepspeed" / "zero3.json").read_text())
    ds["zero_optimization"].update(stage3_max_reuse_distance=0, stage3_param_persistence_threshold=0)
    (tmp_path / "zero3.json").write_text(json.dumps(ds))
    demo = tmp_path / "demo"
    env = demo_env(demo)
    # About 40 s of work on 2 cores; DeepSpeed builds no op (its CPU shared-memory op is skipped).
    proc = _run(
        ["bash", str(REPO / "run_scripts" / "stage4.sh"), "max_steps=2", f"deepspeed={tmp_path / 'zero3.json'}"],
        timeout=420,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, _failure(proc)
    run = demo / "run"
    assert f"bash run_scripts/tensorboard.sh {run / 'runs'}" in proc.stdout
    for noise in (
        "FutureWarning",
        "DeprecationWarning",
        "shm_comm",
        "Setting accelerator to CPU",
        "OMP_NUM_THREADS",
        "Writing model shards",
        "Loading weights",
    ):
        assert noise not in proc.stderr, noise
    # One line per stage (and progress bars, rewritten in place), nothing else before the trainer's own lines.
    lines = [x for x in re.split(r"[\r\n]", proc.stderr) if x.strip() and "%|" not in x]
    start = next(i for i, x in enumerate(lines) if " INFO omni_grpo: " in x)
    assert [x.split(":")[0] for x in lines[:start]] == ["demo set-up"] * 4, lines
    assert proc.stdout.startswith("starting 2 processes on 1 node(s)"), proc.stdout
    assert not any(x.startswith(str(tmp_path)) for x in proc.stdout.splitlines())  # no bare paths

    assert len(list(log_dir(run).glob("events.out.tfevents.*"))) == 1  # rank 0 only
    events = _events(log_dir(run))
    tags = events.Tags()
    missing = [t for t in SCALARS if t not in tags["scalars"]]
    assert not missing, f"missing TensorBoard scalars {missing}; have {sorted(tags['scalars'])}"
    assert f"{TEXT}/text_summary" in tags["tensors"]
    header = [c.decode() for c in events.Tensors(f"{TEXT}/text_summary")[0].tensor_proto.string_val[:2]]
    assert header == ["id", "answer"]
    undocumented = [t for t in tags["scalars"] + [TEXT] if not documented(t)]
    assert not undocumented, f"TensorBoard tags missing from the README's table: {undocumented}"
    kl = {e.step: e.value for e in events.Scalars("actor/kl")}
    assert sorted(kl) == [1, 2]
    assert kl[1] == 0.0, f"KL(policy || reference) before the first update must be exactly 0, got {kl[1]}"
    assert kl[2] > 0.0  # the first update moved the policy away from the reference
    assert all(e.value > 0 for e in events.Scalars("actor/grad_norm"))
    beta = [e.value for e in events.Scalars("actor/beta")]
    assert beta[0] == pytest.approx(0.04) and beta[1] < beta[0]  # linear schedule towards 0

    step = run / "checkpoints" / "step-0000002"
    assert (step / "COMPLETE").is_file() and (step / "model" / "config.json").is_file()
    assert json.loads((step / "trainer_state.json").read_text())["world_size"] == 2
    assert (step / "state" / "deepspeed").is_dir()
    before, after = _weights(demo / "model"), _weights(step / "model")
    assert set(after) == set(before)  # the released layout: model.layers.*, lm_head, visual.*, audio_tower.*
    towers = [k for k in before if k.startswith(("visual.", "audio_tower."))]
    lm = [k for k in before if k not in towers]
    assert lm and towers
    assert any(not after[k].equal(before[k]) for k in lm)
    assert all(after[k].equal(before[k]) for k in towers)  # frozen

    out = tmp_path / "eval"
    proc = _run(
        [
            sys.executable,
            "-m",
            "omni_grpo.evaluate",
            "--model",
            str(step),
            "--data",
            str(demo / "shards"),
            "--output",
            str(out),
            "--limit",
            "4",
            "--max-new-tokens",
            "8",
            "--num-workers",
            "0",
            "--no-progress",
        ],
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, _failure(proc)
    metrics = json.loads((out / "summary.json").read_text())
    assert metrics["num_questions"] == 4 and metrics["model"] == str(step / "model")
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all("completion" in json.loads(line) for line in lines)


@pytest.mark.slow
def test_stage4_failure_inside_ranks_is_one_line(tmp_path):
    """Both ranks stop on a reward that keeps failing: its message once, the launcher's traceback not at all."""
    env = demo_env(tmp_path / "demo", PYTHONPATH=str(REPO))
    proc = _run(
        [
            "bash",
            str(REPO / "run_scripts" / "stage4.sh"),
            "reward_funcs=[format,tests.rewards_for_tests:raising_reward]",
            "reward_weights=[1.0,1.0]",
            "save_steps=0",
        ],
        timeout=420,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 1, _failure(proc)
    assert proc.stderr.count("training stopped: reward 'tests.rewards_for_tests:raising_reward' failed") == 1, (
        proc.stderr
    )
    assert proc.stderr.rstrip().splitlines()[-1].startswith("training stopped:")
    for noise in ("Traceback", "ChildFailedError", "elastic"):
        assert noise not in proc.stderr, noise
