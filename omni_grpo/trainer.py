"""GRPO for omni-modal thinkers, one trainer for every model family.

Algorithm (GRPO, Shao et al. 2024, "DeepSeekMath"): for each prompt sample G completions from the current
policy, score them with the configured rewards, normalise the weighted reward within each group of G
(`core_algos.group_advantages`), and maximise the clipped surrogate of the token probability ratio times
the advantage, minus β·KL(π‖π_ref) estimated per token (k3 by default), plus an optional entropy term.

One optimizer step, top to bottom (`GRPOTrainer.step`), one method per phase:
  for each of `gradient_accumulation_steps` micro-steps: take `per_device_prompts` prompts → `rollout`
  (`rollout.sample`: media encoded once, G completions each, weights gathered under ZeRO-3) → `score`
  (rewards → advantages) → `reference_and_old` (reference log-probs if β > 0, old log-probs if μ > 1, no
  gradient) — `collect_rollouts`, which with `dynamic_sampling` (DAPO) drops the groups of equal rewards
  and draws more rounds until the step holds as many groups with a spread; then `update`: μ times, policy
  log-probs with gradient per update micro-batch → `policy_loss` → backward; optimizer step.

SIGTERM/SIGINT (`preemption`) stop the loop at a safe point — before a step, or after its rollouts, where the
step is abandoned (data cursor and random state put back, so the resumed run redoes it exactly) — then the last
finished step is saved and `preemption.Preempted` raised.

The trainer only orchestrates: the optimizer back end is `engine.Engine` (plain or DeepSpeed, one interface;
it pads the backward count and guards against non-finite losses), the model family an adapter (`self.family`,
stateless), the passes `models` (the prompt once per group: `models.shared_prompt`), every save/load
`checkpoint`, the RL math `core_algos`, every random state `rng`.

Departures from the paper, each a config choice: loss aggregation (`loss_agg`, default DAPO's token mean
over the whole optimizer step, normalised by the global token count so the gradient does not depend on how
rows are split over micro-batches or ranks); asymmetric clipping (`clip_high`, DAPO); advantage scaling
(`advantage_scale`, Dr.GRPO's "none"); β and temperature schedules; DAPO's dynamic sampling
(`dynamic_sampling`), which here fills each rank's quota of groups separately, drops the groups with a spread
beyond it, and at the extra-round cap trains on constant groups rather than stopping (verl raises there);
advantages are computed per drawn round, before the filter (this matters only for `advantage_scale: batch`);
an entropy term of either sign (`entropy_coef`); a reference that follows the policy (`ref_sync_steps`,
`ref_sync_alpha`: after every N-th step, TR-DPO's update, `engine.sync_reference`).
Dropout stays off (LoRA dropout defaults to 0) so that KL(π‖π_ref) is exactly 0 at step 0 and the ratio is
1 when μ = 1.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from omni_grpo import checkpoint as ckpt
from omni_grpo import core_algos, preemption, rng, run_control
from omni_grpo.config import TrainConfig, save_config
from omni_grpo.data import Collate, Cursor, PromptDataset, RankSampler, make_loader
from omni_grpo.data_check import check_data
from omni_grpo.engine import (
    all_reduce_sum,
    build_engine,
    configure_deepspeed,
    param_counts,
    setup_distributed,
    training_mode,
)
from omni_grpo.logging import MetricsWriter, PhaseTimer, mean_metrics, reduce_metrics, reward_set_metrics
from omni_grpo.models import detect_family, get_module, log_probs
from omni_grpo.models.head_logprobs import METRIC_ENTROPY_STRIDE, sliced_head
from omni_grpo.models.shared_prompt import group_prompt
from omni_grpo.rewards import build_reward_manager, effective_reward_kwargs
from omni_grpo.rollout import Rollout, rollout_metrics, sample
from omni_grpo.run_summary import banner, is_main_reward, plural, reward_trend

logger = logging.getLogger("omni_grpo")


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


class GRPOTrainer:
    """Setup → `train()` (→ `step()` per optimizer step) → cleanup. Construct with a validated config."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.timer = PhaseTimer()
        self.rank, self.world_size, self.device, self.ds_config = setup_distributed(cfg.deepspeed)
        rng.seed_all(cfg.seed + self.rank)
        name = detect_family(cfg.model_name_or_path) if cfg.model_family == "auto" else cfg.model_family
        self.family = get_module(name)  # the model-family adapter (the nn.Module is `self.policy`)
        self.processor = self.family.load_processor(cfg.model_name_or_path)
        self.banned_token_ids = self.family.banned_token_ids(self.processor.tokenizer)
        self._setup_data()
        self._setup_models()
        # One head path for every pass of the run (reference included), decided by the policy: KL exactly 0 at step 0.
        self.sliced_head = sliced_head(self.policy)
        self.rewards = build_reward_manager(
            cfg.reward_funcs,
            cfg.reward_weights,
            effective_reward_kwargs(cfg),
            max_consecutive_errors=cfg.max_consecutive_reward_errors,
        )
        self.global_step, self.cursor, self.nonfinite_in_a_row, self.samples_seen = 0, Cursor(), 0, 0
        resume = run_control.decide_resume(cfg)  # (checked before launch too; see run_control)
        if cfg.overwrite_output_dir and self.rank == 0:
            moved = run_control.move_old_run(cfg.output_dir)
            if moved is not None:
                logger.info("overwrite_output_dir: moved the old run to %s", moved)
        if resume is not None:
            state = ckpt.load_checkpoint(
                resume, cfg, self.engine, self.family, self.rank, self.world_size, reference=self.reference
            )
            self.global_step, self.cursor = state["global_step"], Cursor(*state["cursor"])
            self.nonfinite_in_a_row, self.samples_seen = state["nonfinite_in_a_row"], state["samples_seen"]
        # TensorBoard hides older files' events from the first step this segment logs on: no step shows twice.
        self.writer = MetricsWriter(cfg.output_dir, enabled=self.rank == 0, purge_step=self.global_step + 1)
        self.loader_iter, self.evaluator = None, None
        if cfg.eval_steps > 0:
            from omni_grpo.eval_loop import TrainingEvaluator

            self.evaluator = TrainingEvaluator(
                cfg, self.family, self.processor, self.rank, self.world_size, self.device, self.encode_once
            )

    # ------------------------------------------------------------------------------------- setup
    def _setup_data(self) -> None:
        cfg = self.cfg
        self.dataset = PromptDataset(cfg.data, skip_corrupt=cfg.skip_corrupt_shards)
        if self.dataset.skipped:
            n = sum(k for _, k in self.dataset.skipped)
            logger.warning(
                "skipping %s in %d corrupt shard(s): %s",
                plural(n, "sample"),
                len(self.dataset.skipped),
                ", ".join(str(s) for s, _ in self.dataset.skipped),
            )
        long = check_data(cfg, [p.prompt_tokens for p in self.dataset.parts])  # ConfigError unless skip_long_prompts
        self.dataset.drop(long.over)
        self.skipped_long_prompts = len(long.over)
        self.collate = Collate(
            self.family,
            self.processor,
            cfg.system_prompt,
            cfg.use_audio_in_video,
            cfg.max_prompt_length,
            cfg.answer_instructions,
        )
        self.batches_per_epoch = self._sampler().batches_per_epoch()
        steps_per_epoch = max(1, self.batches_per_epoch // cfg.gradient_accumulation_steps)
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.num_epochs * steps_per_epoch

    def _sampler(self, start: Cursor = Cursor()) -> RankSampler:
        cfg = self.cfg
        return RankSampler(
            len(self.dataset),
            cfg.per_device_prompts,
            cfg.seed,
            cfg.dataset_order == "shuffle",
            self.rank,
            self.world_size,
            start=start,
        )

    def _setup_models(self) -> None:
        cfg = self.cfg
        self.encode_once = cfg.freeze_vision_tower and cfg.freeze_audio_tower
        # Before loading: under ZeRO-3 the weights are partitioned as they load (HF's zero.Init, kept alive here).
        self._zero_init = configure_deepspeed(self.ds_config, cfg, self.world_size)
        model, reference = ckpt.load_policy(self.family, cfg)
        self.param_counts = param_counts(model)
        self.engine = build_engine(model, cfg, self.ds_config, self.total_steps, self.world_size, self.device)
        self.reference = self.engine.prepare_reference(reference) if reference is not None else None
        self.policy = self.engine.module

    # ---------------------------------------------------------------------------------- the loop
    def train(self) -> dict:
        """Run until `total_steps`; save every `save_steps` and at the end. Returns the last metrics; raises
        `preemption.Preempted` after a stop signal (saved at a safe point)."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        if self.rank == 0:
            logger.info(
                banner(
                    cfg,
                    self.family.family,
                    self.world_size,
                    self.engine.stage if self.ds_config else None,
                    self.device,
                    self.param_counts,
                    len(self.dataset),
                    self.total_steps,
                    self.encode_once,
                )
            )
            save_config(cfg, Path(cfg.output_dir) / "config.yaml")
        bar = tqdm(
            total=self.total_steps, initial=self.global_step, desc="train", disable=self.rank != 0, dynamic_ncols=True
        )
        metrics: dict = {}
        history: dict[str, list[float]] = {}  # main reward -> its value at each step of this run (the done line)
        first_step = self.global_step
        start = time.time()
        with bar:  # closed (its line ended) also when a step raises, so an error message starts a new line
            while self.global_step < self.total_steps:
                before = self._step_start()
                try:
                    self._safe_point()
                    metrics = self.step()
                except preemption.StopRequested as stop:
                    self._restore(before)
                    self._stop(stop.signum)
                for key in (k for k in metrics if is_main_reward(k)):
                    history.setdefault(key, []).append(float(metrics[key]))
                bar.update(1)
                bar.set_postfix(
                    reward=f"{metrics.get('reward/total', math.nan):.3f}", kl=f"{metrics.get('actor/kl', math.nan):.4f}"
                )
                if cfg.save_steps > 0 and self.global_step % cfg.save_steps == 0:
                    self.save()
                if self.evaluator is not None and self.global_step % cfg.eval_steps == 0:
                    self.evaluate()
        self._save_unless_saved()
        if self.evaluator is not None and self.evaluator.last_step != self.global_step:
            self.evaluate()
        self.writer.close()
        if self.rank == 0:
            trend = reward_trend(history) or (
                "no reward was scored"
                if history or first_step < self.global_step
                else "nothing left to train: output_dir holds the last step; pass "
                "overwrite_output_dir=true or a new output_dir=DIR to train again"
            )
            logger.info(
                "done: %s in %.1f s; %s; checkpoints in %s",
                plural(self.global_step, "step"),
                time.time() - start,
                trend,
                ckpt.checkpoints_dir(cfg.output_dir),
            )
        return metrics

    def step(self) -> dict:
        """One optimizer step: rollouts for every micro-step, then μ updates over them."""
        cfg = self.cfg
        t0 = time.perf_counter()
        beta = core_algos.kl_coef_schedule(
            self.global_step, self.total_steps, cfg.beta, cfg.beta_final, cfg.beta_schedule, cfg.beta_schedule_fraction
        )
        temperature = core_algos.temperature_schedule(
            self.global_step,
            self.total_steps,
            cfg.temperature,
            cfg.temperature_final,
            cfg.temperature_schedule,
            cfg.temperature_schedule_fraction,
        )
        drawn, rollouts, collected = self.collect_rollouts(temperature)
        self._safe_point()  # nothing of this step is applied yet: a stop here redoes it on resume
        update = self.update(rollouts, beta)
        self.global_step += 1
        if core_algos.reference_sync_due(self.global_step, cfg.ref_sync_steps):
            with self.timer("ref_sync"):
                self.engine.sync_reference(self.reference, cfg.ref_sync_alpha)
        rows = sum(r.num_rows for r in drawn)
        self.samples_seen += rows * self.world_size
        metrics = {**collected, **update, **rollout_metrics(rollouts, temperature)}  # the rows trained
        if cfg.dynamic_sampling:  # and every row drawn
            metrics.update(
                {
                    f"rollout/drawn_{k.split('/', 1)[1]}": v
                    for k, v in rollout_metrics(drawn, temperature).items()
                    if k != "rollout/temperature"
                }
            )
        metrics.update(self.timer.pop())
        metrics["timing/step"] = time.perf_counter() - t0
        metrics["throughput/samples_per_s"] = rows / metrics["timing/step"]
        # Counted by the batch's inputs in every pass over its rows (update included).
        metrics["counters/tower_calls"] = float(sum(r.inputs.tower_calls.total for r in drawn))
        metrics["actor/beta"] = beta
        metrics["data/epoch"] = float(self.cursor.epoch)
        metrics = reduce_metrics(metrics, self.world_size)
        metrics["throughput/samples_per_s"] *= self.world_size
        if self.global_step % cfg.logging_steps == 0 or self.global_step == 1:
            self.writer.scalars(metrics, self.global_step)
            self.writer.completions(rollouts[0].table(cfg.log_completions), self.global_step)
        return metrics

    def collect_rollouts(self, temperature: float) -> tuple[list[Rollout], list[Rollout], dict]:
        """(every rollout drawn, the step's rollouts for the update, reward / data / dynamic-sampling metrics).

        One rollout round per micro-step: `per_device_prompts` prompts → `rollout` → `score` →
        `reference_and_old`. Without `dynamic_sampling` the step trains on the `gradient_accumulation_steps`
        rounds as drawn. With it (DAPO §3.2), groups whose rewards are all equal (advantage 0) are left out
        (and get no reference or old pass: those run on the kept groups, after the filter) and more rounds are
        drawn, up to `dynamic_sampling_max_extra_rounds`, until every rank holds
        per_device_prompts × gradient_accumulation_steps groups with a spread (`pick_groups`). The ranks
        decide together after each round (a rank that has enough still draws while another is short), so every
        rank runs the same generation rounds and no-gradient passes; each trains on exactly that many groups,
        so the update's forward/backward count is that of a normal step (an update micro-batch never spans
        groups: `TrainConfig` checks that it divides G). The update's loss normalisers count the rows trained.
        """
        cfg = self.cfg
        drawn, spread, reward_metrics, video_decodes = [], [], [], 0
        target = cfg.per_device_prompts * cfg.gradient_accumulation_steps
        cap = cfg.gradient_accumulation_steps + (cfg.dynamic_sampling_max_extra_rounds if cfg.dynamic_sampling else 0)
        while True:
            with self.timer("data"):
                batch = self._next_batch()
            video_decodes += batch.video_decodes
            rollout = self.rollout(batch, temperature)
            with self.timer("rewards"):
                reward_metrics.append(self.score(rollout))
            if not cfg.dynamic_sampling:  # with it, only the groups kept are scored (below)
                self.reference_and_old(rollout)
            drawn.append(rollout)
            spread.append(core_algos.group_spread(rollout.advantages, cfg.num_generations))
            if len(drawn) < cfg.gradient_accumulation_steps:
                continue
            if len(drawn) >= cap:
                break
            short = float(sum(int(s.sum()) for s in spread) < target)
            if all_reduce_sum(torch.tensor([short], device=self.device), self.world_size).item() == 0:
                break
        metrics = {**mean_metrics(reward_metrics), "counters/video_decodes": float(video_decodes)}
        if not cfg.dynamic_sampling:
            return drawn, drawn, metrics
        picks, counts = core_algos.pick_groups(spread, target)
        rollouts = [rollout.groups(groups, cfg.num_generations) for rollout, groups in zip(drawn, picks) if groups]
        self._reference_and_old_of_kept(rollouts)
        # reward/* over the groups trained (as verl logs them); every drawn group's under rollout/drawn_reward_*
        every = reward_set_metrics(drawn, self.rewards.names, cfg.num_generations)
        metrics.update({f"rollout/drawn_reward_{k.split('/', 1)[1].replace('/', '_')}": v for k, v in every.items()})
        metrics.update(reward_set_metrics(rollouts, self.rewards.names, cfg.num_generations))
        metrics.update({f"rollout/dynamic_sampling_{k}": float(v) for k, v in counts.items()})
        metrics["rollout/dynamic_sampling_rounds"] = float(len(drawn))
        return drawn, rollouts, metrics

    def _reference_and_old_of_kept(self, rollouts: list[Rollout]) -> None:
        """`reference_and_old` for dynamic sampling's kept rollouts only (the dropped groups never reach the
        update, so their reference pass would be wasted). Ranks may keep groups from different numbers of rounds:
        under ZeRO-3 every rank must run the same forwards, so a rank with fewer runs one-row passes whose
        results are discarded, up to the most any rank runs."""
        for rollout in rollouts:
            self.reference_and_old(rollout)
        counts = torch.zeros(self.world_size, device=self.device)
        counts[self.rank] = len(rollouts)
        most = int(all_reduce_sum(counts, self.world_size).max().item())
        for _ in range(most - len(rollouts)):
            self.reference_and_old(rollouts[0].select([0]))

    # ---------------------------------------------------------------------------------- stopping on a signal
    def _safe_point(self) -> None:
        """Where a run may stop after SIGTERM/SIGINT (`preemption`): before a step, and after a step's rollouts
        before its update. Collective: every rank stops at the same point or none does."""
        signum = preemption.agreed_signal(self.world_size, self.device)
        if signum:
            raise preemption.StopRequested(signum)

    def _step_start(self) -> tuple:
        """What a step changes before its update: the data cursor and every random state (`_restore`)."""
        return self.cursor, rng.capture()

    def _restore(self, start: tuple) -> None:
        """Back to `_step_start`'s state, so that a checkpoint written now redoes the abandoned step exactly."""
        self.cursor, state = start
        rng.restore(state)
        self.loader_iter = None  # the next batch is read from the cursor again

    def _stop(self, signum: int) -> None:
        """Save the last finished step (unless it is saved), close the writer, raise `preemption.Preempted`."""
        saved = None
        if self.global_step > 0:
            self._save_unless_saved()
            saved = ckpt.checkpoints_dir(self.cfg.output_dir) / ckpt.step_name(self.global_step)
        self.writer.close()
        raise preemption.Preempted(signum, self.global_step, saved)

    def _save_unless_saved(self) -> None:
        """Save the current step unless output_dir holds its checkpoint already (agreed by every rank: all save
        if any rank misses it, so ranks that do not share a disk still save together)."""
        saved = ckpt.list_checkpoints(self.cfg.output_dir)
        missing = float(not saved or saved[-1].name != ckpt.step_name(self.global_step))
        if all_reduce_sum(torch.tensor([missing], device=self.device), self.world_size).item() > 0:  # ranks missing
            self.save()

    def _next_batch(self):
        if self.loader_iter is None:
            cfg = self.cfg
            self.loader_iter = iter(
                make_loader(
                    self.dataset,
                    self.collate,
                    self._sampler(self.cursor),
                    cfg.dataloader_num_workers,
                    cfg.dataloader_prefetch_factor,
                )
            )
        batch = next(self.loader_iter)
        self.cursor = batch.cursor
        return batch

    # ---------------------------------------------------------------------------------- phases
    def rollout(self, batch, temperature: float) -> Rollout:
        """G completions per prompt of `batch` (the generation fields of a `Rollout`)."""
        cfg = self.cfg
        inputs = batch.inputs.to(self.device, dtype=torch.bfloat16 if cfg.bf16 else None)
        return sample(
            self.family,
            self.policy,
            self.processor,
            inputs,
            batch.samples,
            cfg.num_generations,
            cfg.max_completion_length,
            encode_once=self.encode_once,
            gathered=self.engine.gathered_for_generation,
            timer=self.timer,
            temperature=temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            repetition_penalty=cfg.repetition_penalty,
        )

    def score(self, rollout: Rollout) -> dict:
        """Rewards, weighted totals and group advantages into `rollout`; returns the reward metrics."""
        g = self.cfg.num_generations
        out = self.rewards(rollout.texts, rollout.samples, group_size=g)
        rollout.scores, rollout.rewards = out.scores, out.total.to(self.device)  # total NaN: none (advantage 0)
        rollout.per_sample_rewards = out.per_sample
        rollout.advantages = core_algos.group_advantages(rollout.rewards.float(), g, scale=self.cfg.advantage_scale)
        flat = (rollout.advantages.view(-1, g) == 0).all(dim=1).float().mean().item()
        return {**out.metrics, "reward/zero_std_group_ratio": flat}

    def reference_and_old(self, rollout: Rollout) -> None:
        """The no-gradient log-probs into `rollout`: reference (the β schedule needs it), old (μ > 1)."""
        cfg = self.cfg
        if cfg.uses_reference_model:
            with self.timer("ref_log_probs"), torch.no_grad():
                if self.reference is not None:
                    rollout.ref_log_probs, _ = self._log_probs(self.reference, rollout)
                else:  # LoRA: the base model with the adapter switched off is the reference
                    with self.policy.disable_adapter():
                        rollout.ref_log_probs, _ = self._log_probs(self.policy, rollout)
        if cfg.num_iterations > 1:
            with self.timer("old_log_probs"), torch.no_grad():
                rollout.old_log_probs, _ = self._log_probs(self.policy, rollout)

    def _log_probs(
        self,
        model,
        rows: Rollout,
        with_entropy: bool = False,
        entropy_stride: int = 1,
        prompt=None,
        completion_embeds=None,
    ):
        """Every log-prob pass scores at the rollout's temperature with the media tokens banned (the distribution
        `generate` drew from), with the configured prompt sharing (`prompt`, `completion_embeds`: a prompt pass
        already run for these rows and their completions' embeddings, `models.shared_prompt.GroupPrompt`)."""
        return log_probs(
            self.family,
            model,
            rows.inputs,
            rows.completion_ids,
            rows.completion_mask,
            with_entropy=with_entropy,
            share_prompt=self.cfg.share_prompt,
            temperature=rows.temperature,
            banned_token_ids=self.banned_token_ids,
            entropy_stride=entropy_stride,
            prompt=prompt,
            sliced=self.sliced_head,
            completion_embeds=completion_embeds,
        )

    def update(self, rollouts: list[Rollout], beta: float) -> dict:
        """μ optimizer steps over the same rows (DeepSeekMath's μ; TRL's `num_iterations`).

        Each pass runs every row of the step through the policy and ends with one optimizer step; the ratio
        compares with `old_log_probs` from before the first pass, so it is 1 in the first pass and clipping acts
        from the second on. Every pass normalises by the same global token/sequence counts of the step
        (`core_algos.loss_normalisers`, summed over ranks), so a pass's gradient does not depend on how rows
        split over micro-batches and ranks; the LR schedule counts optimizer steps (μ per trainer step). A
        checkpoint is only written between trainer steps, after all μ passes, so resume never lands inside one.

        Per rollout: the engine's micro-batches (`Engine.micro_batches`: rows that add nothing are left out,
        the backward count kept), the prompt run once for them when a group spans several
        (`models.shared_prompt.group_prompt`), then per micro-batch forward → `policy_loss` → backward (the
        engine zeroes a loss that is non-finite on any rank, and the optimizer step is then skipped).
        """
        counts = sum(torch.stack(core_algos.loss_normalisers(r.completion_mask)) for r in rollouts)
        global_tokens, global_seqs = all_reduce_sum(counts.to(self.device), self.world_size)
        parts, norms, skips = [], [], 0
        with self.timer("update"), training_mode(self.policy):
            for _ in range(self.cfg.num_iterations):
                finite = True
                for rollout in rollouts:
                    batches = self.engine.micro_batches(
                        self._zero_rows(rollout, beta), self.cfg.update_micro_batch_size
                    )
                    prompt = group_prompt(
                        self.family,
                        self.policy,
                        rollout.inputs,
                        rollout.completion_ids,
                        [b.rows for b in batches],
                        self.cfg.share_prompt,
                    )
                    for i, batch in enumerate(batches):
                        first, last = i == 0, i == len(batches) - 1
                        loss, m = self._micro_loss(
                            rollout.select(batch.rows),
                            beta,
                            global_tokens,
                            global_seqs,
                            *prompt.inputs(batch.rows, last),
                        )
                        loss = prompt.with_prompt_terms(loss * 0.0 if batch.dummy else loss, first, last)
                        finite = self.engine.backward(loss) and finite
                        parts += [] if batch.dummy else [m]
                grad_norm, stepped = self.engine.step() if finite else self.engine.skip()
                norms.append(grad_norm)
                skips += int(not (finite and stepped))
                self._count_nonfinite(finite and stepped)
        return self._update_metrics(parts, norms, skips, rollouts, beta)

    def _update_metrics(self, parts: list[dict], norms: list[float], skips: int, rollouts, beta: float) -> dict:
        finite = [n for n in norms if math.isfinite(n)]
        return {
            **{f"actor/{k}": v for k, v in mean_metrics(parts).items()},
            "actor/grad_norm": sum(finite) / len(finite) if finite else math.nan,
            "actor/lr": self.engine.lr(),
            "actor/skipped_updates": float(skips),
            "actor/optimizer_steps": float(len(norms) - skips),
            "actor/skipped_rows": float(sum(self._zero_rows(r, beta).sum() for r in rollouts)),
        }

    def _zero_rows(self, rollout: Rollout, beta: float) -> torch.Tensor:
        """[N] bool: rows that contribute exactly nothing to this step's loss and gradient (advantage 0, β = 0,
        no entropy term); all False when `skip_zero_advantage_rows` is off."""
        cfg = self.cfg
        if not cfg.skip_zero_advantage_rows or beta > 0 or cfg.entropy_coef != 0:
            return torch.zeros(rollout.num_rows, dtype=torch.bool)
        return (rollout.advantages == 0).cpu()

    def _micro_loss(self, part: Rollout, beta: float, global_tokens, global_seqs, prompt=None, completion_embeds=None):
        cfg = self.cfg
        # the entropy term needs every position's entropy with gradient; otherwise actor/entropy is a metric
        # read on every METRIC_ENTROPY_STRIDE-th completion position (a softmax over V costs ~1/6 of the pass)
        stride = 1 if cfg.entropy_coef != 0 else METRIC_ENTROPY_STRIDE
        lp, entropy = self._log_probs(
            self.policy,
            part,
            with_entropy=True,
            entropy_stride=stride,
            prompt=prompt,
            completion_embeds=completion_embeds,
        )
        old = part.old_log_probs if part.old_log_probs is not None else lp.detach()
        mask = part.completion_mask.to(lp.dtype)
        loss, m = core_algos.policy_loss(
            lp,
            old,
            part.advantages,
            mask,
            cfg.clip_low,
            cfg.clip_high,
            cfg.loss_agg,
            ref_log_probs=part.ref_log_probs if beta > 0 else None,
            beta=beta,
            kl_estimator=cfg.kl_estimator,
            entropy=entropy if cfg.entropy_coef != 0 else None,
            entropy_coef=cfg.entropy_coef,
            global_tokens=global_tokens,
            global_seqs=global_seqs,
            max_length=cfg.max_completion_length,
        )
        out = {k: float(v) for k, v in m.items()}
        out["entropy"] = float(core_algos.masked_mean(entropy.detach(), mask[:, ::stride]))
        if part.ref_log_probs is not None:
            kl = core_algos.kl_penalty(lp.detach(), part.ref_log_probs, cfg.kl_estimator)
            out["kl"] = float(core_algos.masked_mean(kl, mask))
        out["loss"] = float(loss.detach())
        return loss, out

    def _count_nonfinite(self, ok: bool) -> None:
        self.nonfinite_in_a_row = 0 if ok else self.nonfinite_in_a_row + 1
        if self.nonfinite_in_a_row:
            logger.warning(
                "step %d: non-finite loss or gradient norm, update skipped (%d in a row)",
                self.global_step + 1,
                self.nonfinite_in_a_row,
            )
        if self.nonfinite_in_a_row >= self.cfg.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"{self.nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or gradient norm. "
                "Lower learning_rate, check the rewards for NaN, and resume with resume_from_checkpoint=latest."
            )

    # ---------------------------------------------------------------------------------- evaluating, saving
    def evaluate(self) -> dict:
        """Greedy evaluation on `eval_data` (`eval_loop`; collective; the random state is left as it was)."""
        return self.evaluator.run(self.policy, self.engine.gathered_for_generation, self.global_step, self.writer)

    def save(self) -> Path | None:
        """Atomic checkpoint of everything needed to continue exactly (`checkpoint.save_checkpoint`)."""
        return ckpt.save_checkpoint(
            self.cfg,
            self.engine,
            self.family,
            self.processor,
            self.global_step,
            self.rank,
            self.world_size,
            {
                "global_step": self.global_step,
                "cursor": [self.cursor.epoch, self.cursor.position],
                "nonfinite_in_a_row": self.nonfinite_in_a_row,
                "samples_seen": self.samples_seen,
            },
            reference=self.reference,
        )
