"""The built-in demo learns from the clip and only from it; its data and warm-up cannot give the answer away.

The real demo path, each step its own command as run_scripts run it: `python -m omni_grpo.tiny_models model` (a tiny
random thinker), `python -m omni_grpo.demo data` (clips of one colour and tone; the same question for all),
`python -m preprocess`, `python -m omni_grpo.demo warmup` (the reply format only: the output layer, a uniform
target over the letters) and `python -m omni_grpo.train --config configs/demo.yaml` (one process; the demo
launches 2 ranks). With the media, GRPO's accuracy rises far above chance; the same pipeline with every frame the
same grey and the audio silent (same questions and answers) writes the format but stays at chance. Since the
prompt text is identical for every sample, the rise can only come from video and audio reaching the sampled
completions and the update.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omni_grpo.logging import log_dir

REPO = Path(__file__).resolve().parents[1]
CHANCE = 0.25  # 4 options, balanced answers
# The demo's own preprocess options (run_scripts/demo_setup.sh): 56x56 frames, so a prompt is ~200 tokens.
PREPROCESS = ["--max-pixels", "3136", "--min-pixels", "3136", "--no-progress", "--workers", "0"]


def _run(args: list[str], env: dict, timeout: int = 300) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args[:3])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _curves(run: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir(run)), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in ("reward/accuracy", "reward/format")}


def _demo(
    folder: Path, model: Path, env: dict, seed: int, blank: str | None = None, overrides: tuple[str, ...] = ()
) -> dict[str, list[float]]:
    """The demo pipeline on its own data (``blank``: see `omni_grpo.demo.clip_arrays`): clips → shards → format
    warm-up → GRPO (``overrides``: extra key=value for the training command); returns the logged curves."""
    _run(
        [
            "-m",
            "omni_grpo.demo",
            "data",
            str(folder / "raw"),
            "--seed",
            str(seed),
            *(["--blank", blank] if blank else []),
        ],
        env,
    )
    _run(
        [
            "-m",
            "preprocess",
            "--source",
            "jsonl",
            "--manifest",
            str(folder / "raw" / "manifest.jsonl"),
            "--output",
            str(folder / "shards"),
            *PREPROCESS,
        ],
        env,
    )
    _run(
        [
            "-m",
            "omni_grpo.demo",
            "warmup",
            "--model",
            str(model),
            "--data",
            str(folder / "shards"),
            "--output",
            str(folder / "model"),
            "--config",
            "configs/demo.yaml",
        ],
        env,
    )
    _run(
        [
            "-m",
            "omni_grpo.train",
            "--config",
            "configs/demo.yaml",
            f"model_name_or_path={folder / 'model'}",
            f"data=[{folder / 'shards'}]",
            f"eval_data=[{folder / 'shards'}]",
            f"output_dir={folder / 'run'}",
            f"seed={seed}",
            *overrides,
        ],
        env,
    )
    return _curves(folder / "run")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.slow
def test_demo_learns_from_the_clip_and_not_without_it(tmp_path):
    seed = 0  # seeds 1 and 2 (model, clips and training): the same picture, 0.25-0.33 -> 0.93-0.97 and chance
    # One thread per process: the run takes the same time on an idle 2-core machine and does not slow down
    # several-fold when other jobs share it (torch's two threads then wait on each other).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    model = tmp_path / "tiny"
    _run(["-m", "omni_grpo.tiny_models", "model", str(model), "--seed", str(seed)], env)
    media = _demo(tmp_path / "media", model, env, seed)
    blank = _demo(tmp_path / "blank", model, env, seed, blank="both")

    acc, fmt = media["reward/accuracy"], media["reward/format"]
    first, last = _mean(acc[:5]), _mean(acc[-10:])
    assert last >= 0.7 and last - first >= 0.35, f"the demo did not learn: accuracy {first:.2f} -> {last:.2f}: {acc}"
    assert _mean(fmt) >= 0.8, f"the warm-up's format did not hold: {fmt}"

    # The trained model evaluated with its media blanked (evaluate --ablate media) falls to chance or below.
    for ablate in (None, "media"):
        out = tmp_path / f"eval-{ablate or 'full'}"
        _run(
            [
                "-m",
                "omni_grpo.evaluate",
                "--model",
                str(tmp_path / "media" / "run"),
                "--data",
                str(tmp_path / "media" / "shards"),
                "--output",
                str(out),
                "--no-progress",
                "--num-workers",
                "0",
                *(["--ablate", ablate] if ablate else []),
            ],
            env,
        )
        accuracy = json.loads((out / "summary.json").read_text())["accuracy"]
        if ablate is None:
            assert accuracy >= 0.7, f"the trained demo scores {accuracy} with its media"
        else:
            assert accuracy <= CHANCE + 0.15, f"with the media blanked the trained demo still scores {accuracy}"

    acc, fmt = blank["reward/accuracy"], blank["reward/format"]
    assert _mean(fmt) >= 0.8, f"blanked media: the control must still write the format, got {fmt}"
    assert _mean(acc[-10:]) <= CHANCE + 0.15 and max(_mean(acc[i : i + 10]) for i in range(len(acc) - 9)) <= 0.5, (
        f"blanked media learned beyond chance ({CHANCE}): {acc}"
    )


# One stream alone learns more slowly than both; 40 of the demo's 60 steps show it and keep CI's time down.
SHORT = ("max_steps=40", "save_steps=40", "eval_steps=40")


@pytest.mark.slow
def test_each_modality_alone_carries_the_answer(tmp_path):
    """Grey frames with the tones (audio alone), then the colours in silence (video alone): each run learns, so
    each of the two streams reaches the sampled completions and the update by itself."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    model = tmp_path / "tiny"
    _run(["-m", "omni_grpo.tiny_models", "model", str(model)], env)
    for blank, alone in (("video", "audio"), ("audio", "video")):
        acc = _demo(tmp_path / blank, model, env, seed=0, blank=blank, overrides=SHORT)["reward/accuracy"]
        first, last = _mean(acc[:5]), _mean(acc[-10:])
        assert last >= 0.55 and last - first >= 0.25, f"{alone} alone: accuracy {first:.2f} -> {last:.2f}: {acc}"


def _preprocess(manifest: Path, out: Path) -> Path:
    from preprocess.__main__ import main

    assert main(["--source", "jsonl", "--manifest", str(manifest), "--output", str(out), *PREPROCESS]) == 0
    return out


def test_demo_text_is_the_same_for_every_clip_and_blank_media_are_identical(tmp_path):
    """Only the media can tell the answer: one question and option list for all, balanced answers; the colour is
    the frames' dominant channel; blanked, every clip's frames and audio are the same."""
    import json

    import numpy as np

    from omni_grpo.demo import COLOURS, clip_arrays, make_demo_dataset

    lines = [json.loads(x) for x in make_demo_dataset(tmp_path / "d", n_clips=8).read_text().splitlines()]
    assert len({(x["question"], tuple(x["options"])) for x in lines}) == 1
    assert sorted(x["answer"] for x in lines) == sorted("ABCD" * 2)
    for k, (name, rgb, _) in enumerate(COLOURS):
        frames, audio = clip_arrays(k, seed=k)
        assert int(np.argmax(frames.reshape(-1, 3).mean(0))) == int(np.argmax(rgb)), name
        assert np.abs(audio).max() > 0.2
    blank = [clip_arrays(k % 4, seed=k, blank="both") for k in range(4)]
    assert all(np.array_equal(f, blank[0][0]) and np.array_equal(a, blank[0][1]) for f, a in blank)
    assert not np.any(blank[0][1]) and len(np.unique(blank[0][0])) == 1


def test_warm_up_never_reads_the_answer_and_changes_only_the_output_layer(tiny_model_dir, tmp_path):
    """The same clips with every answer moved to another letter warm up to the same weights, bit for bit."""
    import json

    from safetensors.torch import load_file

    from omni_grpo.demo import make_demo_dataset, warm_up

    manifest = make_demo_dataset(tmp_path / "d", n_clips=2, n_options=2)
    moved = tmp_path / "d" / "moved.jsonl"
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    moved.write_text("".join(json.dumps({**x, "answer": "BA"["AB".index(x["answer"])]}) + "\n" for x in lines))
    weights = []
    for name, path in (("a", manifest), ("b", moved)):
        shards = _preprocess(path, tmp_path / f"shards_{name}")
        out = warm_up(
            tiny_model_dir,
            [str(shards)],
            tmp_path / f"warm_{name}",
            config=str(REPO / "configs" / "demo.yaml"),
            steps=5,
        )
        weights.append(load_file(str(out / "model.safetensors")))
        assert json.loads((out / "warm_up.json").read_text())["trained"] == "lm_head"
    before = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys() == before.keys()
    assert all(weights[0][k].equal(weights[1][k]) for k in before)
    changed = {k for k in before if not weights[0][k].equal(before[k])}
    assert changed == {k for k in before if k.endswith("lm_head.weight")}, changed


def test_the_warm_up_reply_is_what_the_demo_rewards():
    """The reply the warm-up fits earns the demo config's full format reward, and accuracy 1 exactly when its
    letter is the sample's answer (the system prompt asks for the same sections)."""
    from omni_grpo.config import load_config
    from omni_grpo.demo import QUESTION, REPLY
    from omni_grpo.rewards.accuracy import accuracy_reward
    from omni_grpo.rewards.format import format_reward

    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.reward_funcs == ["format", "accuracy"]
    tags = cfg.reward_kwargs["format"]["tags"]
    replies = [REPLY.format(letter=x) for x in "ABCD"]
    assert format_reward(replies, tags=tags) == [1.0] * 4
    assert all(f"<{t}>" in cfg.system_prompt for t in tags)
    fields = dict(
        question=[QUESTION] * 4,
        options=[["red", "green", "blue", "yellow"]] * 4,
        answer=["C"] * 4,
        problem_type=["multiple_choice"] * 4,
    )
    assert accuracy_reward(replies, **fields) == [0.0, 0.0, 1.0, 0.0]
