"""Rollout: `sample(...)` draws G completions per prompt and returns them as one typed `Rollout`.

The one sampling path of the trainer, `evaluate` and `bench/gpu_bench.py`: encode the media once (frozen
towers), generate inside the engine's gathered-weights context (under ZeRO-3 every weight is gathered once for
the whole token loop, as TRL's `unwrap_model_for_generation` does: ~10x faster than `synced_gpus=True` here,
and `synced_gpus=False` with sharded weights would hang; see `engine.DeepSpeedEngine.gathered_for_generation`),
decode the texts, and repeat the prompt inputs and sample fields to the N = B*G rows. The token loop itself is
`models.sampling.generate`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from omni_grpo.models.inputs import ModelInputs
from omni_grpo.models.sampling import generate


@dataclass
class Rollout:
    """One micro-step's experience: B prompts x G completions = N rows, row i*G + j is sample j of prompt i.

    Built by `sample` with the generation fields; the trainer's `rollout` phase (`GRPOTrainer.rollout`) is the
    one place that fills the rest — scores, rewards, advantages, per_sample_rewards, then the no-grad
    log-probs — before the update reads it.

    inputs: ModelInputs of the N rows (prompts repeated; media shared through `encoded` when frozen).
    completion_ids, completion_mask: [N, C]. truncated: [N] bool.
    texts: [N] decoded completions. samples: [N] reward fields of each row's prompt.
    scores: [N, F] per-reward scores (NaN = not scored); rewards: [N] weighted total; advantages: [N].
    per_sample_rewards: [N] dicts of each row's named scores (the sample table).
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

    def select(self, index: list[int]) -> "Rollout":
        """The rows at `index`, in that order (media follow their rows); every field kept."""
        idx = torch.tensor(index, dtype=torch.long, device=self.completion_ids.device)

        def take(t):
            return None if t is None else t[idx] if isinstance(t, torch.Tensor) else [t[i] for i in index]

        return Rollout(
            inputs=self.inputs.select(list(index)),
            completion_ids=take(self.completion_ids),
            completion_mask=take(self.completion_mask),
            truncated=take(self.truncated),
            texts=take(self.texts),
            samples=take(self.samples),
            scores=take(self.scores),
            rewards=take(self.rewards),
            advantages=take(self.advantages),
            per_sample_rewards=take(self.per_sample_rewards),
            old_log_probs=take(self.old_log_probs),
            ref_log_probs=take(self.ref_log_probs),
            temperature=self.temperature,
        )

    def groups(self, index: list[int], group_size: int) -> "Rollout":
        """The rows of the groups `index` (ascending), G rows each; the rollout itself when that is all of them."""
        if len(index) == self.num_rows // group_size:
            return self
        return self.select([k * group_size + j for k in index for j in range(group_size)])

    def table(self, n: int) -> list[dict]:
        """The first `n` rows for the TensorBoard sample table: id, answer, each reward, total, advantage, text."""
        rows = []
        for i in range(min(n, self.num_rows)):
            row = {"id": self.samples[i].get("id"), "answer": self.samples[i].get("answer")}
            row.update(self.per_sample_rewards[i] if self.per_sample_rewards else {})
            row.update(total=float(self.rewards[i]), advantage=float(self.advantages[i]), completion=self.texts[i])
            rows.append(row)
        return rows


def rollout_metrics(rollouts: list[Rollout], temperature: float) -> dict:
    """`rollout/…` scalars of one step's rollouts: completion lengths, truncation, temperature."""
    lengths = torch.cat([r.completion_mask.sum(-1).float() for r in rollouts])
    truncated = torch.cat([r.truncated.float() for r in rollouts])
    return {
        "rollout/completion_length": lengths.mean().item(),
        "rollout/completion_length_max": lengths.max().item(),
        "rollout/truncated_ratio": truncated.mean().item(),
        "rollout/temperature": temperature,
    }


def _untimed(name: str):
    return nullcontext()


def sample(
    family,
    model,
    processor,
    inputs: ModelInputs,
    samples: list[dict],
    num_generations: int,
    max_new_tokens: int,
    *,
    encode_once: bool = True,
    gathered=nullcontext,
    timer=_untimed,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    do_sample: bool = True,
) -> Rollout:
    """G completions for each of the B prompts of `inputs` (on the model's device), as a `Rollout` of N rows.

    `family`: the model-family adapter. `samples`: the B prompts' reward fields. `encode_once`: run the towers
    once here and carry their outputs in `inputs.encoded` (frozen towers). `gathered`: a context manager
    factory under which the weights are whole (`engine.gathered_for_generation`; nothing to do outside
    ZeRO-3). `timer(name)`: a context manager per phase ("encode", "rollout"). The sampling arguments are
    those of `models.sampling.generate`.
    """
    if encode_once:
        with timer("encode"), torch.no_grad():
            inputs.encoded = family.encode_media(model, inputs)
    with timer("rollout"), torch.no_grad(), gathered():
        comps = generate(
            family,
            model,
            processor,
            inputs,
            num_generations,
            max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
            do_sample=do_sample,
        )
    texts = processor.tokenizer.batch_decode(comps.completion_ids, skip_special_tokens=True)
    return Rollout(
        inputs=inputs.repeat(num_generations),
        completion_ids=comps.completion_ids,
        completion_mask=comps.completion_mask,
        truncated=comps.truncated,
        texts=texts,
        samples=[s for s in samples for _ in range(num_generations)],
        temperature=temperature,
    )
