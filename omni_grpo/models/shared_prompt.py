"""The language-model forward over prompt + completions, each distinct prompt run once (the shared prompt).

`forward_hidden` runs prompt + completions through the language model and returns the hidden states that
predict each completion token; with `share_prompt`, rows that copy one prompt run it once (`prompt_pass`) and
reuse its per-layer keys/values (the shared-prompt KV trick: `_PromptLayer` records them, the completions
attend to one copy per prompt through `prefix_attention.SharedPrefix`, or to a per-row copy, `_PrefixLayer`,
where the attention implementation is not wrapped; `completion_hidden`). `GroupPrompt` runs a rollout's prompt
pass once for all of its update micro-batches (`group_prompt` decides when). The vocabulary head that turns
these hidden states into log-probs is `head_logprobs`; `logprobs.log_probs` joins the two.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

from omni_grpo.models.base import OmniModule, _getattr_path, base_thinker
from omni_grpo.models.inputs import ModelInputs
from omni_grpo.models.prefix_attention import SharedPrefix, one_copy_ready


def forward_hidden(
    module: OmniModule,
    model,
    inputs: ModelInputs,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    share_prompt: bool = True,
    prompt: PromptPass | None = None,
    completion_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
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
        out = lm(
            inputs_embeds=embeds,
            position_ids=positions[..., :p],
            attention_mask=prompts.attention_mask,
            past_key_values=cache,
            use_cache=False,
            **prompt_kw,
        )
    return PromptPass(
        list(prompts.prompt_index),
        [layer.keys for layer in cache.layers],
        [layer.values for layer in cache.layers],
        out.last_hidden_state[:, p - 1 : p],
        positions,
        prompts.attention_mask,
    )


def completion_hidden(
    module: OmniModule,
    model,
    prompt: PromptPass,
    inputs: ModelInputs,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    completion_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
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
            shared = SharedPrefix(
                prompt.keys, prompt.values, prompt.prompt_mask, inverse, completion_mask=completion_mask
            )
            out = lm(
                inputs_embeds=embeds, position_ids=positions, attention_mask=None, use_cache=False, shared_prefix=shared
            )
        else:
            prefix = Cache(layers=[_PrefixLayer(k[inverse], v[inverse]) for k, v in zip(prompt.keys, prompt.values)])
            mask = torch.cat([prompt.prompt_mask[inverse], completion_mask.to(prompt.prompt_mask.dtype)], dim=1)
            out = lm(
                inputs_embeds=embeds,
                position_ids=positions,
                attention_mask=mask,
                past_key_values=prefix,
                use_cache=False,
            )
    return torch.cat([prompt.last_hidden[inverse], out.last_hidden_state[:, :-1]], dim=1)


class GroupPrompt:
    """A rollout's prompt pass, and the embeddings of all its completions, run once for all of its update
    micro-batches (the prompt once per group).

    The micro-batches before the last attend to `leaves`, the pass's keys/values and last hidden state cut
    from its graph, and read their completions' embeddings from `embeds_leaf`, the rollout's completion
    embeddings cut likewise: each backward accumulates the parameters' gradients and the leaves'. The last
    micro-batch attends to the pass itself, reads the attached embeddings, and adds Σ tensor · (leaf gradient
    / c), so its one backward also carries the earlier micro-batches' gradient through the prompt and the
    embedding table — the backward count per optimizer step is unchanged, and the embedding table's [V, H]
    gradient is made once per step instead of once per micro-batch. c is how much the engine scales a loss's
    gradient (DeepSpeed: its accumulation and rank factors): `probe − probe.detach()`, 0 in value, is added to
    the first loss, and its gradient is c.
    """

    def __init__(self, attached: PromptPass, embeds: torch.Tensor):
        self.attached, self.leaves = attached, attached.detached()
        self.embeds, self.embeds_leaf = embeds, embeds.detach().requires_grad_(embeds.requires_grad)
        self.probe = torch.zeros((), device=attached.prompt_mask.device, requires_grad=True)

    def inputs(self, rows: list[int], last: bool) -> tuple[PromptPass | None, torch.Tensor | None]:
        """(the prompt pass, the completion embeddings of `rows`) for one micro-batch: the `prompt` and
        `completion_embeds` arguments of `forward_hidden`."""
        index = torch.tensor(rows, dtype=torch.long, device=self.embeds.device)
        if last:
            return self.attached, self.embeds[index]
        return self.leaves, self.embeds_leaf[index]

    def with_prompt_terms(self, loss: torch.Tensor, first: bool, last: bool) -> torch.Tensor:
        """A micro-batch's loss with the terms that carry the prompt's gradient (see the class docstring)."""
        if first:
            loss = loss + (self.probe - self.probe.detach())
        scale = self.probe.grad
        if last and not first and scale is not None and bool(torch.isfinite(scale)) and float(scale) != 0.0:
            pairs = [*zip(self.attached.tensors(), self.leaves.tensors()), (self.embeds, self.embeds_leaf)]
            terms = [
                (t.float() * (leaf.grad.float().nan_to_num(0.0, 0.0, 0.0) / scale)).sum()
                for t, leaf in pairs
                if leaf.grad is not None
            ]
            loss = loss + sum(terms)
        return loss


class PerBatchPrompt:
    """No shared pass: each micro-batch runs its own prompts (the `GroupPrompt` interface, doing nothing)."""

    def inputs(self, rows: list[int], last: bool) -> tuple[None, None]:
        return None, None

    def with_prompt_terms(self, loss: torch.Tensor, first: bool, last: bool) -> torch.Tensor:
        return loss


def group_prompt(
    module: OmniModule,
    model,
    inputs: ModelInputs,
    completion_ids: torch.Tensor,
    micro_batches: list[list[int]],
    share_prompt: bool = True,
) -> GroupPrompt | PerBatchPrompt:
    """How the update micro-batches `micro_batches` (row indices of `inputs`) get their prompts: a
    `GroupPrompt` when the prompt is shared and some prompt's rows fall in more than one micro-batch
    (`update_micro_batch_size` < G), else `PerBatchPrompt`. Under ZeRO-3 too: the step's gradient is the
    single-process one (tests/test_distributed.py::test_zero3_gradient_equals_single_process)."""
    if not (share_prompt and completion_ids.shape[1] > 0):
        return PerBatchPrompt()
    index = inputs.prompt_index
    seen: dict[int, int] = {}
    for k, rows in enumerate(micro_batches):
        for p in {index[r] if index is not None else r for r in rows}:
            if seen.setdefault(p, k) != k:
                embed = base_thinker(model).get_input_embeddings()
                return GroupPrompt(prompt_pass(module, model, inputs, completion_ids), embed(completion_ids))
    return PerBatchPrompt()
