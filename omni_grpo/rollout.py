"""Rollout: G completions per prompt under ZeRO-3, returned as one typed container.

Under ZeRO-3 each rank holds a shard of every weight. Generating token by token through DeepSpeed's
per-module gather hooks costs one all-gather per module per token; instead, as TRL's
`unwrap_model_for_generation` does, the hooks are removed, all weights are gathered once for the whole
`generate` call, and the hooks are put back afterwards (measured ~10x faster than `synced_gpus=True` on
CPU here). `synced_gpus=False` with sharded weights would hang ranks that stop early; gathering avoids it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from omni_grpo.models.base import ModelInputs


@dataclass
class Rollout:
    """One micro-step's experience: B prompts x G completions = N rows, row i*G + j is sample j of prompt i.

    inputs: ModelInputs of the N rows (prompts repeated; media shared through `encoded` when frozen).
    completion_ids, completion_mask: [N, C]. truncated: [N] bool.
    texts: [N] decoded completions. samples: [N] reward fields of each row's prompt.
    scores: [N, F] per-reward scores (NaN = not scored); rewards: [N] weighted total; advantages: [N].
    old_log_probs, ref_log_probs: [N, C] or None when μ = 1 / β = 0.
    temperature: the sampling temperature; every log-prob pass over these rows scores at it.
    """

    inputs: ModelInputs
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    truncated: torch.Tensor
    texts: list[str]
    samples: list[dict]
    scores: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    per_sample_rewards: list[dict] | None = None
    old_log_probs: torch.Tensor | None = None
    ref_log_probs: torch.Tensor | None = None
    temperature: float = 1.0

    @property
    def num_rows(self) -> int:
        return self.completion_ids.shape[0]

    def rows(self, start: int, stop: int) -> "Rollout":
        """Rows [start, stop) for one update micro-batch (media follow their rows)."""
        sl = slice(start, stop)

        def cut(t):
            return None if t is None else t[sl]

        return Rollout(
            inputs=self.inputs.select(list(range(start, stop))),
            completion_ids=self.completion_ids[sl],
            completion_mask=self.completion_mask[sl],
            truncated=self.truncated[sl],
            texts=self.texts[sl],
            samples=self.samples[sl],
            scores=cut(self.scores),
            rewards=cut(self.rewards),
            advantages=cut(self.advantages),
            per_sample_rewards=None if self.per_sample_rewards is None else self.per_sample_rewards[sl],
            old_log_probs=cut(self.old_log_probs),
            ref_log_probs=cut(self.ref_log_probs),
            temperature=self.temperature,
        )


@contextmanager
def gathered_for_generation(engine):
    """Inside: every weight of a ZeRO-3 `engine` is whole on every rank and its hooks are off."""
    optimizer = getattr(engine, "optimizer", None)
    offload = getattr(optimizer, "parameter_offload", None)
    if offload is None:  # not ZeRO-3 (plain, ZeRO-1/2): weights are already whole
        yield
        return
    import deepspeed

    for p in engine.module.parameters():
        if hasattr(p, "ds_active_sub_modules"):
            p.ds_active_sub_modules.clear()
    offload._remove_module_hooks()
    try:
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            yield
    finally:
        offload.setup_zero_stage3_hooks()
