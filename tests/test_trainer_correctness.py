"""The trainer optimises what the config says and what it sampled. Each test fails on the trainer
before the fix: μ made no extra update, scoring ignored the temperature and the banned tokens, bf16 without
DeepSpeed rounded updates away, a β schedule from 0 crashed, warmup was dropped, a None reward was pushed down."""

import math

import pytest
import torch

from omni_grpo import core_algos
from omni_grpo.trainer import GRPOTrainer
from tests.test_trainer import make_config


class PolicyLossSpy:
    """Records, per `policy_loss` call, max |log_probs − old_log_probs| and the clip ratio."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = core_algos.policy_loss

        def spy(log_probs, old_log_probs, *args, **kwargs):
            loss, m = real(log_probs, old_log_probs, *args, **kwargs)
            self.calls.append(((log_probs - old_log_probs).abs().max().item(), float(m["clip_ratio"])))
            return loss, m

        monkeypatch.setattr(core_algos, "policy_loss", spy)


@pytest.mark.parametrize("mu", [1, 3])
def test_mu_makes_mu_optimizer_steps_and_the_ratio_departs_from_one(
    tiny_model_dir, tiny_shards, tmp_path, monkeypatch, mu
):
    spy = PolicyLossSpy(monkeypatch)
    cfg = make_config(
        tiny_model_dir,
        tiny_shards,
        tmp_path,
        max_steps=2,
        num_iterations=mu,
        beta=0.0,
        learning_rate=3e-3,
        micro_batch_size=2,
        warmup_ratio=0.0,
    )
    trainer = GRPOTrainer(cfg)
    steps = []
    real_step = trainer.engine.step
    trainer.engine.step = lambda: (steps.append(1), real_step())[1]
    metrics = trainer.step()
    assert len(steps) == mu and metrics["actor/optimizer_steps"] == mu
    assert trainer.engine.scheduler.last_epoch == mu  # the LR schedule counts optimizer steps
    per_pass = len(spy.calls) // mu  # micro-batches per pass
    first, later = spy.calls[:per_pass], spy.calls[per_pass:]
    assert all(dev == 0.0 for dev, _ in first)  # ratio exactly 1 in the first pass
    if mu > 1:
        assert max(dev for dev, _ in later) > 1e-3  # the policy moved between passes
        assert max(clip for _, clip in later) > 0.0  # and clipping acts from the second pass on


def test_every_log_prob_pass_scores_at_the_rollout_temperature_with_media_banned(
    tiny_model_dir, tiny_shards, tmp_path, monkeypatch
):
    """The reference, old and policy passes all get the scheduled temperature of the step and the banned ids;
    `tests/test_scoring.py` shows those two arguments make the scores equal the sampler's."""
    import omni_grpo.trainer as trainer_module

    seen = []
    real = trainer_module.log_probs

    def spy(*args, **kwargs):
        seen.append((kwargs.get("temperature"), tuple(kwargs.get("banned_token_ids") or ())))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "log_probs", spy)
    cfg = make_config(
        tiny_model_dir,
        tiny_shards,
        tmp_path,
        max_steps=4,
        num_iterations=2,
        temperature=0.7,
        temperature_schedule="linear",
        temperature_final=1.3,
    )
    trainer = GRPOTrainer(cfg)
    banned = tuple(trainer.family.banned_token_ids(trainer.processor.tokenizer))
    assert banned
    for step in range(2):
        seen.clear()
        metrics = trainer.step()
        want = core_algos.temperature_schedule(step, 4, 0.7, 1.3, "linear")
        assert metrics["rollout/temperature"] == pytest.approx(want)
        assert len(seen) >= 3
        assert all(t == pytest.approx(want) and ids == banned for t, ids in seen)


def test_bf16_without_deepspeed_keeps_fp32_masters_so_small_updates_add_up(tiny_model_dir, tiny_shards, tmp_path):
    """At lr 1e-6 an AdamW update is below half a bf16 ulp for most weights: stepping bf16 weights directly
    changed 0.4 % of them. The optimizer now steps fp32 masters (every element moves) and the bf16 weights are
    their rounding, so the updates accumulate instead of vanishing."""
    cfg = make_config(
        tiny_model_dir, tiny_shards, tmp_path, max_steps=3, bf16=True, learning_rate=1e-6, beta=0.0, max_grad_norm=0.0
    )
    trainer = GRPOTrainer(cfg)
    params = trainer.engine.params
    assert all(p.dtype == torch.bfloat16 for p in params)
    masters = trainer.engine.masters
    assert masters is not None and all(m.dtype == torch.float32 for m in masters)
    before = [m.detach().clone() for m in masters]
    trainer.step()
    moved = sum(int((m != b).sum()) for m, b in zip(masters, before))
    total = sum(m.numel() for m in masters)
    assert moved / total > 0.5  # all but the rows of never-seen tokens (zero gradient, so no Adam step)
    step = max(float((m - b).abs().max()) for m, b in zip(masters, before))
    assert step == pytest.approx(1e-6, rel=0.05)  # Adam's first step: lr per element
    assert all(torch.equal(p, m.to(torch.bfloat16)) for p, m in zip(params, masters))


def test_bf16_resume_restores_the_masters(tiny_model_dir, tiny_shards, tmp_path):
    cfg = dict(max_steps=3, bf16=True, learning_rate=1e-4, beta=0.0)
    a = GRPOTrainer(make_config(tiny_model_dir, tiny_shards, tmp_path / "a", **cfg))
    a.step()
    a.save()
    saved = [m.detach().clone() for m in a.engine.masters]
    want = a.step()["actor/loss"]  # before the next trainer resets the process's random state
    b = GRPOTrainer(
        make_config(
            tiny_model_dir,
            tiny_shards,
            tmp_path / "b",
            **cfg,
            resume_from_checkpoint=str(tmp_path / "a" / "checkpoints" / "step-0000001"),
        )
    )
    assert all(torch.equal(x, y) for x, y in zip(saved, b.engine.masters))
    assert b.step()["actor/loss"] == want
    assert all(torch.equal(x, y) for x, y in zip(a.engine.masters, b.engine.masters))


def test_beta_schedule_from_zero_loads_the_reference_at_setup(tiny_model_dir, tiny_shards, tmp_path):
    """Full fine-tuning with β ramping from 0 crashed at step 2 (no reference model had been loaded)."""
    cfg = make_config(
        tiny_model_dir, tiny_shards, tmp_path, max_steps=3, beta=0.0, beta_schedule="linear", beta_final=0.1
    )
    trainer = GRPOTrainer(cfg)
    assert trainer.reference is not None
    metrics = [trainer.step() for _ in range(3)]
    assert [m["actor/beta"] for m in metrics] == pytest.approx([0.0, 0.1 / 3, 0.2 / 3])
    assert metrics[0]["actor/kl"] == 0.0 and metrics[2]["actor/kl"] > 0.0


def test_warmup_applies_with_the_constant_schedule(tiny_model_dir, tiny_shards, tmp_path):
    cfg = make_config(
        tiny_model_dir,
        tiny_shards,
        tmp_path,
        max_steps=4,
        warmup_ratio=0.5,
        learning_rate=1e-3,
        lr_scheduler="constant",
    )
    trainer = GRPOTrainer(cfg)
    lrs = [trainer.step()["actor/lr"] for _ in range(4)]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])  # the lr after each step: warmup over 2 steps


def test_a_reward_that_cannot_score_gives_advantage_zero(tiny_model_dir, tiny_shards, tmp_path, monkeypatch):
    """A None score among its group mates' scores: no total, advantage 0, counted; never pushed down."""
    got = []
    real = core_algos.group_advantages
    monkeypatch.setattr(
        core_algos, "group_advantages", lambda r, *a, **k: (got.append((r, real(r, *a, **k))), got[-1][1])[1]
    )
    cfg = make_config(
        tiny_model_dir,
        tiny_shards,
        tmp_path,
        max_steps=1,
        num_generations=3,
        reward_funcs=["tests.rewards_for_tests:flaky_judge"],
    )
    metrics = GRPOTrainer(cfg).step()
    rewards, advantages = got[0]
    missing = torch.isnan(rewards)
    assert missing.tolist() == [i % 3 == 0 for i in range(rewards.numel())]
    assert (advantages[missing] == 0).all() and torch.isfinite(advantages).all()
    assert metrics["reward/total/none_ratio"] == pytest.approx(1 / 3)
    assert metrics["reward/tests.rewards_for_tests:flaky_judge/none_ratio"] == pytest.approx(1 / 3)
    assert math.isfinite(metrics["reward/total"])


def test_resume_with_mu_two_equals_uninterrupted(tiny_model_dir, tiny_shards, tmp_path):
    """Checkpoints fall between trainer steps (after all μ optimizer steps), so resume stays exact with μ > 1."""
    cfg = dict(max_steps=3, num_iterations=2, micro_batch_size=2)
    full = GRPOTrainer(make_config(tiny_model_dir, tiny_shards, tmp_path / "a", **cfg))
    full.step()
    full.save()
    want = [full.step()["actor/loss"] for _ in range(2)]
    resumed = GRPOTrainer(
        make_config(
            tiny_model_dir,
            tiny_shards,
            tmp_path / "b",
            **cfg,
            resume_from_checkpoint=str(tmp_path / "a" / "checkpoints" / "step-0000001"),
        )
    )
    assert resumed.engine.scheduler.last_epoch == 2
    assert [resumed.step()["actor/loss"] for _ in range(2)] == want
