"""Dynamic sampling's numbers: `reward/*` and `rollout/*` describe the groups the step trains on (as `actor/*` does,
and as verl logs them); every drawn group, the dropped ones included, is under `rollout/drawn_*`."""

import math

import torch

from omni_grpo.trainer import GRPOTrainer
from tests.helpers import tiny_config
from tests.test_dynamic_sampling import RUN


def test_reward_and_rollout_metrics_cover_the_kept_groups_and_drawn_ones_are_logged_apart(
    tiny_model_dir, tiny_shards, tmp_path
):
    trainer = GRPOTrainer(tiny_config(tiny_model_dir, tiny_shards, tmp_path, RUN, max_steps=1))
    seen = {}
    collect = trainer.collect_rollouts

    def recording_collect(temperature):
        seen["drawn"], seen["kept"], metrics = collect(temperature)
        return seen["drawn"], seen["kept"], metrics

    trainer.collect_rollouts = recording_collect
    metrics = trainer.step()
    drawn, kept = seen["drawn"], seen["kept"]
    assert sum(r.num_rows for r in drawn) > sum(r.num_rows for r in kept)  # groups were dropped

    def total(rollouts):
        return torch.cat([r.rewards.float().cpu() for r in rollouts])

    def length(rollouts):
        return torch.cat([r.completion_mask.sum(-1).float() for r in rollouts]).mean().item()

    def zero_std(rollouts):
        return torch.cat([(r.advantages.view(-1, 2) == 0).all(dim=1).float().cpu() for r in rollouts]).mean().item()

    assert math.isclose(metrics["reward/total_std"], total(kept).std(correction=0).item(), rel_tol=1e-6)
    assert math.isclose(metrics["rollout/drawn_reward_total_std"], total(drawn).std(correction=0).item(), rel_tol=1e-6)
    assert metrics["reward/zero_std_group_ratio"] == zero_std(kept) == 0.0  # every trained group has a spread
    assert metrics["rollout/drawn_reward_zero_std_group_ratio"] == zero_std(drawn) > 0.0
    assert math.isclose(metrics["rollout/completion_length"], length(kept), rel_tol=1e-6)
    assert math.isclose(metrics["rollout/drawn_completion_length"], length(drawn), rel_tol=1e-6)
    name = "tests.rewards_for_tests:half_constant_reward"
    assert f"reward/{name}" in metrics and f"rollout/drawn_reward_{name}" in metrics
    assert f"reward/{name}/errors" in metrics  # a count of failures, kept under its usual name


def test_the_reference_scores_only_the_groups_kept(tiny_model_dir, tiny_shards, tmp_path):
    """With β > 0 the reference pass runs after the filter: on the rows the update trains, never on a dropped
    group's (half of the drawn rows in a run where every other prompt is constant)."""
    trainer = GRPOTrainer(tiny_config(tiny_model_dir, tiny_shards, tmp_path, RUN, max_steps=1, beta=0.04))
    scored, kept = [], []
    log_probs, update = trainer._log_probs, trainer.update

    def recording_log_probs(model, rows, *args, **kwargs):
        scored.append(rows.num_rows)
        return log_probs(model, rows, *args, **kwargs)

    def recording_update(rollouts, beta):
        kept.extend(r.num_rows for r in rollouts)
        trainer._log_probs = log_probs  # the update's own passes are not counted
        return update(rollouts, beta)

    trainer._log_probs, trainer.update = recording_log_probs, recording_update
    metrics = trainer.step()
    assert metrics["rollout/dynamic_sampling_dropped"] > 0
    assert scored == kept  # one reference pass per kept rollout, over its rows only
