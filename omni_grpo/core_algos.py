"""The RL math of omni-grpo: pure torch functions, no model, no config, no state.

Algorithm: GRPO (Shao et al., "DeepSeekMath", 2024, arXiv:2402.03300, section 4.1).
For each prompt, G completions are sampled; their scalar rewards are normalised within the group to give
one advantage per completion, broadcast to all of its tokens; the policy maximises a PPO clipped surrogate
minus β·KL(π‖π_ref), the KL estimated per token with Schulman's k3 estimator.

Departures from the paper, each one opt-in or documented where it happens:

- Advantage scale (`group_advantages`): besides the paper's (r − mean_g) / std_g, "batch" divides by the
  standard deviation of the whole batch (REINFORCE++, arXiv:2501.03262; noted in Dr.GRPO) and "none" only
  centres (Dr.GRPO, Liu et al., "Understanding R1-Zero-Like Training", arXiv:2503.20783).
  Standard deviations use Bessel's correction (unbiased=True), as TRL and verl do, so that hyper-parameters
  carry over. A group whose rewards are all equal gets exactly 0 (the paper leaves 0/0 undefined).
- Clipping (`policy_loss`): asymmetric range [1 − clip_low, 1 + clip_high] ("clip-higher", DAPO,
  arXiv:2503.14476); clip_low = clip_high gives the paper's symmetric PPO clip.
- Loss aggregation (`agg_loss`): "seq_mean_token_mean" is the paper's 1/G Σ_i 1/|o_i| Σ_t;
  "token_mean" is DAPO's token-level mean; "seq_mean_token_sum_norm" is Dr.GRPO's sum divided by a
  constant generation budget. All three accept global normalisers so that the gradient does not depend on
  how an optimizer step's rows are split over micro-batches and ranks.
- Log-ratios are clamped to [-20, 20] before exponentiation (ratio and k3), as verl does, to keep a stale
  or diverging token from producing inf; inside that range the values are exact.
- Entropy term (`policy_loss`'s `entropy_coef`, per token before aggregation): optional, off by default,
  either sign, not in the paper. The loss is pg − entropy_coef·H, as verl's `entropy_coeff`: a positive
  weight rewards entropy (raises it: exploration, open-ended answers), a negative one penalises it (lowers it:
  sharper answers for discriminative tasks such as a letter or a count). The entropy itself comes from the
  log-prob pass (`models.logprobs.log_probs`).
- Reference that follows the policy (`mix_reference_`, `reference_sync_due`): every N steps the reference
  becomes α·policy + (1 − α)·reference, TR-DPO's soft (α < 1) and hard (α = 1) updates (Gorbatovski et al.,
  "Learn Your Reference Model for Real Good Alignment", arXiv:2404.09656; TRL's `sync_ref_model`); α = 1 is
  Kimi k1.5's reset of the reference to the current policy (arXiv:2501.12599). Off by default: the paper's
  reference is the initial policy throughout.
- Dynamic sampling (`group_spread`, `pick_groups`; DAPO §3.2): groups whose rewards are all equal are left
  out and more are drawn; at the extra-round cap the earliest constant groups fill the step (verl raises).
- Schedules: β and the sampling temperature may ramp linearly over training (HumanOmniV2's dynamic KL,
  arXiv:2506.21277); constant by default, as in the paper.

Naming follows the rest of the project: `log_probs` (policy, with grad), `old_log_probs` (policy at
rollout time), `ref_log_probs` (reference), `completion_mask` (1 for completion tokens that count),
`advantages`. Shapes: B rows (B = prompts × G), L completion tokens, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = [
    "ADVANTAGE_SCALES",
    "KL_ESTIMATORS",
    "LOSS_AGGS",
    "SCHEDULE_KINDS",
    "agg_loss",
    "group_advantages",
    "group_reward_totals",
    "group_spread",
    "kl_coef_schedule",
    "kl_penalty",
    "loss_normalisers",
    "masked_mean",
    "mix_reference_",
    "pick_groups",
    "policy_loss",
    "reference_sync_due",
    "temperature_schedule",
]

ADVANTAGE_SCALES = ("group", "batch", "none")
KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGGS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
SCHEDULE_KINDS = ("constant", "linear")

LOG_RATIO_CLAMP = 20.0


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is true; 0 where nothing is masked in.

    Masked-out positions are selected away with `torch.where`, so NaN or inf there (for example the
    log-prob of a padding token) does not leak into the result. Same as verl's `masked_mean`, plus the
    empty-mask guard.
    """
    mask = mask.bool()  # [.., L]
    total = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=dim)
    count = mask.sum(dim=dim).clamp(min=1)
    return total / count


def group_reward_totals(scores: torch.Tensor, weights: torch.Tensor, group_size: int) -> torch.Tensor:
    """Weighted total reward per completion, NaN where it cannot be computed.  `[N, F], [F] -> [N]`.

    `scores[i, f]` is reward f of completion i, NaN where that reward returned None ("cannot score"). Rows
    are consecutive groups of `group_size`. The rule, per group:

    - a reward that scored none of the group's completions (NaN for all G) is left out of that group's
      totals: it carries no comparison within the group (e.g. an accuracy reward on a question type it
      does not grade);
    - a completion that lacks a score its group mates have (one failed judge call among G) has no total:
      NaN. `group_advantages` leaves it out of its group's statistics and gives it advantage 0, so a
      failure never pushes a completion down (summing None as 0 did: totals [.6, .6, 0, .6] → −1.5);
    - rewards with weight 0 never matter.
    """
    if scores.dim() != 2 or scores.shape[1] != weights.numel():
        raise ValueError(f"scores must be [N, F] with F = {weights.numel()} weights, got {tuple(scores.shape)}")
    n, f = scores.shape
    if n % group_size != 0:
        raise ValueError(f"{n} completions do not split into groups of {group_size}")
    weights = weights.to(scores)
    used = (weights != 0).view(1, 1, f)  # [1, 1, F]
    grouped = scores.view(-1, group_size, f)  # [B, G, F]
    scored = ~torch.isnan(grouped)  # [B, G, F]
    counts = scored.any(dim=1, keepdim=True) & used  # [B, 1, F]  rewards that score some of the group
    complete = (scored | ~counts).all(dim=-1)  # [B, G]
    total = torch.where(counts & scored, grouped * weights.view(1, 1, f), torch.zeros_like(grouped)).sum(-1)
    return torch.where(complete, total, torch.full_like(total, float("nan"))).reshape(-1)  # [N]


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale: str = "group",
    eps: float = 1e-6,
) -> torch.Tensor:
    """One advantage per completion from its reward and the rewards of its group.

    `rewards` is `[B*G]` laid out as consecutive groups: row i*G + g is completion g of prompt i.

    - "group": (r − mean_g) / (std_g + eps)  — GRPO, DeepSeekMath eq. in section 4.1.2 (outcome supervision).
    - "batch": (r − mean_g) / (std_batch + eps)  — the group mean is kept, the scale is the standard deviation
      of all B*G rewards passed in (REINFORCE++ global normalisation, as discussed by Dr.GRPO; TRL's
      `scale_rewards="batch"`).
    - "none": r − mean_g  — Dr.GRPO, arXiv:2503.20783, which drops the std division as a difficulty bias.

    Standard deviations use Bessel's correction (unbiased=True) everywhere, as TRL and verl do. A group whose
    rewards are all equal gets advantage exactly 0 for every member (never NaN, never a rounding residue):
    it carries no learning signal.

    NaN means "no reward" (`group_reward_totals`): such a completion gets advantage exactly 0 (no gradient)
    and is left out of its group's mean and std and of the batch std; a group with fewer than two rewards
    left counts as constant. Infinite rewards are a bug upstream and raise ValueError.
    """
    _check_choice("scale", scale, ADVANTAGE_SCALES)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B*G], got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 to compare completions within a group, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of {group_size}; "
            "pass all G completions of every prompt, grouped consecutively"
        )
    if torch.isinf(rewards).any():
        raise ValueError("rewards contain inf; a reward must be finite, or None when it cannot score")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    grouped = rewards.view(-1, group_size)  # [B, G]
    valid = ~torch.isnan(grouped)  # [B, G]
    n_valid = valid.sum(dim=1, keepdim=True)  # [B, 1]
    filled = torch.where(valid, grouped, torch.zeros_like(grouped))  # [B, G]
    mean = filled.sum(dim=1, keepdim=True) / n_valid.clamp(min=1)  # [B, 1]
    highest = torch.where(valid, grouped, -math.inf).amax(dim=1, keepdim=True)  # [B, 1]
    lowest = torch.where(valid, grouped, math.inf).amin(dim=1, keepdim=True)  # [B, 1]
    constant = (n_valid < 2) | (highest == lowest)  # [B, 1]
    centred = torch.where(constant | ~valid, torch.zeros_like(grouped), filled - mean)  # [B, G]
    if scale == "group":
        var = centred.square().sum(dim=1, keepdim=True) / (n_valid - 1).clamp(min=1)  # [B, 1]
        std = torch.where(constant, torch.ones_like(var), var.sqrt())  # constant groups are 0 already
        advantages = centred / (std + eps)
    elif scale == "batch":
        std = rewards[~torch.isnan(rewards)].std(unbiased=True) if int(valid.sum()) > 1 else rewards.new_ones(())
        advantages = centred / (torch.where(std > 0, std, torch.ones_like(std)) + eps)
    else:
        advantages = centred
    return advantages.reshape(-1)  # [B*G]


def group_spread(advantages: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B] bool on the CPU: the groups of `advantages` [B*G] whose rewards differ (some advantage is not 0)."""
    return (advantages.view(-1, group_size) != 0).any(dim=1).cpu()


def pick_groups(spread: list[torch.Tensor], target: int) -> tuple[list[list[int]], dict[str, int]]:
    """Dynamic sampling's choice: which groups of each drawn round the step trains on.

    `spread`: one [B] bool per round, in draw order (True: the group's rewards differ, `group_spread`). The
    first `target` spread groups are taken; when there are fewer (the extra-round cap was reached), the earliest
    constant groups fill the remainder (advantage 0: with β = 0 they contribute nothing). Returns (per round,
    the indices of its groups to train, ascending; counts: `drawn` groups, constant groups `dropped` (left out)
    and `filled` (trained), spread groups beyond the target left out as `surplus`).
    """
    flags = [(r, k, bool(x)) for r, s in enumerate(spread) for k, x in enumerate(s.tolist())]
    chosen = [(r, k) for r, k, x in flags if x][:target]
    constant = [(r, k) for r, k, x in flags if not x]
    filled = constant[: max(0, target - len(chosen))]
    picked = set(chosen) | set(filled)
    picks = [[k for k in range(len(s)) if (r, k) in picked] for r, s in enumerate(spread)]
    return picks, {
        "drawn": len(flags),
        "dropped": len(constant) - len(filled),
        "filled": len(filled),
        "surplus": len(flags) - len(constant) - len(chosen),
    }


def kl_penalty(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) from samples of π.  `[B, L], [B, L] -> [B, L]`.

    Schulman, "Approximating KL divergence" (2020, joschu.net/blog/kl-approx.html), with r = π_ref/π:

    - "k1": log π − log π_ref = −log r. Unbiased, high variance, can be negative per token.
    - "k2": ½ (log π − log π_ref)². Biased, low variance, ≥ 0 (the squared log-ratio some call "kimi").
    - "k3": r − log r − 1 = exp(ref − logp) − (ref − logp) − 1. Unbiased, low variance, ≥ 0; GRPO's
      choice (DeepSeekMath eq. 4). The log-ratio is clamped to [-20, 20] before `exp` so one diverged token
      cannot give inf (the gradient is zero outside that range); it is computed as expm1(d) − d and clamped
      at 0, so it is ≥ 0 despite rounding and exactly 0 when the inputs are equal.

    As a loss term the *value* is not what matters but the expected gradient over tokens sampled from π
    (differentiating through log π of the sampled token, not through the sampling):

    - k1: E_π[∇ log π] = 0. **No regularisation at all**, only noise; `TrainConfig` refuses it as a loss
      term (it remains fine as a metric).
    - k2: E_π[(log π − log π_ref) ∇ log π] = ∇ KL(π‖π_ref), the reverse KL the paper intends.
    - k3: E_π[(1 − π_ref/π) ∇ log π] = −Σ π_ref ∇ log π = ∇ KL(π_ref‖π), the forward KL — its value
      estimates KL(π‖π_ref) but its gradient is that of KL(π_ref‖π) (as in TRL and DeepSeekMath; both
      vanish at π = π_ref and agree to second order near it).
    `tests/test_core_algos.py` checks all three by exact enumeration over a small vocabulary.
    """
    _check_choice("kind", kind, KL_ESTIMATORS)
    log_ratio = log_probs - ref_log_probs  # [B, L]
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    delta = (-log_ratio).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, L]  log r
    return (torch.expm1(delta) - delta).clamp(min=0.0)  # [B, L]


def loss_normalisers(completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(num_tokens, num_seqs)` of one micro-batch, to be summed into the global normalisers of `agg_loss`.

    num_tokens counts masked-in tokens; num_seqs counts rows with at least one masked-in token (the rows
    that `agg_loss` averages over). Both are 0-d float tensors on the mask's device, ready for an
    all-reduce (sum) over ranks.
    """
    mask = completion_mask.bool()  # [B, L]
    return mask.sum().float(), mask.any(dim=-1).sum().float()


def agg_loss(
    per_token_loss: torch.Tensor,
    completion_mask: torch.Tensor,
    loss_agg: str,
    *,
    global_tokens: float | torch.Tensor | None = None,
    global_seqs: float | torch.Tensor | None = None,
    max_length: int | None = None,
) -> torch.Tensor:
    """Aggregate a `[B, L]` per-token loss to a scalar. The one place that decides aggregation.

    - "token_mean" (DAPO, arXiv:2503.14476): Σ_{i,t} l_it / N_tokens.
    - "seq_mean_token_mean" (GRPO, DeepSeekMath): Σ_i (Σ_t l_it / |o_i|) / N_seqs.
    - "seq_mean_token_sum_norm" (Dr.GRPO, arXiv:2503.20783): Σ_i (Σ_t l_it / max_length) / N_seqs, with
      max_length a constant (the generation budget, `max_completion_length`), never the padded width.

    Split invariance. Without global normalisers, N_tokens and N_seqs are counted in this call, which is
    right when the call sees the whole optimizer step. When an optimizer step is split into micro-batches
    and ranks, pass `global_tokens` / `global_seqs`: the sums of `loss_normalisers(mask)` over every
    micro-batch of the step on every rank (all-reduce SUM over ranks). Each call then returns its partial
    sum divided by the global count, so the sum of the returned losses over all micro-batches and ranks
    equals the full-batch loss, and so do the gradients.

    What the caller must do with that sum: the optimizer step needs ∇(Σ over micro-batches and ranks).
    DeepSpeed's `engine.backward(loss)` divides by gradient_accumulation_steps (`scale_wrt_gas=True`, the
    default), and its gradient all-reduce averages over the world size W. So pass
    `loss * W * gradient_accumulation_steps` to `engine.backward` (or `loss * W` with
    `scale_wrt_gas=False`); accelerate's `accelerator.backward` under DeepSpeed behaves the same way. The
    value to log as "the loss" is the all-reduced sum of the unscaled returned losses.

    Rows with no masked-in token contribute nothing and are not counted in N_seqs.
    """
    _check_choice("loss_agg", loss_agg, LOSS_AGGS)
    if per_token_loss.shape != completion_mask.shape:
        raise ValueError(
            f"per_token_loss {tuple(per_token_loss.shape)} and completion_mask {tuple(completion_mask.shape)} "
            "must have the same [B, L] shape"
        )
    mask = completion_mask.bool()  # [B, L]
    zero = torch.zeros((), dtype=per_token_loss.dtype, device=per_token_loss.device)
    masked = torch.where(mask, per_token_loss, zero)  # [B, L]
    local_tokens, local_seqs = loss_normalisers(mask)
    if loss_agg == "token_mean":
        denominator = _normaliser(global_tokens, local_tokens, "global_tokens", "tokens")
        return masked.sum() / denominator
    if loss_agg == "seq_mean_token_mean":
        seq_losses = masked.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)  # [B]
    else:
        if max_length is None or max_length <= 0:
            raise ValueError(
                "loss_agg='seq_mean_token_sum_norm' needs max_length > 0: pass the generation budget "
                "(config max_completion_length), a constant, so the loss does not depend on padding"
            )
        seq_losses = masked.sum(dim=-1) / max_length  # [B]
    denominator = _normaliser(global_seqs, local_seqs, "global_seqs", "sequences")
    return seq_losses.sum() / denominator


def _normaliser(global_count, local_count: torch.Tensor, name: str, unit: str):
    if global_count is None:
        return local_count.clamp(min=1)
    if isinstance(global_count, (int, float)):
        if global_count < local_count.item():
            raise ValueError(
                f"{name}={global_count} is smaller than the {int(local_count.item())} {unit} of this "
                f"micro-batch; pass the count over all micro-batches and ranks of the optimizer step"
            )
        return max(global_count, 1)
    return global_count.clamp(min=1)


def policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    loss_agg: str = "token_mean",
    *,
    ref_log_probs: torch.Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    global_tokens: float | torch.Tensor | None = None,
    global_seqs: float | torch.Tensor | None = None,
    max_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO objective for one micro-batch: PPO clipped surrogate + β·KL − entropy_coef·H, aggregated once.

    `entropy_coef` may have either sign: > 0 rewards entropy, < 0 penalises it, 0 leaves it out.

    Per token (DeepSeekMath eq. 3, with DAPO's asymmetric clip):
        ratio = exp(log_probs − old_log_probs)               (log-ratio clamped to [-20, 20])
        pg    = max(−A·ratio, −A·clamp(ratio, 1 − clip_low, 1 + clip_high))
        loss  = pg + beta·kl_penalty(log_probs, ref_log_probs, kl_estimator) − entropy_coef·entropy
    then `agg_loss(loss, completion_mask, loss_agg, global_tokens=…, global_seqs=…, max_length=…)`;
    see `agg_loss` for the normalisers and what to do under DeepSpeed. Aggregation is linear, so this equals
    aggregating each term separately.

    Shapes: log_probs, old_log_probs, ref_log_probs, entropy, completion_mask `[B, L]`; advantages `[B]`
    (one per sequence, broadcast over tokens) or `[B, L]`. With one policy iteration per rollout (μ = 1)
    pass `old_log_probs = log_probs.detach()`: the ratio is 1 and the loss is the plain policy gradient.

    Metrics (detached 0-d tensors, means over the masked-in tokens of this call; the caller averages them
    over micro-batches and prefixes them, e.g. `actor/clip_ratio`):
        pg_loss, kl (if ref_log_probs is given), entropy (if given),
        clip_ratio       fraction of tokens where the clipped term is the active one,
        clip_ratio_low   ratio < 1 − clip_low with A < 0,   clip_ratio_high  ratio > 1 + clip_high with A > 0.
    clip_ratio = clip_ratio_low + clip_ratio_high (the two events are disjoint), as in TRL's GRPOTrainer.
    """
    if clip_low <= 0 or clip_low >= 1 or clip_high <= 0:
        raise ValueError(f"need 0 < clip_low < 1 and clip_high > 0, got clip_low={clip_low}, clip_high={clip_high}")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # [B, 1]
    mask = completion_mask.bool()  # [B, L]
    log_ratio = (log_probs - old_log_probs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, L]
    ratio = torch.exp(log_ratio)  # [B, L]
    unclipped = -advantages * ratio  # [B, L]
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [B, L]
    pg = torch.maximum(unclipped, clipped)  # [B, L]
    per_token = pg
    metrics: dict[str, torch.Tensor] = {}
    agg = dict(global_tokens=global_tokens, global_seqs=global_seqs, max_length=max_length)
    if ref_log_probs is not None:
        kl = kl_penalty(log_probs, ref_log_probs, kl_estimator)  # [B, L]
        per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl.detach(), mask)
    elif beta != 0.0:
        raise ValueError("beta != 0 needs ref_log_probs; pass the reference model's log-probs or set beta=0")
    if entropy is not None:
        per_token = per_token - entropy_coef * entropy
        metrics["entropy"] = masked_mean(entropy.detach(), mask)
    elif entropy_coef != 0.0:
        raise ValueError("entropy_coef != 0 needs entropy; pass the log-prob pass's entropy or set entropy_coef=0")
    loss = agg_loss(per_token, mask, loss_agg, **agg)

    with torch.no_grad():
        low = (ratio < 1.0 - clip_low) & (advantages < 0)  # [B, L]
        high = (ratio > 1.0 + clip_high) & (advantages > 0)  # [B, L]
        metrics["pg_loss"] = masked_mean(pg.detach(), mask)
        metrics["clip_ratio_low"] = masked_mean(low.to(pg.dtype), mask)
        metrics["clip_ratio_high"] = masked_mean(high.to(pg.dtype), mask)
        metrics["clip_ratio"] = masked_mean((low | high).to(pg.dtype), mask)
    return loss, metrics


def _linear_schedule(
    name: str, step: int, total_steps: int, start: float, final: float | None, kind: str, fraction: float
) -> float:
    _check_choice("kind", kind, SCHEDULE_KINDS)
    if kind == "constant":
        return float(start)
    if final is None:
        raise ValueError(f"a linear {name} schedule needs a final value ({name}_final)")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0 for a linear schedule, got {total_steps}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ramp_steps = fraction * total_steps
    progress = min(max(step, 0) / ramp_steps, 1.0)
    return float(start + (final - start) * progress)


def kl_coef_schedule(
    step: int,
    total_steps: int,
    beta: float,
    beta_final: float | None = None,
    kind: str = "constant",
    fraction: float = 1.0,
) -> float:
    """KL coefficient β at optimizer step `step` (0-based) of `total_steps`.

    "constant": β throughout (DeepSeekMath). "linear": from `beta` at step 0 to `beta_final` at step
    `fraction * total_steps`, then held at `beta_final` — the "dynamic KL" of HumanOmniV2
    (arXiv:2506.21277, section on GRPO changes), which ramps β over part of training.
    """
    for name, value in (("beta", beta), ("beta_final", beta_final)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return _linear_schedule("beta", step, total_steps, beta, beta_final, kind, fraction)


def temperature_schedule(
    step: int,
    total_steps: int,
    temperature: float,
    temperature_final: float | None = None,
    kind: str = "constant",
    fraction: float = 1.0,
) -> float:
    """Sampling temperature at optimizer step `step` (0-based) of `total_steps`.

    "constant": `temperature` throughout. "linear": from `temperature` at step 0 to `temperature_final`
    at step `fraction * total_steps`, then held (same shape as `kl_coef_schedule`).
    """
    for name, value in (("temperature", temperature), ("temperature_final", temperature_final)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be finite and > 0, got {value}")
    return _linear_schedule("temperature", step, total_steps, temperature, temperature_final, kind, fraction)


def reference_sync_due(step: int, every: int) -> bool:
    """Whether the reference follows the policy now: after the `step`-th finished trainer step (1-based), every
    `every` steps; never when `every` is 0. TRL's `ref_model_sync_steps` counts the same way
    (`global_step % ref_model_sync_steps == 0` at the end of a step)."""
    if every < 0:
        raise ValueError(f"every must be >= 0 (0 = never), got {every}")
    return every > 0 and step > 0 and step % every == 0


@torch.no_grad()
def mix_reference_(reference: Iterable[torch.Tensor], policy: Iterable[torch.Tensor], alpha: float) -> None:
    """reference ← α·policy + (1 − α)·reference, tensor by tensor, in place (the tensors of `reference` change).

    TR-DPO's reference update (arXiv:2404.09656: soft with weight α < 1, TRL's `ref_model_mixup_alpha`; hard
    with α = 1, a copy, Kimi k1.5's reference reset). `reference` and `policy` are matching sequences of
    tensors of equal shapes (e.g. two models' parameters in the same order).
    Each mix is computed in float32 (or the reference's dtype when wider) and rounded once to the reference's
    dtype: TRL's in-place `mul_(1 − α).add_(policy, alpha=α)` rounds twice in bfloat16. α = 1 copies bit for
    bit.
    """
    if not (0.0 < alpha <= 1.0):
        raise ValueError(f"alpha must be in (0, 1] (1 = copy the policy), got {alpha}")
    reference, policy = list(reference), list(policy)
    if len(reference) != len(policy):
        raise ValueError(f"{len(reference)} reference tensors but {len(policy)} policy tensors")
    for i, (ref, pol) in enumerate(zip(reference, policy)):
        if ref.shape != pol.shape:
            raise ValueError(f"tensor {i}: reference shape {tuple(ref.shape)} differs from policy {tuple(pol.shape)}")
    for ref, pol in zip(reference, policy):
        if alpha == 1.0:
            ref.copy_(pol)
        else:
            work = torch.promote_types(ref.dtype, torch.float32)
            mixed = pol.to(device=ref.device, dtype=work) * alpha  # [*shape]
            ref.copy_(mixed.add_(ref.to(work), alpha=1.0 - alpha))
