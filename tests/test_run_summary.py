"""The end-of-run line says how the main rewards moved (omni_grpo/run_summary.py), in the real command too."""

import math
import os
import subprocess
import sys
from pathlib import Path

from omni_grpo.run_summary import is_main_reward, plural, reward_trend, window
from tests.helpers import CLI_RUN, LENGTH, run_args

REPO = Path(__file__).resolve().parents[1]


def test_window_is_a_quarter_of_the_run_between_one_and_five_steps():
    assert [window(n) for n in (1, 2, 4, 8, 12, 20, 60, 1000)] == [1, 1, 1, 2, 3, 5, 5, 5]


def test_main_rewards_exclude_their_companions():
    assert is_main_reward("reward/accuracy") and is_main_reward("reward/total")
    assert not any(
        map(
            is_main_reward,
            [
                "reward/accuracy_std",
                "reward/total/none_ratio",
                "reward/format/errors",
                "reward/zero_std_group_ratio",
                "actor/kl",
            ],
        )
    )


def test_trend_compares_the_first_and_last_k_steps():
    accuracy = [0.25] * 5 + [0.5] * 50 + [0.75, 0.75, 0.8, 0.9, 1.0]  # 60 steps: k = 5
    total = [1.0] * 60
    line = reward_trend(
        {"reward/total": total, "reward/accuracy": accuracy, "reward/accuracy_std": accuracy, "actor/kl": total}
    )
    assert line == (
        "accuracy rose from 0.25 to 0.84, total did not rise from 1.00 to 1.00 "
        "(reward/*, mean of the first and last 5 steps)"
    )


def test_trend_leaves_out_non_finite_values_and_unscored_rewards():
    line = reward_trend({"reward/accuracy": [math.nan, 0.0, 1.0, 1.0], "reward/judge": [math.nan] * 4})
    assert line == "accuracy rose from 0.00 to 1.00 (reward/*, mean of the first and last 1 step)"
    assert reward_trend({"reward/judge": [math.nan]}) == "" and reward_trend({}) == ""


def test_plural():
    assert (plural(1, "step"), plural(0, "step"), plural(2, "step")) == ("1 step", "0 steps", "2 steps")


def test_a_real_run_banner_points_to_the_config_and_the_done_line_says_how_the_rewards_moved(
    tmp_path, tiny_model_dir, tiny_shards
):
    args = run_args(
        tiny_model_dir, tiny_shards, tmp_path / "out", CLI_RUN, save_steps=0, reward_funcs=f"[format, {LENGTH}]"
    )

    def train():
        return subprocess.run(
            [sys.executable, "-m", "omni_grpo.train", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    proc = train()
    assert proc.returncode == 0, proc.stderr
    done = [line for line in proc.stderr.splitlines() if "done: 2 steps in" in line]
    assert len(done) == 1, proc.stderr
    assert "length_reward" in done[0] and "total " in done[0], done[0]
    assert "(reward/*, mean of the first and last 1 step)" in done[0], done[0]
    # The banner: one line pointing to the saved config (not the config itself), and singulars right for 1.
    config = tmp_path / "out" / "config.yaml"
    assert f"  config: {config} (every setting, resolved)" in proc.stderr and config.is_file(), proc.stderr
    assert '"model_name_or_path"' not in proc.stderr and "1 prompt × 2 completions" in proc.stderr, proc.stderr
    # The same command again resumes at the last step: the line says there is nothing left and how to train again.
    again = train()
    assert again.returncode == 0, again.stderr
    assert "done: 2 steps in" in again.stderr and "nothing left to train" in again.stderr, again.stderr
    assert "overwrite_output_dir=true" in again.stderr
