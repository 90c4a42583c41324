"""Log-probs and entropy of target tokens through the vocabulary projection, one vocabulary slice at a time.

`HeadLogProbs` computes, for hidden states ``h`` [M, H] and the output projection ``W`` [V, H], each position's
log-probability of its target token and the entropy of its distribution, where the distribution is
``softmax((h W^T) / T)`` with the banned tokens removed (the one `generate` samples from). It never holds the
[M, V] logits: it walks the vocabulary in slices of `VOCAB_SLICE` rows of ``W`` (and the positions in blocks of
`POSITION_BLOCK`), keeps a running max, sum of exponentials and exponential-weighted logit sum per position
(an online log-sum-exp), and in backward recomputes each slice and accumulates the gradients of ``h`` and, when
``W`` trains, of ``W`` in (at least) float32, slice by slice, into one buffer each.

Why not a checkpointed ``lm_head`` call: at Qwen's 152k vocabulary that builds [rows, positions, 152k] float32
logits, a copy for the temperature, a copy for the banned tokens, the log-sum-exp's exponentials, and the same
again with their gradients in backward, every one a fresh allocation of tens of MB per micro-batch (on the
CPU bench, where new pages are slow, that churn was most of the update; on a GPU it is the peak of the head).
Here the largest temporary is one [POSITION_BLOCK, VOCAB_SLICE] slice (64 MB in float32).

Numerics: every logit is computed as before (the projection in the weight's dtype, then float32, divided by
T, banned entries set to `BANNED_LOGIT`); only the log-sum-exp is summed per slice (float rounding differs
from one `logsumexp` over the row by ~1e-7). The ZeRO-3 trainable head is the one case it cannot serve (its
weight is partitioned and gathered by module hooks); `logprobs.log_probs` uses the checkpointed module
there, for every pass of such a run.
"""

from __future__ import annotations

import torch

BANNED_LOGIT = -1e30  # exp() of it is exactly 0 in float32, and 0 * it is 0 (no NaN in the entropy)
VOCAB_SLICE = 16384   # rows of W per slice
POSITION_BLOCK = 1024  # positions per block: a slice is at most [1024, 16384] float32 = 64 MB


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
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
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
                if want_w:
                    grad_w[start:end].addmm_(dlogits.t(), _upcast(h))
        return (grad_h.to(hidden.dtype) if want_h else None, grad_w.to(weight.dtype) if want_w else None,
                None, None, None, None)


def head_log_probs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   banned: torch.Tensor | None = None, entropy_grad: bool = False):
    """`HeadLogProbs` over positions of any leading shape: hidden [..., H], targets [...] ->
    (log-probs [...], entropies [...])."""
    lead = targets.shape
    lp, ent = HeadLogProbs.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), temperature,
                                 banned, entropy_grad)
    return lp.view(lead), ent.view(lead)
