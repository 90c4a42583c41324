"""Evaluation during training (`eval_data`, `eval_steps`): it runs every N steps and at the
end, writes the CLI's summary format and the `eval/...` TensorBoard tags, splits the questions over ranks
with each evaluated once, and leaves the training run's random stream (its loss curve) unchanged."""

import json
import random

import numpy as np
import pytest
import torch

from omni_grpo import eval_loop, eval_report
from omni_grpo.config import ConfigError, check_paths
from omni_grpo.logging import log_dir
from omni_grpo.trainer import GRPOTrainer
from tests.test_trainer import make_config


def _losses(trainer) -> list[float]:
    """Train to the end, recording each step's actor/loss."""
    losses, real = [], trainer.step
    trainer.step = lambda: (lambda m: (losses.append(m["actor/loss"]), m)[1])(real())
    trainer.train()
    return losses


def test_evaluating_every_step_keeps_the_loss_curve_and_writes_each_step(tiny_model_dir, tiny_shards, tmp_path):
    plain = _losses(GRPOTrainer(make_config(tiny_model_dir, tiny_shards, tmp_path / "plain", max_steps=3)))
    evaluated = _losses(
        GRPOTrainer(
            make_config(
                tiny_model_dir, tiny_shards, tmp_path / "eval", max_steps=3, eval_data=[str(tiny_shards)], eval_steps=1
            )
        )
    )
    assert len(plain) == 3 and evaluated == plain
    folders = sorted(p.name for p in (tmp_path / "eval" / "eval").iterdir())
    assert folders == ["step-0000001", "step-0000002", "step-0000003"]
    assert not (tmp_path / "plain" / "eval").exists()


def test_eval_steps_also_evaluates_the_last_step(tiny_model_dir, tiny_shards, tmp_path):
    """eval_steps=2 of 3 steps: step 2 and the end (3); TensorBoard gets eval/accuracy at both."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config(
        tiny_model_dir,
        tiny_shards,
        tmp_path,
        max_steps=3,
        eval_data=[str(tiny_shards)],
        eval_steps=2,
        reward_funcs=["format", "accuracy"],
    )
    GRPOTrainer(cfg).train()
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["step-0000002", "step-0000003"]
    acc = EventAccumulator(str(log_dir(tmp_path)), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert [e.step for e in acc.Scalars("eval/accuracy")] == [2, 3]
    for tag in ("eval/format_rate", "eval/reward/format", "eval/reward/accuracy", "eval/reward/people_focus"):
        assert tag in tags["scalars"], tag
    assert any(
        t.startswith("eval/") and t.endswith("/accuracy") and t.count("/") == 2 and t != "eval/reward/accuracy"
        for t in tags["scalars"]
    )  # eval/<problem_type>/accuracy
    assert "eval/completions/text_summary" in tags["tensors"]


def test_the_step_folder_has_the_cli_format_and_every_question_once(tiny_model_dir, tiny_shards, tmp_path):
    from omni_grpo.data import PromptDataset
    from omni_grpo.evaluate import main as evaluate_main
    from omni_grpo.evaluate import question_ids

    cfg = make_config(tiny_model_dir, tiny_shards, tmp_path, max_steps=2, eval_data=[str(tiny_shards)], eval_steps=1)
    GRPOTrainer(cfg).train()
    folder = eval_loop.step_dir(tmp_path, 2)
    rows = eval_report.load_predictions(folder)
    assert [r["id"] for r in rows] == question_ids(PromptDataset([str(tiny_shards)]))
    summary = json.loads((folder / eval_report.SUMMARY_FILE).read_text())
    again = eval_report.summarize(
        rows, list(summary["rewards"]), [s["weight"] for s in summary["rewards"].values()], 1, list(summary["groups"])
    )
    assert {k: summary[k] for k in again} == json.loads(json.dumps(again))
    assert summary["num_questions"] == len(rows) and summary["step"] == 2
    assert evaluate_main(["--compare", str(folder), str(eval_loop.step_dir(tmp_path, 1))]) == 0


def test_evaluation_restores_every_random_state_even_if_sampling_draws(
    tiny_model_dir, tiny_shards, tmp_path, monkeypatch
):
    """Greedy decoding draws nothing today; the guard must hold for any sampling code that does."""
    real = eval_loop.sample

    def drawing(*args, **kwargs):
        random.random(), np.random.rand(), torch.rand(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(eval_loop, "sample", drawing)
    trainer = GRPOTrainer(
        make_config(tiny_model_dir, tiny_shards, tmp_path, max_steps=1, eval_data=[str(tiny_shards)], eval_steps=1)
    )
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    want = random.random(), np.random.rand(), torch.rand(1).item()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    metrics = trainer.evaluate()
    got = random.random(), np.random.rand(), torch.rand(1).item()
    assert "eval/accuracy" in metrics and got == want


def test_rank_share_gives_every_rank_the_same_batches_and_each_question_once():
    shares = [eval_loop.rank_share(7, 2, rank, 3) for rank in range(3)]
    assert {len(s) for s in shares} == {2}
    assert all(len(batch) == 2 for s in shares for batch in s)
    taken = sorted(i for s in shares for batch in s for i in batch if i is not None)
    assert taken == list(range(7))


def test_eval_steps_needs_eval_data_and_eval_data_is_checked_like_data(tiny_model_dir, tiny_shards, tmp_path):
    with pytest.raises(ConfigError, match="eval_steps=5 needs held-out data"):
        make_config(tiny_model_dir, tiny_shards, tmp_path, eval_steps=5)
    with pytest.raises(ConfigError, match="must be >= 0"):
        make_config(tiny_model_dir, tiny_shards, tmp_path, eval_steps=-1)
    cfg = make_config(tiny_model_dir, tiny_shards, tmp_path, eval_steps=5, eval_data=[str(tmp_path / "nowhere")])
    with pytest.raises(ConfigError, match="eval_data directory .*nowhere.* not found"):
        check_paths(cfg)


@pytest.mark.slow
def test_zero3_two_ranks_split_the_questions_and_log_each_eval_step(tiny_model_dir, tiny_shards, tmp_path):
    """2 CPU ranks, ZeRO-3: both ranks generate for every batch (a padded share does not hang the gathered
    generate), rank 0 gets every question's row exactly once, eval/accuracy once per evaluated step."""
    from omni_grpo.data import PromptDataset
    from omni_grpo.evaluate import question_ids
    from tests.helpers import common, launch, scalars, zero3_test_config

    ids = question_ids(PromptDataset([str(tiny_shards)]))
    assert len(ids) % 2 == 1 or (len(ids) // 2) % 2 == 1  # some rank pads a batch (2 rows per generate call)
    out = tmp_path / "out"
    overrides = common(tiny_model_dir, tiny_shards, out, zero3_test_config(tmp_path / "zero3.json"), steps=2)
    launch(tmp_path, overrides + [f"eval_data=[{tiny_shards}]", "eval_steps=1"])
    assert len(scalars(out, "eval/accuracy")) == 2
    for step in (1, 2):
        rows = eval_report.load_predictions(eval_loop.step_dir(out, step))
        assert [r["id"] for r in rows] == ids


def test_eval_ablations_log_the_accuracy_without_the_media(tiny_model_dir, tiny_shards, tmp_path, monkeypatch):
    """eval_ablations=[media, text]: the questions are answered again with every frame one grey and the audio
    silent (the generate call sees one and the same video and audio input for every clip), then with no media at
    all, logged as eval/ablate_<name>/accuracy and written beside the step's folder for --compare."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from omni_grpo.evaluate import main as evaluate_main

    seen, real = [], eval_loop.sample

    def spy(family, policy, processor, inputs, *args, **kwargs):
        seen.append(inputs)
        return real(family, policy, processor, inputs, *args, **kwargs)

    monkeypatch.setattr(eval_loop, "sample", spy)
    cfg = make_config(
        tiny_model_dir,
        tiny_shards,
        tmp_path,
        max_steps=1,
        eval_data=[str(tiny_shards)],
        eval_steps=1,
        eval_ablations=["media", "text"],
    )
    GRPOTrainer(cfg).train()
    third = len(seen) // 3  # the plain pass, then the ablated ones in order
    assert len(seen) == 3 * third and third > 0
    assert all(x.pixel_values_videos is None and x.input_features is None for x in seen[2 * third :])
    for name in ("pixel_values_videos", "input_features"):
        plain = [getattr(x, name) for x in seen[:third] if getattr(x, name) is not None]
        blank = [getattr(x, name) for x in seen[third : 2 * third] if getattr(x, name) is not None]
        assert plain and len(blank) == len(plain)
        assert all(bool((t == blank[0][:1]).all()) for t in blank), f"{name}: the ablated pass still sees the media"
        assert any(not torch.equal(a, b) for a, b in zip(plain, blank)), name
    acc = EventAccumulator(str(log_dir(tmp_path)), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/ablate_media/accuracy")] == [1]
    assert [e.step for e in acc.Scalars("eval/ablate_text/accuracy")] == [1]
    folder = eval_loop.step_dir(tmp_path, 1)
    assert json.loads((folder / "ablate-media" / eval_report.RUN_FILE).read_text())["ablate"] == "media"
    assert evaluate_main(["--compare", str(folder), str(folder / "ablate-media")]) == 0
    with pytest.raises(ConfigError, match="eval_ablations"):
        make_config(tiny_model_dir, tiny_shards, tmp_path, eval_ablations=["sound"])
