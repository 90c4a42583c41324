"""The vocabulary head: per-token log-probs and entropies of target tokens from the hidden states that
predict them, under the distribution the sampler draws from (temperature, media tokens banned).

`head_scores` is the head half of every log-prob pass (`logprobs.log_probs` runs the forward of
`shared_prompt`, then this). It projects through `HeadLogProbs` wherever it can (`sliced_head`), else — a
ZeRO-3 partitioned trainable head — through the `lm_head` module per `HEAD_CHUNK` positions under activation
checkpointing.

`HeadLogProbs` computes, for hidden states ``h`` [M, H] and the output projection ``W`` [V, H], each position's
log-probability of its target token and the entropy of its distribution, where the distribution is
``softmax((h W^T) / T)`` with the banned tokens removed (the one `generate` samples from). It never holds the
[M, V] logits: it walks the vocabulary in slices of `VOCAB_SLICE` rows of ``W`` (and the positions in blocks of
`POSITION_BLOCK`), keeps a running max, sum of exponentials and exponential-weighted logit sum per position
(an online log-sum-exp), and in backward recomputes each slice and accumulates the gradients of ``h`` and, when
``W`` trains, of ``W`` in (at least) float32, slice by slice, into one buffer each (the weight's gradient is
written by the first block of positions, not zeroed first).

Why not a checkpointed ``lm_head`` call: at Qwen's 152k vocabulary that builds [rows, positions, 152k] float32
logits, a copy for the temperature, a copy for the banned tokens, the log-sum-exp's exponentials, and the same
again with their gradients in backward, every one a fresh allocation of tens of MB per micro-batch (on the
CPU bench, where new pages are slow, that churn was most of the update; on a GPU it is the peak of the head).
Here the largest temporary is one [POSITION_BLOCK, VOCAB_SLICE] slice (64 MB in float32).

Numerics: every logit is computed as before (the projection in the weight's dtype, then float32, divided by
T, banned entries set to `BANNED_LOGIT`); only the log-sum-exp is summed per slice (float rounding differs
from one `logsumexp` over the row by ~1e-7). The ZeRO-3 trainable head is the one case it cannot serve (its
weight is partitioned and gathered by module hooks); `head_scores` uses the checkpointed module there, for
every pass of such a run (`sliced_head`).
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.checkpoint import checkpoint

from omni_grpo.engine import gathered_param, param_partitioned
from omni_grpo.models.base import base_thinker

BANNED_LOGIT = -1e30  # exp() of it is exactly 0 in float32, and 0 * it is 0 (no NaN in the entropy)
VOCAB_SLICE = 16384  # rows of W per slice
POSITION_BLOCK = 1024  # positions per block: a slice is at most [1024, 16384] float32 = 64 MB
HEAD_CHUNK = 256  # positions per `lm_head` module call on the unsliced path
METRIC_ENTROPY_STRIDE = 8  # the entropy metric (entropy_coef = 0) reads every 8th completion position


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16 logits lose too much for log-softmax)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _slices(vocab: int, banned: torch.Tensor | None):
    """(start, end, banned columns within the slice or None) for each vocabulary slice."""
    out = []
    for start in range(0, vocab, VOCAB_SLICE):
        end = min(start + VOCAB_SLICE, vocab)
        cols = None
        if banned is not None and banned.numel():
            inside = banned[(banned >= start) & (banned < end)]
            cols = inside - start if inside.numel() else None
        out.append((start, end, cols))
    return out


def _scored_slice(h: torch.Tensor, weight: torch.Tensor, start: int, end: int, temperature: float, cols):
    """float32 logits [m, end - start] of the sampled distribution for one block and slice."""
    logits = _upcast(h @ weight[start:end].t())
    if temperature != 1.0:
        logits.div_(temperature)
    if cols is not None:
        logits.index_fill_(-1, cols, BANNED_LOGIT)
    return logits


class HeadLogProbs(torch.autograd.Function):
    """(log-prob of each target [M], entropy [M]) of ``softmax((hidden @ weight.T) / T)``, banned tokens removed.

    hidden [M, H], weight [V, H] (a plain tensor: a frozen weight, or a trainable parameter, which then gets its
    gradient), targets [M]. `entropy_grad`: the entropy is differentiable (an entropy bonus); otherwise it is a
    detached metric. Gradients of the log-probs and (with `entropy_grad`) the entropy flow to `hidden` and, when
    it requires grad, to `weight`.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, banned, entropy_grad: bool):
        m, dev = hidden.shape[0], hidden.device
        acc = torch.promote_types(weight.dtype, torch.float32)  # the logits' dtype
        logz = torch.empty(m, dtype=acc, device=dev)
        mean = torch.empty(m, dtype=acc, device=dev)  # E_p[logit]
        target = torch.empty(m, dtype=acc, device=dev)
        slices = _slices(weight.shape[0], banned)
        for b0 in range(0, m, POSITION_BLOCK):
            h, t = hidden[b0 : b0 + POSITION_BLOCK], targets[b0 : b0 + POSITION_BLOCK]
            top = torch.full((h.shape[0],), float("-inf"), dtype=acc, device=dev)
            total = torch.zeros(h.shape[0], dtype=acc, device=dev)  # sum exp(logit - top)
            weighted = torch.zeros_like(total)  # sum exp(logit - top) * logit
            picked = torch.zeros_like(total)
            for start, end, cols in slices:
                logits = _scored_slice(h, weight, start, end, temperature, cols)
                new_top = torch.maximum(top, logits.amax(-1))
                rescale = torch.exp(top - new_top)
                e = torch.exp(logits - new_top[:, None])
                total = total * rescale + e.sum(-1)
                weighted = weighted * rescale + (e * logits).sum(-1)
                top = new_top
                here = (t >= start) & (t < end)  # no host sync: gather a clamped column, keep it where it belongs
                col = (t - start).clamp(0, end - start - 1)
                picked = torch.where(here, logits.gather(-1, col[:, None]).squeeze(-1), picked)
            logz[b0 : b0 + h.shape[0]] = top + torch.log(total)
            mean[b0 : b0 + h.shape[0]] = weighted / total
            target[b0 : b0 + h.shape[0]] = picked
        logp = target - logz
        entropy = logz - mean
        if not entropy_grad:
            ctx.mark_non_differentiable(entropy)
        ctx.save_for_backward(hidden, weight, targets, logz, mean)
        ctx.temperature, ctx.slices, ctx.entropy_grad = temperature, slices, entropy_grad
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, logz, mean = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        temperature = ctx.temperature
        acc = logz.dtype
        grad_h = torch.zeros(hidden.shape, dtype=acc, device=hidden.device) if want_h else None
        # grad_w is written, not zeroed then summed into: the first position block's product fills each slice,
        # later blocks add (zeroing a fresh [V, H] buffer was a third of this backward on the CPU bench)
        fill = torch.empty if hidden.shape[0] else torch.zeros  # no positions: nothing writes it
        grad_w = fill(weight.shape, dtype=acc, device=weight.device) if want_w else None
        g_lp = grad_logp.to(acc) if grad_logp is not None else torch.zeros_like(logz)
        g_ent = grad_entropy.to(acc) if (grad_entropy is not None and ctx.entropy_grad) else None
        for b0 in range(0, hidden.shape[0], POSITION_BLOCK):
            b1 = min(b0 + POSITION_BLOCK, hidden.shape[0])
            h, t = hidden[b0:b1], targets[b0:b1]
            lz, mu, glp = logz[b0:b1, None], mean[b0:b1, None], g_lp[b0:b1, None]
            ge = g_ent[b0:b1, None] if g_ent is not None else None
            for start, end, cols in ctx.slices:
                logits = _scored_slice(h, weight, start, end, temperature, cols)
                p = torch.exp(logits - lz)  # exactly 0 at banned tokens: they get no gradient
                # d logp / d logit = onehot(target) - p; d entropy / d logit = -p (logit - E_p[logit])
                if ge is not None:
                    dlogits = p * ((logits - mu) * ge + glp)
                    dlogits.neg_()
                else:
                    dlogits = p.mul_(-glp)
                here = ((t >= start) & (t < end))[:, None]
                col = (t - start).clamp(0, end - start - 1)[:, None]
                dlogits.scatter_add_(-1, col, torch.where(here, glp, 0.0))
                if temperature != 1.0:
                    dlogits.div_(temperature)
                if want_h:
                    grad_h[b0:b1].addmm_(dlogits, _upcast(weight[start:end]))
                if want_w and b0 == 0:
                    torch.mm(dlogits.t(), _upcast(h), out=grad_w[start:end])
                elif want_w:
                    grad_w[start:end].addmm_(dlogits.t(), _upcast(h))
        return (
            grad_h.to(hidden.dtype) if want_h else None,
            grad_w.to(weight.dtype) if want_w else None,
            None,
            None,
            None,
            None,
        )


def head_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    banned: torch.Tensor | None = None,
    entropy_grad: bool = False,
):
    """`HeadLogProbs` over positions of any leading shape: hidden [..., H], targets [...] ->
    (log-probs [...], entropies [...])."""
    lead = targets.shape
    lp, ent = HeadLogProbs.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), temperature, banned, entropy_grad
    )
    return lp.view(lead), ent.view(lead)


def _scored_logits(logits: torch.Tensor, temperature: float, banned: torch.Tensor | None) -> torch.Tensor:
    """The logits of the distribution the sampler draws from: divided by the temperature, media tokens removed.

    `generate` bans the media tokens and then divides by T (Hugging Face's order); the banned entries are
    removed here after the division, so they carry no probability mass, exactly as in sampling.
    """
    logits = logits / temperature
    if banned is not None and banned.numel():
        logits = logits.index_fill(-1, banned, BANNED_LOGIT)
    return logits


def _entropy(logits: torch.Tensor, logz: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position: logZ − E_p[logit]."""
    return logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def _entropy_sample(logits: torch.Tensor, logz: torch.Tensor, offset: int, stride: int) -> torch.Tensor:
    """Detached entropy at this chunk's positions offset, offset + stride, ... (the metric subsample)."""
    with torch.no_grad():
        return _entropy(logits[:, offset::stride].detach(), logz[:, offset::stride].detach())


def _chunk_logprobs(
    lm_head, hidden, targets, temperature: float, with_entropy: bool, banned=None, offset: int = 0, stride: int = 1
):
    """One chunk of positions through the `lm_head` module: the path of a ZeRO-3 partitioned trainable head."""
    logits = _scored_logits(lm_head(hidden).float(), temperature, banned)  # [n, c, V] for one chunk only
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
    if not with_entropy:
        return logp, torch.zeros_like(logp)
    if stride > 1:
        return logp, _entropy_sample(logits, logz, offset, stride)
    return logp, _entropy(logits, logz)


def _can_slice(lm_head) -> bool:
    """Whether `HeadLogProbs` can score through `lm_head`: a plain `nn.Linear` (an adapter on the head: only its
    module knows its output) that is not a ZeRO-3 partitioned trainable weight (it needs its module's gather
    hooks)."""
    if type(lm_head) is not torch.nn.Linear:
        return False
    return not (param_partitioned(lm_head.weight) and lm_head.weight.requires_grad)


def sliced_head(model) -> bool:
    """Whether the log-prob passes of a run training `model` score through `HeadLogProbs` (`_can_slice` of its
    head). A run passes the same answer to every pass, reference included, so that KL is exactly 0 at step 0."""
    return _can_slice(base_thinker(model).lm_head)


def head_scores(
    model,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    banned_token_ids: list[int] | None = None,
    entropy_stride: int = 1,
    sliced: bool | None = None,
):
    """Per-token log-probs (and entropies) of `targets` [N, C] predicted by `hidden` [N, C, H] through
    `model`'s `lm_head`: ([N, C], [N, C] or None); the arguments are those of `logprobs.log_probs`."""
    lm_head = base_thinker(model).lm_head
    banned = torch.tensor(banned_token_ids, dtype=torch.long, device=hidden.device) if banned_token_ids else None
    if getattr(lm_head, "bias", None) is not None:
        raise NotImplementedError("an lm_head with a bias is not supported")
    head_trains = any(p.requires_grad for p in lm_head.parameters())
    if entropy_stride < 1:
        raise ValueError(f"entropy_stride={entropy_stride} must be >= 1")
    k = entropy_stride
    can_slice = _can_slice(lm_head)
    if sliced is None:
        sliced = can_slice
    if sliced and not can_slice:
        raise ValueError(
            "this lm_head (ZeRO-3 partitioned and trainable, or not a plain nn.Linear) can only be "
            "scored through its module: sliced=False"
        )
    grad = torch.is_grad_enabled() and (hidden.requires_grad or head_trains)
    if sliced or (grad and not head_trains and can_slice):  # a frozen head under gradient: always sliced
        partitioned = param_partitioned(lm_head.weight)
        with gathered_param(lm_head.weight) if partitioned else contextlib.nullcontext(lm_head.weight) as weight:
            lp, ent = head_log_probs(
                hidden, weight, targets, temperature, banned, entropy_grad=with_entropy and k == 1 and grad
            )
        if not with_entropy:
            return lp, None
        return lp, (ent if k == 1 else ent[:, ::k].detach())
    pieces_lp, pieces_ent = [], []
    chunk = HEAD_CHUNK
    for s in range(0, hidden.shape[1], chunk):
        h, t = hidden[:, s : s + chunk], targets[:, s : s + chunk]
        if grad:
            lp, ent = checkpoint(
                _chunk_logprobs, lm_head, h, t, temperature, with_entropy, banned, -s % k, k, use_reentrant=False
            )
        else:
            lp, ent = _chunk_logprobs(lm_head, h, t, temperature, with_entropy, banned, -s % k, k)
        pieces_lp.append(lp)
        pieces_ent.append(ent)
    lp = torch.cat(pieces_lp, dim=1)
    return lp, (torch.cat(pieces_ent, dim=1) if with_entropy else None)
