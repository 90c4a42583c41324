"""The token loop: G completions per prompt from one prefill, sampled with Hugging Face's logits processors.

A model-level pass like the log-prob passes (it takes the family's embeddings and TMRoPE positions through
`prompt_model_inputs`), so it lives beside them under `models/`; `omni_grpo.rollout.sample` calls it inside
the engine's gathered-weights context and builds the `Rollout`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from omni_grpo.models.base import OmniModule, _getattr_path, base_thinker
from omni_grpo.models.inputs import ModelInputs
from omni_grpo.models.prefix_attention import SharedPrefix, one_copy_ready
from omni_grpo.models.shared_prompt import prompt_model_inputs


@dataclass
class Completions:
    """G sampled completions per prompt, right-padded after the first stop token.

    completion_ids, completion_mask: [B*G, C]; row i*G + j is completion j of prompt i.
    truncated: [B*G] bool, True where no stop token was produced within the length budget.
    """

    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    truncated: torch.Tensor


def sampling_processors(
    module: OmniModule,
    tokenizer,
    prompt_length: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    do_sample: bool = True,
    min_new_tokens: int = 0,
):
    """Hugging Face's logits processors for our sampling arguments, in Hugging Face's order.

    `GenerationMixin._get_logits_processor` applies: repetition penalty, min-new-tokens (stop tokens banned),
    suppressed tokens (the media tokens), then the warpers temperature, top-k, top-p. Banning the stop tokens
    before top-k matters: after it, a stop token inside the top k would leave only k − 1 candidates.
    `prompt_length` is the width of the prompt ids the processors see before the first new token.
    """
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        SuppressTokensLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if min_new_tokens > 0:
        processors.append(
            MinNewTokensLengthLogitsProcessor(prompt_length, min_new_tokens, module.stop_token_ids(tokenizer))
        )
    banned = module.banned_token_ids(tokenizer)
    if banned:
        processors.append(SuppressTokensLogitsProcessor(banned))
    if do_sample:
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_k:
            processors.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p))
    return processors


def generate(
    module: OmniModule,
    model,
    processor,
    inputs: ModelInputs,
    num_generations: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    do_sample: bool = True,
) -> Completions:
    """G completions per prompt, sampled as one batch; media tokens banned; each row stops at `<|im_end|>`.

    `inputs` holds the B prompts; rows of the result are grouped: row i*G + j is sample j of prompt i.
    Each prompt is prefilled once (B rows, not B*G) and its G rows attend to that one copy of its
    keys/values (:mod:`omni_grpo.models.prefix_attention`; a per-row copy where the attention implementation
    is not wrapped), and only the last position is projected onto the vocabulary. The token loop is ours rather
    than the thinker's `generate`: the thinkers' forward has no `logits_to_keep` (their prefill would compute
    [B*G, P, V] logits) and would prefill every copy. Sampling follows Hugging Face's processors in Hugging Face's order
    (:func:`sampling_processors`); only the arguments given here apply, not the checkpoint's
    generation_config. Positions come from the module (`language_model_inputs` over the prompt plus
    `max_new_tokens` text slots), so TMRoPE and the `use_audio_in_video` flag are the ones every log-prob
    pass uses. Each step's scores are those of :func:`sampling_processors` (looked up at each call: a benchmark
    that forces a length wraps it with `min_new_tokens`).
    """
    from transformers.cache_utils import DynamicCache

    tokenizer = processor.tokenizer
    thinker = base_thinker(model)
    lm = _getattr_path(thinker, module.language_model)
    stop_ids, pad_id = module.stop_token_ids(tokenizer), module.pad_token_id(tokenizer)
    b, p = inputs.input_ids.shape
    device = inputs.input_ids.device
    if max_new_tokens < 1:
        empty = inputs.input_ids.new_zeros((b * num_generations, 0))
        return finish_completions(empty, stop_ids, pad_id)
    slots = inputs.input_ids.new_full((b, max_new_tokens), pad_id)
    embeds, positions, mask, prompt_kw = prompt_model_inputs(module, thinker, inputs, slots)
    cache = DynamicCache(config=lm.config)
    out = lm(
        inputs_embeds=embeds,
        position_ids=positions[..., :p],
        attention_mask=inputs.attention_mask,
        cache=cache,
        use_cache=True,
        **prompt_kw,
    )
    rows = torch.arange(b, device=device).repeat_interleave(num_generations)
    shared = None
    if one_copy_ready(lm.config):  # the G rows of a prompt read one copy of its keys/values
        shared = SharedPrefix(
            [layer.keys for layer in cache.layers],
            [layer.values for layer in cache.layers],
            inputs.attention_mask,
            rows,
        )
        cache = DynamicCache(config=lm.config)  # the completions' own keys/values
    else:
        cache.batch_repeat_interleave(num_generations)
    hidden = out.last_hidden_state[rows, -1]  # [N, H]
    positions, mask = positions[..., rows, :], mask[rows]

    processors = sampling_processors(module, tokenizer, p, temperature, top_p, top_k, repetition_penalty, do_sample)
    stops = torch.tensor(stop_ids, device=device)
    # Prompt + tokens so far, which the repetition penalty reads: each row's own tokens only. Its left padding
    # (the pad token, a stop token) becomes the row's first real token, already penalised once, so that a sample
    # is penalised alike alone and in a batch of longer prompts.
    first_real = inputs.attention_mask.long().argmax(dim=1, keepdim=True)  # [B, 1]
    own = torch.where(inputs.attention_mask.bool(), inputs.input_ids, inputs.input_ids.gather(1, first_real))
    seen = own[rows]
    done = torch.zeros(rows.shape[0], dtype=torch.bool, device=device)
    embed_tokens = thinker.get_input_embeddings()
    tokens, noise = [], None
    ahead = do_sample and draws_ahead(thinker, device)
    with ThreadPoolExecutor(1, thread_name_prefix="omni-grpo-noise") if ahead else nullcontext() as pool:
        for t in range(max_new_tokens):
            scores = processors(seen, thinker.lm_head(hidden).float())
            if do_sample:
                probs = torch.softmax(scores, dim=-1)
                token = draw(probs, noise.result()) if noise is not None else torch.multinomial(probs, 1).squeeze(1)
            else:
                token = scores.argmax(dim=-1)
            token = torch.where(done, torch.full_like(token, pad_id), token)
            tokens.append(token)
            done |= torch.isin(token, stops)
            if bool(done.all()) or t == max_new_tokens - 1:
                break
            if pool is not None:  # the next token's noise, drawn while the model runs
                noise = pool.submit(exponential_noise, scores.shape, scores.dtype)
            seen = torch.cat([seen, token[:, None]], dim=1)
            step_kw = (
                dict(attention_mask=None, shared_prefix=shared)
                if shared is not None
                else dict(attention_mask=mask[:, : p + t + 1])
            )
            step = lm(
                inputs_embeds=embed_tokens(token[:, None]),
                position_ids=positions[..., p + t : p + t + 1],
                cache=cache,
                use_cache=True,
                **step_kw,
            )
            hidden = step.last_hidden_state[:, -1]
    return finish_completions(torch.stack(tokens, dim=1), stop_ids, pad_id)


def draws_ahead(thinker, device: torch.device) -> bool:
    """Whether `generate` draws each token's sampling noise while the model runs the previous token (`draw`):
    on a CPU, with no module in training mode (a dropout would draw from the generator in between)."""
    return device.type == "cpu" and not any(m.training for m in thinker.modules())


def exponential_noise(shape, dtype) -> torch.Tensor:
    """The Exp(1) draws `torch.multinomial` makes for one sample per row of CPU probabilities of `shape`."""
    return torch.empty(shape, dtype=dtype).exponential_()


def draw(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """`torch.multinomial(probs, 1).squeeze(1)` given the `exponential_noise` it would draw: its checks, then
    argmax(probs / noise) per row (torch's one-sample path), so the same token.

    Why `generate` draws the noise ahead on a CPU: the draw is serial and, at Qwen's 152k vocabulary, costs about
    a third of a small model's token (8 x 152k draws, ~20 ms). It is drawn on a second thread while the model
    runs the previous token, from the same default generator, in the same order, with nothing else drawing in
    between (`draws_ahead`: no module in training mode, so no dropout draws) and never for a token that is not
    sampled: the tokens and the generator's state after the loop are those of `torch.multinomial`.
    """
    if not bool(((probs.max() < float("inf")) & (probs.min() >= 0)).item()):
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
    if bool((probs.sum(-1) == 0).any()):
        raise RuntimeError("invalid multinomial distribution (sum of probabilities <= 0)")
    return (probs / noise).argmax(dim=-1)


def finish_completions(completion_ids: torch.Tensor, stop_ids: list[int], pad_id: int) -> Completions:
    """Mask everything after the first stop token (kept), pad it, and flag rows that never stopped.

    `generate` returns fewer than `max_new_tokens` columns only when every row stopped, so a row with no
    stop token is exactly a row that ran out of budget.
    """
    n, c = completion_ids.shape
    is_stop = torch.zeros_like(completion_ids, dtype=torch.bool)
    for s in stop_ids:
        is_stop |= completion_ids == s
    has_stop = is_stop.any(dim=1)
    first_stop = torch.where(has_stop, is_stop.float().argmax(dim=1), torch.full((n,), c, device=is_stop.device))
    positions = torch.arange(c, device=completion_ids.device).unsqueeze(0)
    mask = (positions <= first_stop.unsqueeze(1)).long()  # the stop token itself is scored
    completion_ids = torch.where(mask.bool(), completion_ids, torch.full_like(completion_ids, pad_id))
    return Completions(completion_ids=completion_ids, completion_mask=mask, truncated=~has_stop)
