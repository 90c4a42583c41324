"""The log-prob pass: the per-token log-probs (and entropies) of completion tokens, with or without gradient.

`log_probs` is the one pass the trainer (policy, old, reference), `evaluate` and the benchmarks run: the
language-model forward over prompt + completions with the prompt shared (`shared_prompt.forward_hidden`),
then the vocabulary head (`head_logprobs.head_scores`).
"""

from __future__ import annotations

import torch

from omni_grpo.models.base import OmniModule
from omni_grpo.models.head_logprobs import head_scores
from omni_grpo.models.inputs import ModelInputs
from omni_grpo.models.shared_prompt import PromptPass, forward_hidden


def log_probs(
    module: OmniModule,
    model,
    inputs: ModelInputs,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    share_prompt: bool = True,
    banned_token_ids: list[int] | None = None,
    entropy_stride: int = 1,
    prompt: PromptPass | None = None,
    sliced: bool | None = None,
    completion_embeds: torch.Tensor | None = None,
):
    """Per-token log-probs (and entropies) of the completion tokens: ([N, C], [N, C] or None).

    Scored under the distribution `generate` samples from: logits divided by `temperature` (the rollout's)
    and `banned_token_ids` (the media tokens, `OmniModule.banned_token_ids`) removed from the normaliser.
    With top_k = 0, top_p = 1 and no repetition penalty this is exactly the sampler's log-probability of each
    token (to float rounding), so the policy gradient is the gradient of the policy that sampled. The entropy
    is that distribution's entropy.

    Gradient flows when called under grad mode. The vocabulary projection goes through
    :class:`~omni_grpo.models.head_logprobs.HeadLogProbs` (`sliced`, the default wherever it can: see
    :func:`~omni_grpo.models.head_logprobs.sliced_head`): one vocabulary slice at a time with an online
    log-sum-exp, recomputed in backward, so no [N, C, V] logits exist at any time (Qwen's vocabulary is 152k).
    A ZeRO-3 partitioned trainable `lm_head` is called as a module per `head_logprobs.HEAD_CHUNK` positions
    under activation checkpointing instead (so ZeRO-3's hooks gather it); a partitioned frozen one is gathered
    once for the pass (`engine.gathered_param`).
    `share_prompt`, `prompt`, `completion_embeds`: see :func:`~omni_grpo.models.shared_prompt.forward_hidden`.

    Entropy is only computed with `with_entropy`. `entropy_stride = 1`: at every position, differentiable
    (what an entropy bonus needs). `entropy_stride = k > 1`: a detached metric at completion positions 0, k,
    2k, ... only, shape `[N, ceil(C / k)]` (mask it with `completion_mask[:, ::k]`); the log-probs and their
    gradients are the same as without it. (Sliced, the entropy of every position costs one more multiply-add
    per logit; the module path computes only the subsample.)
    """
    hidden = forward_hidden(
        module, model, inputs, completion_ids, completion_mask, share_prompt, prompt, completion_embeds
    )  # [N, C, H]
    return head_scores(
        model, hidden, completion_ids, temperature, with_entropy, banned_token_ids, entropy_stride, sliced
    )
