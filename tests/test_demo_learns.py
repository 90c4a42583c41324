"""End to end, the built-in demo learns from the clip and only from it.

The real demo path, each step its own command as run_scripts run it: `python -m omni_grpo.testing model` (a tiny
random thinker), `python -m omni_grpo.demo data` (clips of one colour and tone; the same question for all),
`python -m preprocess`, `python -m omni_grpo.demo warmup` (the reply format only: the output layer, a uniform
target over the letters) and `python -m omni_grpo.train --config configs/demo.yaml` (one process; the demo
launches 2 ranks). With the media, GRPO's accuracy rises far above chance; the same pipeline with every frame the
same grey and the audio silent (same questions and answers) writes the format but stays at chance. Since the
prompt text is identical for every sample, the rise can only come from video and audio reaching the sampled
completions and the update.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHANCE = 0.25  # 4 options, balanced answers
# The demo's own preprocess options (run_scripts/demo_setup.sh): 56x56 frames, so a prompt is ~200 tokens.
PREPROCESS = ["--max-pixels", "3136", "--min-pixels", "3136", "--no-progress", "--workers", "0"]


def _run(args: list[str], env: dict, timeout: int = 300) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args[:3])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _curves(run: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "runs"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in ("reward/accuracy", "reward/format")}


def _demo(folder: Path, model: Path, env: dict, seed: int, blank: bool) -> dict[str, list[float]]:
    """The demo pipeline on its own data: clips → shards → format warm-up → GRPO; returns the logged curves."""
    _run(["-m", "omni_grpo.demo", "data", str(folder / "raw"), "--seed", str(seed), *(["--blank"] if blank else [])],
         env)
    _run(["-m", "preprocess", "--source", "jsonl", "--manifest", str(folder / "raw" / "manifest.jsonl"),
          "--output", str(folder / "shards"), *PREPROCESS], env)
    _run(["-m", "omni_grpo.demo", "warmup", "--model", str(model), "--data", str(folder / "shards"),
          "--output", str(folder / "model"), "--config", "configs/demo.yaml"], env)
    _run(["-m", "omni_grpo.train", "--config", "configs/demo.yaml", f"model_name_or_path={folder / 'model'}",
          f"data=[{folder / 'shards'}]", f"output_dir={folder / 'run'}", f"seed={seed}"], env)
    return _curves(folder / "run")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_demo_learns_from_the_clip_and_not_without_it(tmp_path, seed):
    # One thread per process: the run takes the same time on an idle 2-core machine and does not slow down
    # several-fold when other jobs share it (torch's two threads then wait on each other).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    model = tmp_path / "tiny"
    _run(["-m", "omni_grpo.testing", "model", str(model), "--seed", str(seed)], env)
    media = _demo(tmp_path / "media", model, env, seed, blank=False)
    blank = _demo(tmp_path / "blank", model, env, seed, blank=True)

    acc, fmt = media["reward/accuracy"], media["reward/format"]
    first, last = _mean(acc[:5]), _mean(acc[-10:])
    assert last >= 0.7 and last - first >= 0.35, f"the demo did not learn: accuracy {first:.2f} -> {last:.2f}: {acc}"
    assert _mean(fmt) >= 0.8, f"the warm-up's format did not hold: {fmt}"

    acc, fmt = blank["reward/accuracy"], blank["reward/format"]
    assert _mean(fmt) >= 0.8, f"blanked media: the control must still write the format, got {fmt}"
    assert _mean(acc[-10:]) <= CHANCE + 0.15 and max(_mean(acc[i:i + 10]) for i in range(len(acc) - 9)) <= 0.5, (
        f"blanked media learned beyond chance ({CHANCE}): {acc}")
