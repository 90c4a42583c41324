"""The reference-sync mix (`core_algos.mix_reference_`, `reference_sync_due`) and the entropy term's sign
(`policy_loss`'s `entropy_coef`), checked by hand on plain tensors."""

import pytest
import torch

from omni_grpo.core_algos import mix_reference_, policy_loss, reference_sync_due


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_alpha_one_copies_the_policy_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(0)
    ref = [torch.randn(5, 7, generator=g).to(dtype), torch.randn(3, generator=g).to(dtype)]
    pol = [torch.randn(5, 7, generator=g).to(dtype), torch.randn(3, generator=g).to(dtype)]
    kept = [r.data_ptr() for r in ref]
    mix_reference_(ref, pol, 1.0)
    assert all(torch.equal(r, p) for r, p in zip(ref, pol))
    assert [r.data_ptr() for r in ref] == kept  # in place: a model's parameters stay its parameters


def test_soft_update_hand_computed():
    ref, pol = [torch.tensor([1.0, 2.0, -4.0])], [torch.tensor([3.0, 2.0, 0.0])]
    mix_reference_(ref, pol, 0.25)
    torch.testing.assert_close(ref[0], torch.tensor([1.5, 2.0, -3.0]), atol=0, rtol=0)


def test_bf16_is_mixed_in_float32_and_rounded_once():
    """A bf16 mix equals the float32 mix rounded once; in-place bf16 arithmetic (round after the scale, then
    after the add) differs from it on some elements, so the test tells the two apart."""
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(4096, generator=g).to(torch.bfloat16)
    pol = (ref.float() + 1e-2 * torch.randn(4096, generator=g)).to(torch.bfloat16)
    alpha = 0.6
    want = (alpha * pol.float() + (1 - alpha) * ref.float()).to(torch.bfloat16)
    twice = ref.clone().mul_(1 - alpha).add_(pol, alpha=alpha)
    assert not torch.equal(twice, want)
    got = ref.clone()
    mix_reference_([got], [pol], alpha)
    assert torch.equal(got, want)


def test_repeated_soft_updates_converge_to_the_policy():
    ref, pol = [torch.zeros(4)], [torch.ones(4)]
    for _ in range(3):
        mix_reference_(ref, pol, 0.5)
    torch.testing.assert_close(ref[0], torch.full((4,), 0.875), atol=0, rtol=0)


@pytest.mark.parametrize("alpha", [0.0, -0.5, 1.5, float("nan")])
def test_alpha_outside_zero_one_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha must be in"):
        mix_reference_([torch.zeros(2)], [torch.ones(2)], alpha)


def test_mismatched_tensors_are_refused_before_anything_changes():
    ref = [torch.zeros(2), torch.zeros(3)]
    with pytest.raises(ValueError, match="tensor 1"):
        mix_reference_(ref, [torch.ones(2), torch.ones(4)], 1.0)
    assert all(not r.any() for r in ref)
    with pytest.raises(ValueError, match="2 reference tensors but 1 policy"):
        mix_reference_(ref, [torch.ones(2)], 1.0)


def test_sync_due_every_n_finished_steps():
    assert [s for s in range(0, 9) if reference_sync_due(s, 3)] == [3, 6]
    assert not any(reference_sync_due(s, 0) for s in range(5))
    with pytest.raises(ValueError):
        reference_sync_due(1, -1)


@pytest.mark.parametrize("coef", [-0.5, 0.5])
def test_entropy_coef_sign_moves_entropy_the_way_it_says(coef):
    """A few gradient steps on logits through `policy_loss` (zero advantages: the entropy term alone): a
    positive weight raises the entropy of the sampled positions' distributions, a negative one lowers it."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 11, generator=g).requires_grad_(True)  # [B, L, V]
    mask = torch.ones(3, 4)

    def entropy():
        logp = torch.log_softmax(logits, -1)
        return -(logp.exp() * logp).sum(-1)  # [B, L]

    start = float(entropy().mean().detach())
    opt = torch.optim.SGD([logits], lr=0.5)
    for _ in range(5):
        lp = torch.log_softmax(logits, -1)[..., 0]  # [B, L] any token: the ratio is 1 and A = 0
        loss, _ = policy_loss(lp, lp.detach(), torch.zeros(3), mask, entropy=entropy(), entropy_coef=coef)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = float(entropy().mean().detach())
    assert (end > start) if coef > 0 else (end < start)
