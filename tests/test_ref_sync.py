"""The reference that follows the policy (`ref_sync_steps`, `ref_sync_alpha`) and the entropy term of either sign
(`entropy_coef`) through the trainer on the tiny model, in one process; ZeRO-3 on 2 ranks is in
test_ref_sync_distributed.py."""

import math

import pytest
import torch

from omni_grpo.config import ConfigError
from omni_grpo.trainer import GRPOTrainer
from tests.helpers import snapshot
from tests.test_trainer import make_config


def run(trainer, steps: int) -> list[dict]:
    return [trainer.step() for _ in range(steps)]


def reference_params(trainer) -> dict:
    return dict(trainer.reference.named_parameters())


@pytest.mark.parametrize("bf16", [False, True])
def test_alpha_one_makes_kl_exactly_zero_at_the_step_after_each_sync(tiny_model_dir, tiny_shards, tmp_path, bf16):
    """Synced (a copy) after steps 2 and 4: steps 3 and 5 score against a reference equal to the policy that
    sampled them, so their KL is exactly 0; steps 2 and 4 (the policy moved since the last sync) are not. In
    bf16 the copy is of the model's bf16 weights (the optimizer's fp32 masters are not what the policy runs)."""
    trainer = GRPOTrainer(
        make_config(tiny_model_dir, tiny_shards, tmp_path, max_steps=5, ref_sync_steps=2, ref_sync_alpha=1.0, bf16=bf16)
    )
    kl = [m["actor/kl"] for m in run(trainer, 2)]
    policy = dict(trainer.policy.named_parameters())
    assert all(torch.equal(p, policy[n]) for n, p in reference_params(trainer).items())
    kl += [m["actor/kl"] for m in run(trainer, 3)]
    assert kl[0] == 0.0 and kl[2] == 0.0 and kl[4] == 0.0, kl
    assert kl[1] > 0.0 and kl[3] > 0.0, kl


def test_soft_sync_mixes_the_reference_with_the_policy(tiny_model_dir, tiny_shards, tmp_path):
    """α = 0.5 after every step: the reference is the mean of the policy after the step and the reference
    before it (exact in float32 with α = 0.5), and the frozen towers, equal in both, stay as they were."""
    trainer = GRPOTrainer(
        make_config(tiny_model_dir, tiny_shards, tmp_path, max_steps=2, ref_sync_steps=1, ref_sync_alpha=0.5)
    )
    before = {n: p.detach().clone() for n, p in reference_params(trainer).items()}
    run(trainer, 1)
    policy = dict(trainer.policy.named_parameters())
    moved = [n for n, p in policy.items() if not torch.equal(p, before[n])]
    assert moved
    for n, p in reference_params(trainer).items():
        assert torch.equal(p, 0.5 * policy[n].detach() + 0.5 * before[n]), n
    assert run(trainer, 1)[0]["actor/kl"] > 0.0  # half-way: neither the policy nor the initial model


def test_resume_with_a_synced_reference_equals_uninterrupted(tiny_model_dir, tiny_shards, tmp_path):
    """The reference is part of the run's state: saved at step 2 after a soft sync, restored on resume, so
    steps 3-4 (KL against it, a sync at 4) match the uninterrupted run exactly. A resumed run that rebuilt the
    reference from the initial model would score a different KL at step 3."""
    options = dict(max_steps=4, ref_sync_steps=2, ref_sync_alpha=0.5)
    full = GRPOTrainer(make_config(tiny_model_dir, tiny_shards, tmp_path / "a", **options))
    run(full, 2)
    full.save()
    rest = run(full, 2)
    resumed = GRPOTrainer(
        make_config(
            tiny_model_dir,
            tiny_shards,
            tmp_path / "b",
            **options,
            resume_from_checkpoint=str(tmp_path / "a" / "checkpoints" / "step-0000002"),
        )
    )
    again = run(resumed, 2)
    for key in ("actor/loss", "actor/kl"):
        assert [m[key] for m in again] == [m[key] for m in rest], key
    assert all(math.isfinite(m["actor/kl"]) and m["actor/kl"] > 0 for m in rest)
    mine = reference_params(resumed)
    assert all(torch.equal(p, mine[n]) for n, p in reference_params(full).items())


def test_a_saved_reference_of_another_model_is_refused_in_one_line(tiny_model_dir, tiny_shards, tmp_path):
    from safetensors.torch import save_file

    from omni_grpo.checkpoint import CheckpointError

    options = dict(max_steps=2, ref_sync_steps=1, ref_sync_alpha=1.0)
    trainer = GRPOTrainer(make_config(tiny_model_dir, tiny_shards, tmp_path / "a", **options))
    run(trainer, 1)
    folder = trainer.save()
    save_file({"not.a.parameter": torch.zeros(2)}, str(folder / "reference.safetensors"))
    with pytest.raises(CheckpointError) as info:
        GRPOTrainer(
            make_config(tiny_model_dir, tiny_shards, tmp_path / "b", **options, resume_from_checkpoint=str(folder))
        )
    assert "reference.safetensors" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (dict(ref_sync_steps=-1), "ref_sync_steps=-1 must be >= 0"),
        (dict(ref_sync_steps=2, ref_sync_alpha=0.0), "ref_sync_alpha=0.0 must be in (0, 1]"),
        (dict(ref_sync_steps=2, ref_sync_alpha=1.5), "ref_sync_alpha=1.5 must be in (0, 1]"),
        (dict(ref_sync_steps=2, beta=0.0), "ref_sync_steps=2 needs a reference model"),
        ({"ref_sync_steps": 2, "lora.enabled": True}, "set lora.enabled=false or ref_sync_steps=0"),
    ],
)
def test_bad_sync_settings_are_refused_in_one_line(tiny_model_dir, tiny_shards, tmp_path, overrides, fragment):
    with pytest.raises(ConfigError) as info:
        make_config(tiny_model_dir, tiny_shards, tmp_path, **overrides)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "trl, ours", [("ref_model_sync_steps", "ref_sync_steps"), ("ref_model_mixup_alpha", "ref_sync_alpha")]
)
def test_trl_names_point_to_ours(tiny_model_dir, tiny_shards, tmp_path, trl, ours):
    with pytest.raises(ConfigError, match=f"did you mean '{ours}'"):
        make_config(tiny_model_dir, tiny_shards, tmp_path, **{trl: 1})


def test_sync_off_keeps_the_initial_reference(tiny_model_dir, tiny_shards, tmp_path):
    trainer = GRPOTrainer(make_config(tiny_model_dir, tiny_shards, tmp_path, max_steps=2))
    assert trainer.cfg.ref_sync_steps == 0
    before = snapshot(trainer.reference)
    run(trainer, 2)
    assert all(torch.equal(p, before[n]) for n, p in reference_params(trainer).items())


def entropy_curve(model_dir, shards, out, coef: float) -> list[float]:
    """actor/entropy of 4 steps where the entropy term is all that trains: the format reward is 0 for every
    completion of the random model (advantages 0), β = 0, and the zero rows are not skipped."""
    trainer = GRPOTrainer(
        make_config(
            model_dir,
            shards,
            out,
            max_steps=4,
            beta=0.0,
            entropy_coef=coef,
            learning_rate=1e-2,
            reward_funcs=["format"],
            skip_zero_advantage_rows=False,
            dataset_order="sequential",
        )
    )
    steps = run(trainer, 4)
    assert all(m["reward/total"] == 0.0 for m in steps)
    return [m["actor/entropy"] for m in steps]


def test_entropy_coef_sign_moves_actor_entropy_the_way_it_says(tiny_model_dir, tiny_shards, tmp_path, monkeypatch):
    """Same seed, same data: against entropy_coef = 0, a positive weight raises actor/entropy and a negative one
    lowers it at every step after the first (measured before any update: all three agree). The metric reads
    every completion position here, as it does when the term is on, so the three runs measure alike."""
    monkeypatch.setattr("omni_grpo.trainer.METRIC_ENTROPY_STRIDE", 1)
    curves = {c: entropy_curve(tiny_model_dir, tiny_shards, tmp_path / str(c), c) for c in (-1.0, 0.0, 1.0)}
    assert curves[-1.0][0] == curves[0.0][0] == curves[1.0][0], curves
    assert all(lo < mid < hi for lo, mid, hi in zip(curves[-1.0][1:], curves[0.0][1:], curves[1.0][1:])), curves
