"""Log-prob passes: the hidden states that predict each completion token, and their per-token log-probs.

`forward_hidden` runs prompt + completions through the language model; with `share_prompt`, rows that copy
one prompt run it once and reuse its per-layer keys/values (the shared-prompt KV trick: `_PromptLayer`
records them, the completions attend to one copy per prompt through `prefix_attention.SharedPrefix`, or to a
per-row copy, `_PrefixLayer`, where the attention implementation is not wrapped). `log_probs` projects onto
the vocabulary one slice at a time (`head_logprobs.HeadLogProbs`; per chunk of positions through the module
for a ZeRO-3 trainable head) and scores under the distribution the sampler draws from (temperature, media
tokens banned).
"""

from __future__ import annotations

import contextlib
import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import Cache, DynamicLayer

from omni_grpo.models.base import OmniModule, _getattr_path, base_thinker
from omni_grpo.models.head_logprobs import BANNED_LOGIT, head_log_probs
from omni_grpo.models.inputs import ModelInputs
from omni_grpo.models.prefix_attention import SharedPrefix, one_copy_ready

def forward_hidden(module: OmniModule, model, inputs: ModelInputs, completion_ids: torch.Tensor,
                   completion_mask: torch.Tensor, share_prompt: bool = True,
                   prompt: PromptPass | None = None, completion_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Last hidden states [N, C, H] that predict each completion token (N = rows of `inputs`).

    With `share_prompt`, rows that are copies of one prompt (`inputs.prompt_index`, set by `repeat`) run the
    prompt through the language model once: its per-layer keys/values are reused by each row's completion
    (:func:`prompt_pass`, then :func:`completion_hidden`: one copy of them for all its rows), and its
    embeddings, media splice and TMRoPE positions are computed once. Same result up to float rounding; the
    prompt costs 1/G of the compute and activation memory, with gradient flowing into the shared prompt pass.
    `prompt`: a :class:`PromptPass` of the batch these rows come from, already run (the update runs it once
    per group for all of its micro-batches); only the completion pass runs, on `completion_embeds` [N, C, H]
    when given (the update embeds a group's completions once too) instead of embedding `completion_ids`.
    """
    thinker = base_thinker(model)
    lm = _getattr_path(thinker, module.language_model)
    prompt_len = inputs.input_ids.shape[1]
    mask = torch.cat([inputs.attention_mask, completion_mask.to(inputs.attention_mask.dtype)], dim=1)  # [N, P+C]
    if prompt is not None:
        return completion_hidden(module, model, prompt, inputs, completion_ids, completion_mask, completion_embeds)
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
                      completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                      completion_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """`forward_hidden` of rows of `inputs` against a prompt pass already run: one completion pass over all
    rows attending to their prompt's keys/values, one copy per distinct prompt
    (:mod:`omni_grpo.models.prefix_attention`), or, where the attention implementation is not wrapped, a
    per-row copy (`_PrefixLayer`)."""
    thinker = base_thinker(model)
    lm = _getattr_path(thinker, module.language_model)
    inverse = prompt.rows_of(inputs)
    p, c = prompt.prompt_mask.shape[1], completion_ids.shape[1]
    embeds = thinker.get_input_embeddings()(completion_ids) if completion_embeds is None else completion_embeds
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
    return not (hasattr(lm_head.weight, "ds_id") and lm_head.weight.requires_grad)


def sliced_head(model) -> bool:
    """Whether the log-prob passes of a run training `model` score through `HeadLogProbs` (`_can_slice` of its
    head). A run passes the same answer to every pass, reference included, so that KL is exactly 0 at step 0."""
    return _can_slice(base_thinker(model).lm_head)


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
              entropy_stride: int = 1, prompt: PromptPass | None = None, sliced: bool | None = None,
              completion_embeds: torch.Tensor | None = None):
    """Per-token log-probs (and entropies) of the completion tokens: ([N, C], [N, C] or None).

    Scored under the distribution `generate` samples from: logits divided by `temperature` (the rollout's)
    and `banned_token_ids` (the media tokens, `OmniModule.banned_token_ids`) removed from the normaliser.
    With top_k = 0, top_p = 1 and no repetition penalty this is exactly the sampler's log-probability of each
    token (to float rounding), so the policy gradient is the gradient of the policy that sampled. The entropy
    is that distribution's entropy.

    Gradient flows when called under grad mode. The vocabulary projection goes through
    :class:`~omni_grpo.models.head_logprobs.HeadLogProbs` (`sliced`, the default wherever it can: see
    :func:`sliced_head`): one vocabulary slice at a time with an online log-sum-exp, recomputed in backward, so
    no [N, C, V] logits exist at any time (Qwen's vocabulary is 152k). A ZeRO-3 partitioned trainable `lm_head`
    is called as a module per `chunk_size` positions under activation checkpointing instead (so ZeRO-3's hooks
    gather it); a partitioned frozen one is gathered once for the pass (`_whole_weight`).
    `share_prompt`, `prompt`, `completion_embeds`: see :func:`forward_hidden`.

    Entropy is only computed with `with_entropy`. `entropy_stride = 1`: at every position, differentiable
    (what an entropy bonus needs). `entropy_stride = k > 1`: a detached metric at completion positions 0, k,
    2k, ... only, shape `[N, ceil(C / k)]` (mask it with `completion_mask[:, ::k]`); the log-probs and their
    gradients are the same as without it. (Sliced, the entropy of every position costs one more multiply-add
    per logit; the module path computes only the subsample.)
    """
    hidden = forward_hidden(module, model, inputs, completion_ids, completion_mask, share_prompt, prompt,
                            completion_embeds)  # [N, C, H]
    lm_head = base_thinker(model).lm_head
    banned = (torch.tensor(banned_token_ids, dtype=torch.long, device=hidden.device)
              if banned_token_ids else None)
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
        raise ValueError("this lm_head (ZeRO-3 partitioned and trainable, or not a plain nn.Linear) can only be "
                         "scored through its module: sliced=False")
    grad = torch.is_grad_enabled() and (hidden.requires_grad or head_trains)
    if sliced or (grad and not head_trains and can_slice):  # a frozen head under gradient: always sliced
        partitioned = hasattr(lm_head.weight, "ds_id")
        with _whole_weight(lm_head.weight) if partitioned else contextlib.nullcontext(lm_head.weight) as weight:
            lp, ent = head_log_probs(hidden, weight, completion_ids, temperature, banned,
                                     entropy_grad=with_entropy and k == 1 and grad)
        if not with_entropy:
            return lp, None
        return lp, (ent if k == 1 else ent[:, ::k].detach())
    pieces_lp, pieces_ent = [], []
    for s in range(0, hidden.shape[1], chunk_size):
        h, t = hidden[:, s : s + chunk_size], completion_ids[:, s : s + chunk_size]
        if grad:
            lp, ent = checkpoint(_chunk_logprobs, lm_head, h, t, temperature, with_entropy, banned, -s % k, k,
                                 use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(lm_head, h, t, temperature, with_entropy, banned, -s % k, k)
        pieces_lp.append(lp)
        pieces_ent.append(ent)
    lp = torch.cat(pieces_lp, dim=1)
    return lp, (torch.cat(pieces_ent, dim=1) if with_entropy else None)


