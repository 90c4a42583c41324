"""Shared-prefix attention: completion queries read ONE copy of their prompt's keys/values.

The G completions of a prompt share its keys/values. Instead of copying them to each row, each completion
query's attention is split in two and merged exactly (the cascade / shared-prefix attention of Hydragen,
Juravsky et al. 2024, and FlashInfer; the merge is flash-decoding's):

    (a) against its prompt's keys, one copy per distinct prompt: the queries of all rows of that prompt are
        stacked ([1, Hkv, rows·r·Lq, D], r = query heads per key/value head, so GQA needs no repeat), with
        the prompt's padding mask;
    (b) against the row's own completion keys, causal, with the completion mask;
    o = (e^{lse_a} o_a + e^{lse_b} o_b) / (e^{lse_a} + e^{lse_b}),  lse = logaddexp(lse_a, lse_b).

Each part is `_AttentionLSE`: plain torch ops in float32, chunked over queries so the scores of one chunk
only exist at once, saving q, k, v, o and lse (never the scores) and recomputing in backward, with the
gradient of the log-sum-exp included (the merge weights depend on it).

How it plugs into transformers: the language model's `config._attn_implementation` is renamed once to
`omni_grpo_shared_prefix_<impl>`, registered in `ALL_ATTENTION_FUNCTIONS` (and its mask function as the
original's). That function calls the original implementation unchanged unless the call carries a
`shared_prefix` keyword argument (a :class:`SharedPrefix`), which transformers forwards from the language
model's call through each decoder layer to its attention. The switch is permanent because a checkpointed
layer is recomputed in backward, after any context manager has exited. Only "sdpa" and "eager" are wrapped;
other implementations (flash-attention kernels take no 4D mask) keep the per-row copy.
"""

from __future__ import annotations

import math
import sys

import torch

PREFIX = "omni_grpo_shared_prefix_"
WRAPPED = ("sdpa", "eager")
SCORE_CHUNK = 1 << 24  # score elements [B, Hkv, chunk, L] one chunk of `_AttentionLSE` holds at once


def _scores(q, k, mask, scale):
    s = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, Hkv, m, L]
    return s if mask is None else s.masked_fill(~mask, float("-inf"))


def _probs(s, lse):
    """exp(s - lse): 0 where masked, and 0 on a row with no key at all (lse = -inf there)."""
    return torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse).unsqueeze(-1))


def _mask_rows(mask, start, stop):
    return mask if mask is None or mask.shape[-2] == 1 else mask[..., start:stop, :]


def _sum_to(x, like):
    """`x` summed over the dimensions `like` was broadcast along."""
    dims = [i for i, (a, b) in enumerate(zip(x.shape, like.shape)) if b == 1 and a != 1]
    return x.sum(dim=dims, keepdim=True) if dims else x


class _AttentionLSE(torch.autograd.Function):
    """Softmax attention and its log-sum-exp: (o [..., M, Dv], lse [..., M]), at least float32.

    q [..., M, D], k [..., L, D], v [..., L, Dv] (leading dimensions broadcast: a key/value head serves its
    query heads without a copy), mask bool broadcastable to [..., M, L] (True: attend) or None. A query with
    no key gets o = 0, lse = -inf (it drops out of the merge). Backward, with P = exp(S - lse) and
    D = rowsum(dO ∘ O): dS = P ∘ (dO Vᵀ - D + g_lse), dQ = scale dS K, dK = scale dSᵀ Q, dV = Pᵀ dO,
    recomputed per chunk of queries.
    """

    @staticmethod
    def forward(ctx, q, k, v, mask, scale):
        dtype = torch.promote_types(q.dtype, torch.float32)
        qf, kf, vf = q.to(dtype), k.to(dtype), v.to(dtype)
        lead = math.prod(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]))
        step = max(1, SCORE_CHUNK // max(1, lead * k.shape[-2]))
        outs, lses = [], []
        for start in range(0, q.shape[-2], step):
            s = _scores(qf[..., start : start + step, :], kf, _mask_rows(mask, start, start + step), scale)
            lse = torch.logsumexp(s, dim=-1)
            outs.append(torch.matmul(_probs(s, lse), vf))
            lses.append(lse)
        o, lse = torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)
        ctx.save_for_backward(q, k, v, mask, o, lse)
        ctx.scale, ctx.step = scale, step
        return o, lse

    @staticmethod
    def backward(ctx, grad_o, grad_lse):
        q, k, v, mask, o, lse = ctx.saved_tensors
        qf, kf, vf = q.to(o.dtype), k.to(o.dtype), v.to(o.dtype)
        grad_o = torch.zeros_like(o) if grad_o is None else grad_o.to(o.dtype)
        grad_lse = torch.zeros_like(lse) if grad_lse is None else grad_lse.to(o.dtype)
        delta = (grad_o * o).sum(-1) - grad_lse  # [..., M]
        dq, dk, dv = [], torch.zeros_like(kf), torch.zeros_like(vf)
        for start in range(0, q.shape[-2], ctx.step):
            rows = slice(start, start + ctx.step)
            s = _scores(qf[..., rows, :], kf, _mask_rows(mask, start, start + ctx.step), ctx.scale)
            p = _probs(s, lse[..., rows])
            do = grad_o[..., rows, :]
            dv += _sum_to(torch.matmul(p.transpose(-1, -2), do), vf)
            ds = p * (torch.matmul(do, vf.transpose(-1, -2)) - delta[..., rows].unsqueeze(-1))
            dq.append(_sum_to(torch.matmul(ds, kf) * ctx.scale, qf[..., rows, :]))
            dk += _sum_to(torch.matmul(ds.transpose(-1, -2), qf[..., rows, :]) * ctx.scale, kf)
        return torch.cat(dq, dim=-2).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


class SharedPrefix:
    """The prompts' keys/values, one copy per distinct prompt, for the completion rows that attend to them.

    keys, values: one [P, Hkv, Lp, D] per decoder layer (already rotated: TMRoPE is applied before caching).
    prompt_mask: [P, Lp] the prompts' attention mask (left padding). inverse: [N] the prompt of each row (a
    prompt may have no row).
    completion_mask: [N, Lc] which completion keys may be attended (None: all), right-padded completions.
    """

    def __init__(
        self,
        keys: list,
        values: list,
        prompt_mask: torch.Tensor,
        inverse: torch.Tensor,
        completion_mask: torch.Tensor | None = None,
    ):
        self.keys, self.values = keys, values
        self.prompt_mask = prompt_mask.bool()
        self.completion_mask = None if completion_mask is None else completion_mask.bool()
        self.groups = [torch.nonzero(inverse == p).squeeze(1) for p in range(prompt_mask.shape[0])]
        self.restore = torch.argsort(torch.cat(self.groups))  # stacked-by-prompt order -> row order
        self._own = None

    def attend(self, layer: int, query, key, value, scale: float):
        """[N, Lq, H, Dv] attention output of `query` [N, H, Lq, D] over the prompt and the rows' own `key`,
        `value` [N, Hkv, Lc, D] (the last Lq of which are the queries' own positions)."""
        n, h, lq, d = query.shape
        hkv, lc = key.shape[1], key.shape[2]
        r = h // hkv
        pk, pv = self.keys[layer], self.values[layer]
        parts_o, parts_lse = [], []
        for p, rows in enumerate(self.groups):  # (a): one copy of prompt p for all of its rows' queries
            if not len(rows):
                continue
            q = query[rows].reshape(len(rows), hkv, r, lq, d).transpose(0, 1).reshape(1, hkv, -1, d)
            o, lse = _AttentionLSE.apply(q, pk[p : p + 1], pv[p : p + 1], self.prompt_mask[p].view(1, 1, 1, -1), scale)
            parts_o.append(o.view(hkv, len(rows), r, lq, -1).transpose(0, 1).reshape(len(rows), h, lq, -1))
            parts_lse.append(lse.view(hkv, len(rows), r, lq).transpose(0, 1).reshape(len(rows), h, lq))
        o_a, lse_a = torch.cat(parts_o)[self.restore], torch.cat(parts_lse)[self.restore]
        own = self._own_mask(lq, lc, query.device)  # [N or 1, 1, 1, Lq, Lc]
        o_b, lse_b = _AttentionLSE.apply(
            query.reshape(n, hkv, r, lq, d), key.unsqueeze(2), value.unsqueeze(2), own, scale
        )  # (b): [N, Hkv, r, Lq, Dv]
        o_b, lse_b = o_b.reshape(n, h, lq, -1), lse_b.reshape(n, h, lq)
        lse = torch.logaddexp(lse_a, lse_b)
        out = torch.exp(lse_a - lse).unsqueeze(-1) * o_a + torch.exp(lse_b - lse).unsqueeze(-1) * o_b
        return out.transpose(1, 2).to(query.dtype).contiguous()

    def _own_mask(self, lq: int, lc: int, device) -> torch.Tensor:
        """Causal over the completion keys (the queries are the last `lq` of `lc`), and the completion mask;
        built once per shape, so every layer saves the same tensor."""
        if self._own is None or self._own[0] != (lq, lc):
            positions = torch.arange(lc, device=device)
            own = (positions.view(1, -1) <= positions[lc - lq :].view(-1, 1)).view(1, 1, 1, lq, lc)
            if self.completion_mask is not None:
                own = own & self.completion_mask[:, :lc].view(-1, 1, 1, 1, lc)
            self._own = ((lq, lc), own)
        return self._own[1]


def _original(name: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def call(module, *args, **kwargs):
        if name == "eager":  # not in the registry: each modeling file has its own
            return sys.modules[type(module).__module__].eager_attention_forward(module, *args, **kwargs)
        return ALL_ATTENTION_FUNCTIONS[name](module, *args, **kwargs)

    return call


def _wrapped(name: str):
    original = _original(name)

    def attention(
        module,
        query,
        key,
        value,
        attention_mask,
        dropout: float = 0.0,
        scaling: float | None = None,
        shared_prefix: SharedPrefix | None = None,
        **kwargs,
    ):
        if shared_prefix is None:
            return original(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        if dropout or kwargs.get("sliding_window") is not None:
            raise NotImplementedError("shared-prefix attention has no dropout and no sliding window")
        scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
        return shared_prefix.attend(module.layer_idx, query, key, value, scale), None

    return attention


def one_copy_ready(config) -> bool:
    """Whether the language model with this (text) config can attend to one prompt copy; the first call for
    an "sdpa" or "eager" model switches it to the wrapping implementation (same results without a prefix)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if getattr(config, "use_sliding_window", False) or getattr(config, "attention_dropout", 0.0):
        return False
    impl = config._attn_implementation
    if impl.startswith(PREFIX):
        return True
    if impl not in WRAPPED:
        return False
    name = PREFIX + impl
    if name not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(name, _wrapped(impl))
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])
    config._attn_implementation = name
    return True
