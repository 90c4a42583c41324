"""Log-prob passes: the hidden states that predict each completion token, and their per-token log-probs.

`forward_hidden` runs prompt + completions through the language model; with `share_prompt`, rows that copy
one prompt run it once and reuse its per-layer keys/values (the shared-prompt KV trick: `_PromptLayer`
records them, the completions attend to one copy per prompt through `prefix_attention.SharedPrefix`, or to a
per-row copy, `_PrefixLayer`, where the attention implementation is not wrapped). `log_probs` projects onto the vocabulary per chunk (`_FrozenHeadLogProbs` for a frozen
head) and scores under the distribution the sampler draws from (temperature, media tokens banned).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import Cache, DynamicLayer

from omni_grpo.models.base import OmniModule, _getattr_path, base_thinker
from omni_grpo.models.inputs import ModelInputs
from omni_grpo.models.prefix_attention import SharedPrefix, one_copy_ready

def forward_hidden(module: OmniModule, model, inputs: ModelInputs, completion_ids: torch.Tensor,
                   completion_mask: torch.Tensor, share_prompt: bool = True,
                   prompt: PromptPass | None = None) -> torch.Tensor:
    """Last hidden states [N, C, H] that predict each completion token (N = rows of `inputs`).

    With `share_prompt`, rows that are copies of one prompt (`inputs.prompt_index`, set by `repeat`) run the
    prompt through the language model once: its per-layer keys/values are reused by each row's completion
    (:func:`prompt_pass`, then :func:`completion_hidden`: one copy of them for all its rows), and its
    embeddings, media splice and TMRoPE positions are computed once. Same result up to float rounding; the
    prompt costs 1/G of the compute and activation memory, with gradient flowing into the shared prompt pass.
    `prompt`: a :class:`PromptPass` of the batch these rows come from, already run (the update runs it once
    per group for all of its micro-batches); only the completion pass runs.
    """
    thinker = base_thinker(model)
    lm = _getattr_path(thinker, module.language_model)
    prompt_len = inputs.input_ids.shape[1]
    mask = torch.cat([inputs.attention_mask, completion_mask.to(inputs.attention_mask.dtype)], dim=1)  # [N, P+C]
    if prompt is not None:
        return completion_hidden(module, model, prompt, inputs, completion_ids, completion_mask)
    if share_prompt and completion_ids.shape[1] > 0:
        first, _ = inputs.distinct_prompts()
        if len(first) < inputs.batch_size:
            prompt = prompt_pass(module, model, inputs, completion_ids)
            return completion_hidden(module, model, prompt, inputs, completion_ids, completion_mask)
    ids = torch.cat([inputs.input_ids, completion_ids], dim=1)
    lm_inputs = module.language_model_inputs(model, inputs, ids, mask)
    out = lm(**lm_inputs, attention_mask=mask, use_cache=False)
    return out.last_hidden_state[:, prompt_len - 1 : -1]  # position t predicts token t+1


def prompt_model_inputs(module: OmniModule, thinker, prompts: ModelInputs, slots: torch.Tensor) -> tuple:
    """Language-model inputs of `prompts` (one row per distinct prompt) with room for completions.

    `slots` [B, C] are token ids standing in for the completion: a text token's position does not depend on
    which token it is, so the positions of every completion of a prompt are known from one row. Returns
    (prompt embeddings [B, P, H], positions [..., B, P+C], attention mask [B, P+C] with the slots on, the
    prompt part of any further language-model arguments), all from the module's own `language_model_inputs`
    (media spliced, TMRoPE with the flag).
    """
    p = prompts.input_ids.shape[1]
    ids = torch.cat([prompts.input_ids, slots], dim=1)
    mask = torch.cat([prompts.attention_mask, torch.ones_like(slots, dtype=prompts.attention_mask.dtype)], dim=1)
    kw = module.language_model_inputs(thinker, prompts, ids, mask)
    embeds, positions = kw.pop("inputs_embeds"), kw.pop("position_ids")
    prompt_kw = module.prompt_kwargs(kw, p)
    return embeds[:, :p], positions, mask, prompt_kw


class _PromptLayer(DynamicLayer):
    """Prompt pass: keeps the layer's keys/values for the completions. Stores by replacing (not appending),
    so the recompute of a checkpointed layer in backward leaves it as it was."""

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys, self.values, self.is_initialized = key_states, value_states, True
        return key_states, value_states

    def get_seq_length(self) -> int:
        return 0  # nothing before the prompt


class _PrefixLayer(DynamicLayer):
    """Completion pass: the prompt's keys/values (one copy per row) in front of the new ones. Stores nothing,
    so a checkpoint recompute sees the same prefix."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.is_initialized = keys, values, True
        self.dtype, self.device = keys.dtype, keys.device

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


@contextmanager
def _replay_safe_cache(layers):
    """Let checkpointed decoder layers keep the cache argument: transformers drops it under gradient
    checkpointing because a normal cache would grow again on the recompute; ours do not."""
    flagged = [layer for layer in layers if hasattr(layer, "_can_checkpoint_with_cache")]
    for layer in flagged:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer in flagged:
            del layer._can_checkpoint_with_cache  # back to the class attribute


@dataclass
class PromptPass:
    """The prompt half of the shared-prompt forward, kept for completion passes run later.

    prompt_index: the `ModelInputs.prompt_index` value of each distinct prompt. keys, values: one [P, Hkv, Lp, D]
    per decoder layer. last_hidden: [P, 1, H], the prompt's last position (it predicts the first completion
    token). positions: [..., P, Lp + C] for the prompt and C completion slots. prompt_mask: [P, Lp].
    """

    prompt_index: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    last_hidden: torch.Tensor
    positions: torch.Tensor
    prompt_mask: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor a completion pass takes gradient into."""
        return [*self.keys, *self.values, self.last_hidden]

    def detached(self) -> "PromptPass":
        """The same pass cut from its graph: its tensors are leaves that collect the completions' gradient."""
        leaf = [t.detach().requires_grad_(t.requires_grad) for t in self.tensors()]
        n = len(self.keys)
        return dataclasses.replace(self, keys=leaf[:n], values=leaf[n : 2 * n], last_hidden=leaf[-1])

    def rows_of(self, inputs: ModelInputs) -> torch.Tensor:
        """[N] the distinct prompt of each row of `inputs` (rows of the batch this pass ran)."""
        index = inputs.prompt_index if inputs.prompt_index is not None else list(range(inputs.batch_size))
        where = {p: k for k, p in enumerate(self.prompt_index)}
        return torch.tensor([where[p] for p in index], dtype=torch.long, device=self.prompt_mask.device)


def prompt_pass(module: OmniModule, model, inputs: ModelInputs, completion_ids: torch.Tensor) -> PromptPass:
    """Run each distinct prompt of `inputs` once (embeddings, towers, TMRoPE, every layer's keys/values) for
    the rows' completions `completion_ids` [N, C] (their width sets the positions kept); with gradient when
    called under grad mode."""
    thinker = base_thinker(model)
    lm = _getattr_path(thinker, module.language_model)
    one_copy_ready(lm.config)
    first, _ = inputs.distinct_prompts()
    p = inputs.input_ids.shape[1]
    prompts = inputs.select(first)
    slots = completion_ids[first]
    embeds, positions, _, prompt_kw = prompt_model_inputs(module, thinker, prompts, slots)
    cache = Cache(layers=[_PromptLayer() for _ in lm.layers])
    with _replay_safe_cache(lm.layers):
        out = lm(inputs_embeds=embeds, position_ids=positions[..., :p], attention_mask=prompts.attention_mask,
                 past_key_values=cache, use_cache=False, **prompt_kw)
    return PromptPass(list(prompts.prompt_index), [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers],
                      out.last_hidden_state[:, p - 1 : p], positions, prompts.attention_mask)


def completion_hidden(module: OmniModule, model, prompt: PromptPass, inputs: ModelInputs,
                      completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """`forward_hidden` of rows of `inputs` against a prompt pass already run: one completion pass over all
    rows attending to their prompt's keys/values, one copy per distinct prompt
    (:mod:`omni_grpo.models.prefix_attention`), or, where the attention implementation is not wrapped, a
    per-row copy (`_PrefixLayer`)."""
    thinker = base_thinker(model)
    lm = _getattr_path(thinker, module.language_model)
    inverse = prompt.rows_of(inputs)
    p, c = prompt.prompt_mask.shape[1], completion_ids.shape[1]
    embeds = thinker.get_input_embeddings()(completion_ids)
    positions = prompt.positions[..., inverse, p : p + c]
    with _replay_safe_cache(lm.layers):
        if one_copy_ready(lm.config):
            shared = SharedPrefix(prompt.keys, prompt.values, prompt.prompt_mask, inverse,
                                  completion_mask=completion_mask)
            out = lm(inputs_embeds=embeds, position_ids=positions, attention_mask=None, use_cache=False,
                     shared_prefix=shared)
        else:
            prefix = Cache(layers=[_PrefixLayer(k[inverse], v[inverse]) for k, v in zip(prompt.keys, prompt.values)])
            mask = torch.cat([prompt.prompt_mask[inverse], completion_mask.to(prompt.prompt_mask.dtype)], dim=1)
            out = lm(inputs_embeds=embeds, position_ids=positions, attention_mask=mask, past_key_values=prefix,
                     use_cache=False)
    return torch.cat([prompt.last_hidden[inverse], out.last_hidden_state[:, :-1]], dim=1)


BANNED_LOGIT = -1e30  # exp() of it is exactly 0 in float32, and 0 * it is 0 (no NaN in the entropy)


def _scored_logits(logits: torch.Tensor, temperature: float, banned: torch.Tensor | None) -> torch.Tensor:
    """The logits of the distribution the sampler draws from: divided by the temperature, media tokens removed.

    `generate` bans the media tokens and then divides by T (Hugging Face's order); the banned entries are
    removed here after the division, so they carry no probability mass, exactly as in sampling.
    """
    logits = logits / temperature
    if banned is not None and banned.numel():
        logits = logits.index_fill(-1, banned, BANNED_LOGIT)
    return logits


METRIC_ENTROPY_STRIDE = 8  # the entropy metric (entropy_coef = 0) reads every 8th completion position


def _entropy(logits: torch.Tensor, logz: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position: logZ − E_p[logit]."""
    return logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def _entropy_sample(logits: torch.Tensor, logz: torch.Tensor, offset: int, stride: int) -> torch.Tensor:
    """Detached entropy at this chunk's positions offset, offset + stride, ... (the metric subsample)."""
    with torch.no_grad():
        return _entropy(logits[:, offset::stride].detach(), logz[:, offset::stride].detach())


def _chunk_logprobs(lm_head, hidden, targets, temperature: float, with_entropy: bool, banned=None,
                    offset: int = 0, stride: int = 1):
    logits = _scored_logits(lm_head(hidden).float(), temperature, banned)  # [n, c, V] for one chunk only
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
    if not with_entropy:
        return logp, torch.zeros_like(logp)
    if stride > 1:
        return logp, _entropy_sample(logits, logz, offset, stride)
    return logp, _entropy(logits, logz)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16 logits lose too much for log-softmax)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _FrozenHeadLogProbs(torch.autograd.Function):
    """Log-probs and entropy of one chunk through a frozen output projection `weight` [V, H].

    Saves only the chunk's hidden states and a reference to the weight, recomputes the logits in backward
    and returns the gradient for the hidden states (the weight gets none). Used when `lm_head` is frozen
    (LoRA): under ZeRO-3 a frozen module is not re-gathered when torch's checkpoint recomputes it, so the
    weight is gathered once by the caller and kept alive by this reference until backward.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, with_entropy, banned, offset=0, stride=1):
        logits = _scored_logits(_upcast(hidden @ weight.t()), temperature, banned)  # [n, c, V]
        logz = torch.logsumexp(logits, dim=-1)
        logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
        if not with_entropy:
            entropy = torch.zeros_like(logp)
        elif stride > 1:
            entropy = _entropy_sample(logits, logz, offset, stride)
            ctx.mark_non_differentiable(entropy)
        else:
            entropy = _entropy(logits, logz)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature, ctx.banned, ctx.entropy_grad = temperature, banned, with_entropy and stride == 1
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets = ctx.saved_tensors
        logits = _scored_logits(_upcast(hidden @ weight.t()), ctx.temperature, ctx.banned)
        probs = torch.softmax(logits, dim=-1)  # exactly 0 at banned tokens, so they get no gradient
        grad_logp = grad_logp.to(logits.dtype)
        grad_entropy = None if grad_entropy is None or not ctx.entropy_grad else grad_entropy.to(logits.dtype)
        # d logp / d logits = onehot(target) - p
        dlogits = -probs * grad_logp.unsqueeze(-1)
        dlogits.scatter_add_(-1, targets.unsqueeze(-1), grad_logp.unsqueeze(-1))
        if grad_entropy is not None:
            # d entropy / d logit_j = -p_j (logit_j - E_p[logit])
            mean = (probs * logits).sum(-1, keepdim=True)
            dlogits -= probs * (logits - mean) * grad_entropy.unsqueeze(-1)
        grad_hidden = (dlogits / ctx.temperature).to(weight.dtype) @ weight
        return grad_hidden.to(hidden.dtype), None, None, None, None, None, None, None


@contextmanager
def _whole_weight(param):
    """The full tensor of `param`, gathered for the block under ZeRO-3 (a plain parameter is already whole)."""
    if hasattr(param, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([param]):
            yield param.data
    else:
        yield param.detach()


def log_probs(module: OmniModule, model, inputs: ModelInputs, completion_ids: torch.Tensor,
              completion_mask: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False,
              chunk_size: int = 256, share_prompt: bool = True, banned_token_ids: list[int] | None = None,
              entropy_stride: int = 1, prompt: PromptPass | None = None):
    """Per-token log-probs (and entropies) of the completion tokens: ([N, C], [N, C] or None).

    Scored under the distribution `generate` samples from: logits divided by `temperature` (the rollout's)
    and `banned_token_ids` (the media tokens, `OmniModule.banned_token_ids`) removed from the normaliser.
    With top_k = 0, top_p = 1 and no repetition penalty this is exactly the sampler's log-probability of each
    token (to float rounding), so the policy gradient is the gradient of the policy that sampled. The entropy
    is that distribution's entropy.

    Gradient flows when called under grad mode. The vocabulary projection runs per chunk of `chunk_size`
    positions and is recomputed in backward, so `[N, C, V]` float32 logits never exist at once (Qwen's
    vocabulary is 152k: one 1k-token completion would otherwise cost 0.6 GB per row). A trainable `lm_head`
    is called as a module under activation checkpointing (so ZeRO-3's hooks gather it); a frozen one goes
    through `_FrozenHeadLogProbs`. `share_prompt`, `prompt`: see :func:`forward_hidden`.

    Entropy (float32, over the whole vocabulary: a softmax per position, ~1/6 of the pass at a 152k vocabulary)
    is only computed with `with_entropy`. `entropy_stride = 1`: at every position, differentiable (what an
    entropy bonus needs). `entropy_stride = k > 1`: a detached metric at completion positions 0, k, 2k, ...
    only, shape `[N, ceil(C / k)]` (mask it with `completion_mask[:, ::k]`), at 1/k of the cost; the
    log-probs and their gradients are the same as without it.
    """
    hidden = forward_hidden(module, model, inputs, completion_ids, completion_mask, share_prompt, prompt)  # [N, C, H]
    lm_head = base_thinker(model).lm_head
    banned = (torch.tensor(banned_token_ids, dtype=torch.long, device=hidden.device)
              if banned_token_ids else None)
    if getattr(lm_head, "bias", None) is not None:
        raise NotImplementedError("an lm_head with a bias is not supported")
    head_trains = any(p.requires_grad for p in lm_head.parameters())
    grad = torch.is_grad_enabled() and (hidden.requires_grad or head_trains)
    pieces_lp, pieces_ent = [], []
    chunks = [(s, hidden[:, s : s + chunk_size], completion_ids[:, s : s + chunk_size])
              for s in range(0, hidden.shape[1], chunk_size)]
    if entropy_stride < 1:
        raise ValueError(f"entropy_stride={entropy_stride} must be >= 1")
    k = entropy_stride
    if grad and head_trains:
        for s, h, t in chunks:
            lp, ent = checkpoint(_chunk_logprobs, lm_head, h, t, temperature, with_entropy, banned, -s % k, k,
                                 use_reentrant=False)
            pieces_lp.append(lp)
            pieces_ent.append(ent)
    elif grad:
        with _whole_weight(lm_head.weight) as weight:
            for s, h, t in chunks:
                lp, ent = _FrozenHeadLogProbs.apply(h, weight, t, temperature, with_entropy, banned, -s % k, k)
                pieces_lp.append(lp)
                pieces_ent.append(ent)
    else:
        for s, h, t in chunks:
            lp, ent = _chunk_logprobs(lm_head, h, t, temperature, with_entropy, banned, -s % k, k)
            pieces_lp.append(lp)
            pieces_ent.append(ent)
    lp = torch.cat(pieces_lp, dim=1)
    ent = torch.cat(pieces_ent, dim=1) if with_entropy else None
    return lp, ent


