"""Hand-computed checks of omni_grpo.core_algos, and the proof that loss aggregation does not depend on how an
optimizer step is split over micro-batches and ranks."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_grpo.core_algos import (
    agg_loss,
    group_advantages,
    group_reward_totals,
    kl_coef_schedule,
    kl_penalty,
    loss_normalisers,
    masked_mean,
    policy_loss,
    temperature_schedule,
)

LOSS_AGGS = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]


def close(actual, expected, tol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        atol=tol,
        rtol=0,
    )


# ----------------------------------------------------------------------------------------------- advantages


def test_group_advantages_group_scale_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 3.0, 3.0])
    # group 0: mean 0.5, unbiased std sqrt(0.5); group 1: all equal
    expected = [0.5 / math.sqrt(0.5), -0.5 / math.sqrt(0.5), 0.0, 0.0]
    close(group_advantages(rewards, 2, "group", eps=0.0), expected)


def test_group_advantages_batch_scale_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 3.0, 3.0])
    # batch mean 1.75, squared deviations sum to 6.75, unbiased variance 2.25, std 1.5
    close(group_advantages(rewards, 2, "batch", eps=0.0), [0.5 / 1.5, -0.5 / 1.5, 0.0, 0.0])


def test_group_advantages_no_scale_only_centres():
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 5.0])
    close(group_advantages(rewards, 3, "none"), [2 / 3, -1 / 3, -1 / 3, -1.0, -1.0, 2.0])


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_sum_to_zero_per_group(scale):
    rewards = torch.tensor([0.3, 1.0, 0.0, 0.7, 2.0, -1.0, 0.5, 0.5, 0.1, 0.2, 0.9, 0.4])
    advantages = group_advantages(rewards, 4, scale).view(3, 4)
    close(advantages.sum(dim=1), [0.0, 0.0, 0.0], tol=1e-5)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("eps", [1e-6, 0.0])
def test_equal_reward_group_gets_exactly_zero(scale, eps):
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.0, 0.7, 0.7, 0.7])
    advantages = group_advantages(rewards, 3, scale, eps=eps)
    assert torch.isfinite(advantages).all()
    assert (advantages[:3] == 0).all() and (advantages[6:] == 0).all()
    everything_equal = group_advantages(torch.full((6,), 0.3), 3, scale, eps=eps)
    assert (everything_equal == 0).all()


def test_group_advantages_rejects_bad_input():
    with pytest.raises(ValueError, match="inf"):
        group_advantages(torch.tensor([1.0, float("inf")]), 2)
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.ones(4), 3)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.ones(4), 1)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.ones(4), 2, scale="global")


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_a_missing_total_gets_advantage_zero_and_stays_out_of_its_group(scale):
    """Issue 13 item 7: the audit's judge failure on 1 of 4 completions. Summed as 0 it got −1.5; now it gets
    0 and the other three are compared among themselves (here: all equal, so all 0)."""
    nan = float("nan")
    adv = group_advantages(torch.tensor([0.6, 0.6, nan, 0.6]), 4, scale)
    assert (adv == 0).all()
    adv = group_advantages(torch.tensor([1.0, 0.0, nan, 0.5, 0.2, 0.2, 0.2, 0.9]), 4, scale)
    three = group_advantages(torch.tensor([1.0, 0.0, 0.5]), 3, "none")
    assert adv[2] == 0 and torch.isfinite(adv).all()
    if scale == "none":
        assert torch.allclose(adv[[0, 1, 3]], three)
    if scale == "group":
        assert torch.allclose(adv[[0, 1, 3]], group_advantages(torch.tensor([1.0, 0.0, 0.5]), 3, "group"))
    assert adv[[0, 1, 3]].sum().abs() < 1e-6  # centred on the three that have a total


def test_group_reward_totals_rule():
    """A reward absent for the whole group is left out; a completion missing a score its mates have has no
    total; a weight-0 reward never matters; with groups of 1 it is a sum over the scored rewards."""
    nan = float("nan")
    w = torch.tensor([1.0, 0.5, 0.0])
    scores = torch.tensor(
        [
            [1.0, nan, 3.0],
            [0.0, nan, nan],  # group 0: reward 1 scores nobody → left out
            [1.0, 1.0, 0.0],
            [1.0, nan, 0.0],  # group 1: row 3 lacks reward 1 → NaN
        ]
    )
    totals = group_reward_totals(scores, w, 2)
    assert totals[:3].tolist() == [1.0, 0.0, 1.5] and torch.isnan(totals[3])
    assert group_reward_totals(scores, w, 1).tolist() == [1.0, 0.0, 1.5, 1.0]


# ------------------------------------------------------------------------------------------------------ KL


@pytest.mark.parametrize("kind, want", [("k1", "zero"), ("k2", "reverse"), ("k3", "forward")])
def test_kl_estimator_expected_gradients_by_exact_enumeration(kind, want):
    """Issue 13 item 5. Over a 6-token vocabulary, E_{x~π}[∇_θ k(x)] computed exactly (a sum weighted by π, the
    gradient only through log π(x), as in the loss): k1 → 0, k2 → ∇KL(π‖ref), k3 → ∇KL(ref‖π)."""
    torch.manual_seed(0)
    theta = torch.randn(6, dtype=torch.float64, requires_grad=True)
    ref = torch.log_softmax(torch.randn(6, dtype=torch.float64), -1)
    logp = torch.log_softmax(theta, -1)
    pi = logp.exp().detach()
    per_token = kl_penalty(logp, ref, kind)  # every token of the vocabulary as a "sample"
    (expected_grad,) = torch.autograd.grad((pi * per_token).sum(), theta, retain_graph=True)
    if want == "zero":
        target = torch.zeros(6, dtype=torch.float64)
    elif want == "reverse":
        (target,) = torch.autograd.grad((logp.exp() * (logp - ref)).sum(), theta)
    else:
        (target,) = torch.autograd.grad((ref.exp() * (ref - logp)).sum(), theta)
    assert torch.allclose(expected_grad, target, atol=1e-12)
    if want != "zero":
        assert target.abs().max() > 0.05  # a real gradient, so the assertion above has teeth


def test_kl_estimators_hand_computed():
    log_probs = torch.tensor([[-1.0, -2.0, -0.3]])
    ref_log_probs = torch.tensor([[-1.5, -1.0, -0.3]])
    # log-ratio logp - ref = [0.5, -1.0, 0]
    close(kl_penalty(log_probs, ref_log_probs, "k1"), [[0.5, -1.0, 0.0]])
    close(kl_penalty(log_probs, ref_log_probs, "k2"), [[0.125, 0.5, 0.0]])
    # ref - logp = [-0.5, 1.0, 0]: exp(d) - d - 1
    close(kl_penalty(log_probs, ref_log_probs, "k3"), [[math.exp(-0.5) - 0.5, math.e - 2.0, 0.0]])


def test_k3_is_exactly_zero_when_equal_and_clamped_when_far():
    log_probs = torch.tensor([[-0.1, -7.3, -1e-8]])
    assert (kl_penalty(log_probs, log_probs.clone(), "k3") == 0).all()
    far = kl_penalty(torch.tensor([[0.0, -100.0]]), torch.tensor([[-100.0, 0.0]]), "k3")
    assert torch.isfinite(far).all()
    torch.testing.assert_close(far, torch.tensor([[math.exp(-20) + 19.0, math.exp(20) - 21.0]]), rtol=1e-6, atol=0)


def test_k3_gradient_is_zero_at_reference():
    log_probs = torch.tensor([[-0.5, -2.0]], requires_grad=True)
    kl_penalty(log_probs, log_probs.detach(), "k3").sum().backward()
    assert (log_probs.grad == 0).all()


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.floats(-60.0, 0.0, allow_nan=False), st.floats(-60.0, 0.0, allow_nan=False)),
        min_size=1,
        max_size=16,
    ),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_k3_and_k2_are_non_negative(pairs, dtype):
    log_probs = torch.tensor([[p for p, _ in pairs]], dtype=dtype)
    ref_log_probs = torch.tensor([[r for _, r in pairs]], dtype=dtype)
    for kind in ("k2", "k3"):
        kl = kl_penalty(log_probs, ref_log_probs, kind)
        assert torch.isfinite(kl).all()
        assert (kl >= 0).all()


# ------------------------------------------------------------------------------------------------ policy loss

# Old policy log-probs are 0, so ratio = exp(log_probs). Row 0 (A = +1) ratios 1.5, 0.5, 1.0; row 1 (A = -2)
# ratios 0.7, 1.1 and a masked-out 1.3. Per-token surrogate with clip 0.2:
#   row 0: max(-1.5, -1.2) = -1.2 (high clip), max(-0.5, -0.8) = -0.5, -1.0
#   row 1: max(1.4, 1.6) = 1.6 (low clip), max(2.2, 2.2) = 2.2
RATIOS = [[1.5, 0.5, 1.0], [0.7, 1.1, 1.3]]
ADVANTAGES = [1.0, -2.0]
MASK = [[1, 1, 1], [1, 1, 0]]


def hand_case():
    log_probs = torch.tensor(RATIOS, dtype=torch.float64).log().requires_grad_(True)
    return (
        log_probs,
        torch.zeros(2, 3, dtype=torch.float64),
        torch.tensor(ADVANTAGES, dtype=torch.float64),
        (torch.tensor(MASK, dtype=torch.bool)),
    )


@pytest.mark.parametrize(
    "loss_agg, kwargs, expected",
    [
        ("token_mean", {}, 1.1 / 5),
        ("seq_mean_token_mean", {}, (-2.7 / 3 + 3.8 / 2) / 2),
        ("seq_mean_token_sum_norm", {"max_length": 4}, (-2.7 / 4 + 3.8 / 4) / 2),
    ],
)
def test_policy_loss_hand_computed(loss_agg, kwargs, expected):
    log_probs, old_log_probs, advantages, mask = hand_case()
    loss, metrics = policy_loss(log_probs, old_log_probs, advantages, mask, 0.2, 0.2, loss_agg, **kwargs)
    close(loss, expected)
    close(metrics["clip_ratio_high"], 0.2)
    close(metrics["clip_ratio_low"], 0.2)
    close(metrics["clip_ratio"], 0.4)
    close(metrics["pg_loss"], 1.1 / 5)


def test_policy_loss_gradient_is_zero_on_clipped_and_masked_tokens():
    log_probs, old_log_probs, advantages, mask = hand_case()
    loss, _ = policy_loss(log_probs, old_log_probs, advantages, mask)
    loss.backward()
    # d/dlogp of -A*ratio is -A*ratio; divided by the 5 tokens of token_mean
    close(log_probs.grad, [[0.0, -0.5 / 5, -1.0 / 5], [0.0, 2.0 * 1.1 / 5, 0.0]])


def test_clip_higher_widens_only_the_upper_bound():
    log_probs, old_log_probs, advantages, mask = hand_case()
    _, metrics = policy_loss(log_probs, old_log_probs, advantages, mask, clip_low=0.2, clip_high=0.6)
    close(metrics["clip_ratio_high"], 0.0)
    close(metrics["clip_ratio_low"], 0.2)


def test_policy_loss_adds_kl_and_entropy_terms():
    log_probs, old_log_probs, advantages, mask = hand_case()
    ref_log_probs = torch.full((2, 3), -0.2, dtype=torch.float64)
    entropy = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
    loss, metrics = policy_loss(
        log_probs,
        old_log_probs,
        advantages,
        mask,
        ref_log_probs=ref_log_probs,
        beta=0.1,
        entropy=entropy,
        entropy_coef=0.01,
    )
    kl = kl_penalty(log_probs, ref_log_probs, "k3")
    expected = 1.1 / 5 + 0.1 * agg_loss(kl, mask, "token_mean") - 0.01 * 15.0 / 5
    close(loss, expected)
    close(metrics["entropy"], 3.0)
    close(metrics["kl"], masked_mean(kl, mask))
    with pytest.raises(ValueError, match="ref_log_probs"):
        policy_loss(log_probs, old_log_probs, advantages, mask, beta=0.1)


def test_policy_loss_with_ratio_one_is_plain_policy_gradient():
    log_probs, _, advantages, mask = hand_case()
    loss, metrics = policy_loss(log_probs, log_probs.detach(), advantages, mask)
    close(loss, (-1.0 * 3 + 2.0 * 2) / 5)
    close(metrics["clip_ratio"], 0.0)


# ------------------------------------------------------------------------------------------- aggregation


def test_agg_loss_hand_computed_and_ignores_nan_padding():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, float("nan"), float("nan")], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    close(agg_loss(per_token, mask, "token_mean"), 10.0 / 4)
    close(agg_loss(per_token, mask, "seq_mean_token_mean"), (2.0 + 4.0) / 2)  # empty row not counted
    close(agg_loss(per_token, mask, "seq_mean_token_sum_norm", max_length=5), (6.0 / 5 + 4.0 / 5) / 2)
    tokens, seqs = loss_normalisers(mask)
    assert (tokens.item(), seqs.item()) == (4.0, 2.0)


def test_agg_loss_rejects_misuse():
    per_token, mask = torch.ones(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="max_length"):
        agg_loss(per_token, mask, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="all micro-batches and ranks"):
        agg_loss(per_token, mask, "token_mean", global_tokens=4)
    with pytest.raises(ValueError, match="shape"):
        agg_loss(per_token, torch.ones(2, 4), "token_mean")
    with pytest.raises(ValueError, match="loss_agg"):
        agg_loss(per_token, mask, "sum")


def _split_case():
    generator = torch.Generator().manual_seed(0)
    rows, length, dim = 7, 6, 4
    features = torch.randn(rows, length, dim, generator=generator, dtype=torch.float64)
    old_log_probs = -torch.rand(rows, length, generator=generator, dtype=torch.float64) * 2
    ref_log_probs = -torch.rand(rows, length, generator=generator, dtype=torch.float64) * 2
    advantages = torch.randn(rows, generator=generator, dtype=torch.float64)
    lengths = [6, 1, 3, 0, 5, 2, 4]  # uneven, with one row that has no completion token
    mask = torch.arange(length).expand(rows, length) < torch.tensor(lengths).unsqueeze(1)
    return features, old_log_probs, ref_log_probs, advantages, mask


def _micro_loss(weight, rows, case, loss_agg, **normalisers):
    features, old_log_probs, ref_log_probs, advantages, mask = case
    log_probs = -torch.nn.functional.softplus(features[rows] @ weight)  # [b, L]
    loss, _ = policy_loss(
        log_probs,
        old_log_probs[rows],
        advantages[rows],
        mask[rows],
        0.2,
        0.28,
        loss_agg,
        ref_log_probs=ref_log_probs[rows],
        beta=0.04,
        max_length=6,
        **normalisers,
    )
    return loss


def _global_normalisers(mask):
    tokens, seqs = loss_normalisers(mask)
    return {"global_tokens": tokens, "global_seqs": seqs}


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_gradient_does_not_depend_on_micro_batches_or_ranks(loss_agg):
    case = _split_case()
    mask = case[-1]
    weight0 = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    # Full batch in one call, local normalisers.
    weight = weight0.clone().requires_grad_(True)
    full_loss = _micro_loss(weight, slice(0, 7), case, loss_agg)
    full_loss.backward()
    full_grad = weight.grad.clone()

    # Three uneven micro-batches on one rank, as DeepSpeed would run them with gradient accumulation:
    # backward(loss * world_size * gas) is divided by gas inside the engine.
    normalisers = _global_normalisers(mask)
    weight = weight0.clone().requires_grad_(True)
    micro_batches = [slice(0, 1), slice(1, 5), slice(5, 7)]
    gas, world_size = len(micro_batches), 1
    summed = 0.0
    for rows in micro_batches:
        loss = _micro_loss(weight, rows, case, loss_agg, **normalisers)
        (loss * world_size * gas / gas).backward()
        summed += loss.item()
    close(summed, full_loss.item(), tol=1e-10)
    close(weight.grad, full_grad, tol=1e-6)

    # Two ranks with uneven row counts, two micro-batches each; the all-reduce averages over ranks.
    ranks = [[slice(0, 1), slice(1, 4)], [slice(4, 5), slice(5, 7)]]
    world_size = len(ranks)
    rank_grads = []
    for rank_micro_batches in ranks:
        weight = weight0.clone().requires_grad_(True)
        gas = len(rank_micro_batches)
        for rows in rank_micro_batches:
            loss = _micro_loss(weight, rows, case, loss_agg, **normalisers)
            (loss * world_size * gas / gas).backward()
        rank_grads.append(weight.grad.clone())
    close(torch.stack(rank_grads).mean(dim=0), full_grad, tol=1e-6)


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_mean"])
def test_local_normalisers_would_depend_on_the_split(loss_agg):
    case = _split_case()
    weight0 = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    weight = weight0.clone().requires_grad_(True)
    _micro_loss(weight, slice(0, 7), case, loss_agg).backward()
    full_grad = weight.grad.clone()
    weight = weight0.clone().requires_grad_(True)
    for rows in [slice(0, 1), slice(1, 5), slice(5, 7)]:
        (_micro_loss(weight, rows, case, loss_agg) / 3).backward()
    assert not torch.allclose(weight.grad, full_grad, atol=1e-6)


# ------------------------------------------------------------------------------------------------ masked mean


def test_masked_mean():
    x = torch.tensor([[1.0, 2.0], [float("nan"), 4.0]])
    mask = torch.tensor([[1, 1], [0, 1]])
    close(masked_mean(x, mask), 7.0 / 3)
    close(masked_mean(x, mask, dim=-1), [1.5, 4.0])
    close(masked_mean(x, torch.zeros(2, 2)), 0.0)


# ---------------------------------------------------------------------------------------------- schedules


def test_kl_coef_schedule_start_middle_end():
    assert kl_coef_schedule(0, 100, 0.04) == 0.04
    assert kl_coef_schedule(99, 100, 0.04, beta_final=0.5) == 0.04  # constant ignores beta_final
    close(kl_coef_schedule(0, 100, 0.0, 0.1, "linear", fraction=0.5), 0.0)
    close(kl_coef_schedule(25, 100, 0.0, 0.1, "linear", fraction=0.5), 0.05)
    close(kl_coef_schedule(50, 100, 0.0, 0.1, "linear", fraction=0.5), 0.1)
    close(kl_coef_schedule(100, 100, 0.0, 0.1, "linear", fraction=0.5), 0.1)
    with pytest.raises(ValueError, match="beta_final"):
        kl_coef_schedule(1, 100, 0.04, kind="linear")
    with pytest.raises(ValueError, match="kind"):
        kl_coef_schedule(1, 100, 0.04, 0.1, kind="cosine")


def test_temperature_schedule_start_middle_end():
    assert temperature_schedule(5, 10, 0.9) == 0.9
    close(temperature_schedule(0, 10, 1.0, 0.5, "linear"), 1.0)
    close(temperature_schedule(5, 10, 1.0, 0.5, "linear"), 0.75)
    close(temperature_schedule(10, 10, 1.0, 0.5, "linear"), 0.5)
    close(temperature_schedule(20, 10, 1.0, 0.5, "linear"), 0.5)
    with pytest.raises(ValueError, match="temperature_final"):
        temperature_schedule(0, 10, 1.0, 0.0, "linear")
    with pytest.raises(ValueError, match="beta_final"):
        kl_coef_schedule(0, 10, 0.1, -0.1, "linear")
