"""Evaluation during training: every `eval_steps` optimizer steps (and at the end) the policy answers the
`eval_data` questions greedily, and the result goes to TensorBoard and to `output_dir/eval/step-NNNNNNN/`.

What is evaluated is what is trained and what `python -m omni_grpo.evaluate` reports: the same sampling path
(`rollout.sample`, greedy, inside the engine's gathered-weights context), the same reward manager as the CLI
(`evaluate.reward_manager`: the configured rewards plus the built-ins at weight 0) and the same summary
(`eval_report.summarize`), written in the CLI's format (run.json, predictions.jsonl, summary.json), so
`python -m omni_grpo.evaluate --compare output_dir/eval/step-A output_dir/eval/step-B` works on them.

Ranks: rank r takes questions r, r + W, r + 2W, ...; every rank makes the same number of `sample` calls
(under ZeRO-3 each gathers the weights collectively), so a rank whose share is exhausted repeats a question
and drops its row. The rows are gathered to rank 0, which summarises and writes. Each question is evaluated
once.

The training run is untouched: the Python, NumPy, torch and CUDA random states are saved before and
restored after the evaluation (`rng.preserved`), the questions are collated in this process (no DataLoader iterator, the
training loader and its cursor are not used), and the policy stays in eval mode under no_grad.

TensorBoard tags: `eval/accuracy`, `eval/format_rate`, `eval/reward/<name>` for every reward scored,
`eval/<value>/accuracy` per value of each `eval_group_by` field, and the table `eval/completions`. Each of
`eval_ablations` (`video`, `audio`, `media`, `text`: `omni_grpo.evaluate.ablate_sample`) evaluates the same questions
again with those media blanked, logged as `eval/ablate_<name>/accuracy` and written to
`output_dir/eval/step-NNNNNNN/ablate-<name>/`, so `python -m omni_grpo.evaluate --compare` of the two folders
gives the media's contribution.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import torch

from omni_grpo import eval_report, rng
from omni_grpo.data import Collate, PromptDataset
from omni_grpo.rollout import sample

logger = logging.getLogger("omni_grpo")

EVAL_DIR = "eval"


def step_dir(output_dir, step: int) -> Path:
    """`output_dir/eval/step-NNNNNNN`: one evaluation folder per evaluated step."""
    return Path(output_dir) / EVAL_DIR / f"step-{step:07d}"


def rank_share(num_questions: int, batch_size: int, rank: int, world_size: int) -> list[list[int | None]]:
    """This rank's batches of question indices; every rank gets the same number of batches of `batch_size`,
    and None marks a padding slot (filled with a repeated question whose row is dropped)."""
    mine = list(range(rank, num_questions, world_size))
    per_rank = -(-num_questions // world_size)
    batches = -(-per_rank // batch_size)
    padded = mine + [None] * (batches * batch_size - len(mine))
    return [padded[i : i + batch_size] for i in range(0, len(padded), batch_size)]


class TrainingEvaluator:
    """Built once by the trainer (`cfg.eval_steps > 0`); `run(policy, gathered, step, writer)` evaluates."""

    def __init__(self, cfg, family, processor, rank: int, world_size: int, device, encode_once: bool):
        from omni_grpo.evaluate import question_ids, reward_manager

        self.cfg, self.family, self.processor = cfg, family, processor
        self.rank, self.world_size, self.device, self.encode_once = rank, world_size, device, encode_once
        self.dataset = PromptDataset(cfg.eval_data, skip_corrupt=cfg.skip_corrupt_shards)
        self.ids = question_ids(self.dataset)
        self.rewards = reward_manager(cfg)
        self.collate = Collate(
            family, processor, cfg.system_prompt, cfg.use_audio_in_video, cfg.max_prompt_length, cfg.answer_instructions
        )
        self.batch_size = cfg.rows_per_micro_step  # as many rows per generate call as a training rollout
        self.last_step: int | None = None

    def run(self, policy, gathered, step: int, writer) -> dict:
        """Evaluate at optimizer step `step` (collective); the `eval/...` scalars on rank 0, {} elsewhere."""
        from omni_grpo.evaluate import AblatedCollate

        with rng.preserved(), torch.no_grad():
            rows = self._gather(self._predict(policy, gathered, self.collate))
            ablated = {
                name: self._gather(self._predict(policy, gathered, AblatedCollate(self.collate, name)))
                for name in self.cfg.eval_ablations
            }
        self.last_step = step
        if self.rank != 0:
            return {}
        summary = self._write(rows, step)
        metrics = scalars(summary)
        for name, ablated_rows in ablated.items():
            accuracy = self._write(ablated_rows, step, ablate=name).get("accuracy")
            if accuracy is not None:
                metrics[f"eval/ablate_{name}/accuracy"] = float(accuracy)
        writer.scalars(metrics, step)
        writer.completions(table(rows, self.cfg.log_completions), step, tag="eval/completions")
        logger.info(
            "step %d: eval accuracy %s, format rate %s on %d questions (%s)",
            step,
            _fmt(summary.get("accuracy")),
            _fmt(summary.get("format_rate")),
            summary["num_questions"],
            step_dir(self.cfg.output_dir, step),
        )
        return metrics

    def _predict(self, policy, gathered, collate) -> list[tuple[int, dict]]:
        from omni_grpo.evaluate import _prediction
        from omni_grpo.rewards.accuracy import extract_answer

        cfg = self.cfg
        options = cfg.reward_kwargs.get("accuracy", {})
        answer_tag, fallback = options.get("answer_tag", "answer"), options.get("fallback_to_completion", False)
        out = []
        for batch in rank_share(len(self.ids), self.batch_size, self.rank, self.world_size):
            real = [i for i in batch if i is not None]
            filler = real[0] if real else 0
            indices = [filler if i is None else i for i in batch]
            loaded = collate([self.dataset[i] for i in indices])
            inputs = loaded.inputs.to(self.device, dtype=torch.bfloat16 if cfg.bf16 else None)
            comps = sample(
                self.family,
                policy,
                self.processor,
                inputs,
                loaded.samples,
                1,
                cfg.max_completion_length,
                encode_once=self.encode_once,
                gathered=gathered or nullcontext,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                top_k=cfg.top_k,
                repetition_penalty=cfg.repetition_penalty,
                do_sample=False,
            )
            keep = [row for row, i in enumerate(batch) if i is not None]
            if not keep:
                continue
            texts = [comps.texts[row] for row in keep]
            samples = [comps.samples[row] for row in keep]
            scored = self.rewards(texts, samples)
            lengths = comps.completion_mask.sum(-1).tolist()
            for j, row in enumerate(keep):
                parsed = extract_answer(texts[j], answer_tag, fallback)
                out.append(
                    (
                        batch[row],
                        _prediction(
                            samples[j], 0, texts[j], parsed, scored, j, lengths[row], bool(comps.truncated[row])
                        ),
                    )
                )
        return out

    def _gather(self, rows: list[tuple[int, dict]]) -> list[dict]:
        if self.world_size > 1:
            import torch.distributed as dist

            parts: list = [None] * self.world_size
            dist.all_gather_object(parts, rows)
            rows = [r for part in parts for r in part]
        return [row for _, row in sorted(rows, key=lambda r: r[0])]

    def _write(self, rows: list[dict], step: int, ablate: str | None = None) -> dict:
        cfg = self.cfg
        fields = [f for f in cfg.eval_group_by if any(f in r or f in (r.get("extra") or {}) for r in rows)]
        for missing in sorted(set(cfg.eval_group_by) - set(fields)):
            logger.warning("eval_group_by field %r is in no eval_data sample; no per-category accuracy for it", missing)
        summary = eval_report.summarize(rows, self.rewards.names, self.rewards.weights, 1, fields)
        summary.update(
            model=f"{cfg.output_dir} step {step}",
            data=[str(d) for d in cfg.eval_data],
            num_generations=1,
            decoding="greedy",
            max_new_tokens=cfg.max_completion_length,
            step=step,
            ablate=ablate,
        )
        folder = step_dir(cfg.output_dir, step)
        if ablate is not None:
            folder = folder / f"ablate-{ablate}"
        folder.mkdir(parents=True, exist_ok=True)
        eval_report.write_json(
            folder / eval_report.RUN_FILE,
            {
                "model": str(step_dir(cfg.output_dir, step)),
                "step": step,
                "data": [str(Path(d).resolve()) for d in cfg.eval_data],
                "num_generations": 1,
                "max_new_tokens": cfg.max_completion_length,
                **({"ablate": ablate} if ablate else {}),
            },
        )
        (folder / eval_report.PREDICTIONS_FILE).unlink(missing_ok=True)
        with eval_report.PredictionLog(folder) as log:
            log.append(rows)
        eval_report.write_json(folder / eval_report.SUMMARY_FILE, summary)
        return summary


def scalars(summary: dict) -> dict[str, float]:
    """The `eval/...` TensorBoard scalars of an `eval_report.summarize` summary."""
    out = {}
    for key in ("accuracy", "format_rate"):
        if summary.get(key) is not None:
            out[f"eval/{key}"] = float(summary[key])
    for name, stats in summary["rewards"].items():
        if stats["mean"] is not None:
            out[f"eval/reward/{name}"] = float(stats["mean"])
    for values in summary["groups"].values():
        for value, group in values.items():
            accuracy = group["rewards"].get("accuracy", {}).get("mean")
            if accuracy is not None:
                out[f"eval/{value}/accuracy"] = float(accuracy)
    return out


def table(rows: list[dict], n: int) -> list[dict]:
    """The first `n` predictions as rows of `MetricsWriter.completions`."""
    return [
        {"id": r["id"], "answer": r["answer"], **r["rewards"], "total": r["total"], "completion": r["completion"]}
        for r in rows[:n]
    ]


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
