"""DAPO's dynamic sampling (`dynamic_sampling`): constant groups are left out and more
rounds drawn until the step holds per_device_prompts × gradient_accumulation_steps groups with a reward spread;
the counters match what was drawn, the cap holds, the normaliser counts the rows trained, resume is exact.
The 2-rank ZeRO-3 run (ranks whose constant groups differ) is in test_distributed.py."""

import pytest
import torch

from omni_grpo.config import ConfigError
from omni_grpo.core_algos import pick_groups
from omni_grpo.trainer import GRPOTrainer
from tests.helpers import TINY_RUN, tiny_config
from tests.rewards_for_tests import constant_prompt

HALF = "tests.rewards_for_tests:half_constant_reward"
# One prompt per micro-step, two micro-steps: a step needs 2 groups with a spread. In the tiny shards' order
# every other prompt (ids ending in an even digit) scores one constant value for all its completions.
RUN = dict(
    TINY_RUN,
    per_device_prompts=1,
    gradient_accumulation_steps=2,
    max_completion_length=6,
    save_steps=0,
    dataset_order="sequential",
    beta=0.0,
    reward_funcs=[HALF],
    dynamic_sampling=True,
    dynamic_sampling_max_extra_rounds=4,
)


class Recorder:
    """The prompts each step drew, the rows it trained on, and the normaliser its micro-batches used."""

    def __init__(self, trainer):
        self.drawn, self.trained, self.tokens = [], [], []
        rollout, update, micro = trainer.rollout, trainer.update, trainer._micro_loss

        def recording_rollout(batch, temperature):
            self.drawn[-1].extend(s["id"] for s in batch.samples)
            return rollout(batch, temperature)

        def recording_update(rollouts, beta):
            self.trained.append(rollouts)
            return update(rollouts, beta)

        def recording_micro(part, beta, global_tokens, global_seqs, *prompt):
            self.tokens[-1].append(float(global_tokens))
            return micro(part, beta, global_tokens, global_seqs, *prompt)

        trainer.rollout, trainer.update, trainer._micro_loss = recording_rollout, recording_update, recording_micro
        self.trainer = trainer

    def step(self) -> dict:
        self.drawn.append([])
        self.tokens.append([])
        return self.trainer.step()


def test_pick_groups_takes_spread_groups_in_order_and_fills_at_the_cap():
    spread = [torch.tensor([True, False]), torch.tensor([False, True]), torch.tensor([True, True])]
    assert pick_groups(spread, 3) == ([[0], [1], [0]], {"drawn": 6, "dropped": 2, "filled": 0, "surplus": 1})
    short = [torch.tensor([False, False]), torch.tensor([False, True])]
    assert pick_groups(short, 3) == ([[0, 1], [1]], {"drawn": 4, "dropped": 1, "filled": 2, "surplus": 0})


def test_every_trained_group_has_a_spread_and_the_counters_match_the_draws(tiny_model_dir, tiny_shards, tmp_path):
    rec = Recorder(GRPOTrainer(tiny_config(tiny_model_dir, tiny_shards, tmp_path, RUN, max_steps=2)))
    for _ in range(2):
        m = rec.step()
        drawn, trained = rec.drawn[-1], rec.trained[-1]
        constant = sum(constant_prompt(i) for i in drawn)
        assert constant > 0 and len(drawn) > 2  # constant groups were drawn, and replaced by extra rounds
        assert m["rollout/dynamic_sampling_drawn"] == len(drawn) == m["rollout/dynamic_sampling_rounds"]
        assert m["rollout/dynamic_sampling_dropped"] == constant and m["rollout/dynamic_sampling_filled"] == 0
        assert sum(len(r.samples) for r in trained) == 2 * 2  # the configured 2 groups of G = 2
        for r in trained:
            assert all(not constant_prompt(s["id"]) for s in r.samples)
            assert (r.rewards.view(-1, 2).amax(1) > r.rewards.view(-1, 2).amin(1)).all()
        kept_tokens = float(sum(r.completion_mask.sum() for r in trained))
        assert rec.tokens[-1] and all(t == kept_tokens for t in rec.tokens[-1])  # the rows trained, nothing else


def test_the_extra_round_cap_holds_and_constant_groups_fill_the_step(tiny_model_dir, tiny_shards, tmp_path):
    cfg = tiny_config(
        tiny_model_dir,
        tiny_shards,
        tmp_path,
        RUN,
        max_steps=1,
        dynamic_sampling_max_extra_rounds=3,
        reward_funcs=["tests.rewards_for_tests:constant_reward"],
    )
    rec = Recorder(GRPOTrainer(cfg))
    m = rec.step()
    assert len(rec.drawn[0]) == m["rollout/dynamic_sampling_rounds"] == 2 + 3
    assert m["rollout/dynamic_sampling_filled"] == 2 and m["rollout/dynamic_sampling_dropped"] == 3
    assert [s["id"] for r in rec.trained[0] for s in r.samples[::2]] == rec.drawn[0][:2]  # the earliest ones


def test_the_gradient_does_not_depend_on_the_micro_batch(tiny_model_dir, tiny_shards, tmp_path):
    """The kept rows of several rounds, in update micro-batches of 1 row or of a whole group: the same gradient."""
    grads = []
    for mb in (1, 2):
        trainer = GRPOTrainer(
            tiny_config(tiny_model_dir, tiny_shards, tmp_path / str(mb), RUN, max_steps=1, micro_batch_size=mb)
        )
        got, step = {}, trainer.engine.step

        def capture(_got=got, _step=step, _policy=trainer.policy):
            _got.update({n: p.grad.clone() for n, p in _policy.named_parameters() if p.grad is not None})
            return _step()

        trainer.engine.step = capture
        assert trainer.step()["rollout/dynamic_sampling_rounds"] > 2
        grads.append(got)
    one, two = grads
    assert one.keys() == two.keys() and any(g.abs().max() > 0 for g in one.values())
    for name, g in one.items():
        torch.testing.assert_close(two[name], g, atol=1e-6, rtol=0, msg=name)


def test_resume_with_dynamic_sampling_equals_uninterrupted(tiny_model_dir, tiny_shards, tmp_path):
    full = GRPOTrainer(tiny_config(tiny_model_dir, tiny_shards, tmp_path / "a", RUN, max_steps=2))
    full.step()
    folder = full.save()
    rest = full.step()
    resumed = GRPOTrainer(
        tiny_config(tiny_model_dir, tiny_shards, tmp_path / "b", RUN, max_steps=2, resume_from_checkpoint=str(folder))
    )
    again = resumed.step()
    assert rest["rollout/dynamic_sampling_rounds"] > 2  # the resumed step drew extra rounds too
    for key in ("actor/loss", "rollout/dynamic_sampling_drawn", "rollout/dynamic_sampling_dropped", "reward/total"):
        assert again[key] == rest[key], key
    for (n, p), (_, q) in zip(full.policy.named_parameters(), resumed.policy.named_parameters()):
        assert torch.equal(p, q), n


def test_an_update_micro_batch_spanning_groups_is_refused(tiny_model_dir, tiny_shards, tmp_path):
    with pytest.raises(ConfigError, match="micro_batch_size"):
        tiny_config(tiny_model_dir, tiny_shards, tmp_path, RUN, per_device_prompts=2)
    with pytest.raises(ConfigError, match="dynamic_sampling_max_extra_rounds"):
        tiny_config(tiny_model_dir, tiny_shards, tmp_path, RUN, dynamic_sampling_max_extra_rounds=-1)
