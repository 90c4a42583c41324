"""GRPO for omni-modal thinkers, one trainer for every model family.

Algorithm (GRPO, Shao et al. 2024, "DeepSeekMath"): for each prompt sample G completions from the current
policy, score them with the configured rewards, normalise the weighted reward within each group of G
(`core_algos.group_advantages`), and maximise the clipped surrogate of the token probability ratio times
the advantage, minus β·KL(π‖π_ref) estimated per token (k3 by default), plus an optional entropy bonus.

One optimizer step, top to bottom (`GRPOTrainer.step`):
  for each of `gradient_accumulation_steps` micro-steps: take `per_device_prompts` prompts → encode the
  media once (frozen towers) → G completions each in one `generate` (weights gathered under ZeRO-3) →
  rewards → advantages → reference log-probs (β > 0) and old log-probs (μ > 1), no gradient;
  then μ times: policy log-probs with gradient per update micro-batch → `policy_loss` → backward; step.

Departures from the paper, each a config choice: loss aggregation (`loss_agg`, default DAPO's token mean
over the whole optimizer step, normalised by the global token count so the gradient does not depend on how
rows are split over micro-batches or ranks); asymmetric clipping (`clip_high`, DAPO); advantage scaling
(`advantage_scale`, Dr.GRPO's "none"); β and temperature schedules. Dropout stays off (LoRA dropout
defaults to 0) so that KL(π‖π_ref) is exactly 0 at step 0 and the ratio is 1 when μ = 1.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from omni_grpo import checkpoint as ckpt
from omni_grpo import core_algos
from omni_grpo.config import TrainConfig, config_to_dict, effective_reward_kwargs, save_config
from omni_grpo.data import Collate, Cursor, PromptDataset, RankSampler, make_loader
from omni_grpo.engine import DeepSpeedEngine, PlainEngine, fp32_masters
from omni_grpo.logging import MetricsWriter, PhaseTimer, reduce_metrics
from omni_grpo.models import detect_family, generate, get_module, log_probs
from omni_grpo.models.base import base_thinker
from omni_grpo.rewards import build_reward_manager
from omni_grpo.rollout import Rollout, gathered_for_generation
from preprocess import media

logger = logging.getLogger("omni_grpo")


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class GRPOTrainer:
    """Setup → `train()` (→ `step()` per optimizer step) → cleanup. Construct with a validated config."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.timer = PhaseTimer()
        self._setup_distributed()
        seed_everything(cfg.seed + self.rank)
        family = detect_family(cfg.model_name_or_path) if cfg.model_family == "auto" else cfg.model_family
        self.module = get_module(family)
        self.processor = self.module.load_processor(cfg.model_name_or_path)
        self.banned_token_ids = self.module.banned_token_ids(self.processor.tokenizer)
        self._setup_data()
        self._setup_models()
        self.rewards = build_reward_manager(cfg.reward_funcs, cfg.reward_weights, effective_reward_kwargs(cfg),
                                            max_consecutive_errors=cfg.max_consecutive_reward_errors)
        self.writer = MetricsWriter(cfg.output_dir, enabled=self.rank == 0)
        self.global_step = 0
        self.cursor = Cursor()
        self.nonfinite_in_a_row = 0
        self.samples_seen = 0
        resume = ckpt.resolve(cfg.output_dir, cfg.resume_from_checkpoint)
        if resume is not None:
            self._load_checkpoint(resume)
        self.loader_iter = None

    # ------------------------------------------------------------------------------------- setup
    def _setup_distributed(self) -> None:
        cfg = self.cfg
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        ds_path = cfg.deepspeed or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        self.ds_config = json.loads(Path(ds_path).read_text()) if ds_path else None
        if self.world_size > 1 and self.ds_config is None:
            raise RuntimeError("several processes need a DeepSpeed config: pass deepspeed=configs/deepspeed/zero3.json")
        self.device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        if torch.cuda.is_available():
            torch.cuda.set_device(self.device)
        if self.ds_config is not None:
            import deepspeed

            # On a machine without GPUs DeepSpeed runs over gloo (design.md: no oneCCL here).
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")

    def _setup_data(self) -> None:
        cfg = self.cfg
        self.dataset = PromptDataset(cfg.data, skip_corrupt=cfg.skip_corrupt_shards)
        if self.dataset.skipped:
            n = sum(k for _, k in self.dataset.skipped)
            logger.warning("skipping %d samples in %d corrupt shard(s): %s", n, len(self.dataset.skipped),
                           ", ".join(str(s) for s, _ in self.dataset.skipped))
        self.collate = Collate(self.module, self.processor, cfg.system_prompt, cfg.use_audio_in_video,
                               cfg.max_prompt_length)
        probe = RankSampler(len(self.dataset), cfg.per_device_prompts, cfg.seed, cfg.dataset_order == "shuffle",
                            self.rank, self.world_size)
        self.batches_per_epoch = probe.batches_per_epoch()
        steps_per_epoch = max(1, self.batches_per_epoch // cfg.gradient_accumulation_steps)
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.num_epochs * steps_per_epoch

    def _make_loader(self):
        cfg = self.cfg
        sampler = RankSampler(len(self.dataset), cfg.per_device_prompts, cfg.seed, cfg.dataset_order == "shuffle",
                              self.rank, self.world_size, start=self.cursor)
        return iter(make_loader(self.dataset, self.collate, sampler, cfg.dataloader_num_workers,
                                cfg.dataloader_prefetch_factor))

    def _load_thinker(self):
        cfg = self.cfg
        dtype = torch.bfloat16 if cfg.bf16 else torch.float32
        model = self.module.load_model(cfg.model_name_or_path, dtype=dtype, attn_implementation=cfg.attn_implementation)
        towers = self.module.tower_modules(model)
        for name, frozen in (("vision", cfg.freeze_vision_tower), ("audio", cfg.freeze_audio_tower)):
            if frozen:
                towers[name].requires_grad_(False)
        return model

    def _setup_models(self) -> None:
        cfg = self.cfg
        stage = (self.ds_config or {}).get("zero_optimization", {}).get("stage", 0)
        self.zero_stage = stage
        self.module.sync_towers = stage == 3 and self.world_size > 1
        self.encode_once = cfg.freeze_vision_tower and cfg.freeze_audio_tower
        if self.ds_config is not None:
            self._fill_ds_config()
            if stage == 3:
                from transformers.integrations import HfDeepSpeedConfig

                self._hf_ds = HfDeepSpeedConfig(self.ds_config)  # keeps zero.Init active while loading
        model = self._load_thinker()
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora.enabled:
            from peft import LoraConfig, get_peft_model

            targets = "|".join(cfg.lora.target_modules)
            lm = self.module.language_model.replace(".", r"\.")
            # LoRA on the language model only. peft rewrites a regex target for some model types (Qwen3's
            # MoE), so the towers are also excluded explicitly.
            towers = "|".join(p.split(".")[-1] for p in (self.module.vision_tower, self.module.audio_tower))
            model = get_peft_model(model, LoraConfig(
                r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                target_modules=rf".*{lm}\..*\.({targets})$", exclude_modules=rf".*\.({towers})\..*"))
        # Decided once from the config: a β schedule that starts at 0 still needs the reference later.
        self.reference = None
        if cfg.uses_reference_model and not cfg.lora.enabled:
            self.reference = self._load_thinker()
            self.reference.requires_grad_(False)
        if self.ds_config is None:
            model.to(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("nothing to train: every parameter is frozen (check lora / freeze_* options)")
        # bf16 without DeepSpeed: the optimizer steps fp32 masters (DeepSpeed's bf16 optimizer keeps its own).
        masters = fp32_masters(params) if cfg.bf16 and self.ds_config is None else None
        # fused: one kernel over all parameters (CPU and CUDA) instead of torch's per-tensor loop on CPU.
        optimizer = torch.optim.AdamW(masters or params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                      eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay,
                                      fused=self.ds_config is None)
        from transformers import get_scheduler

        # The schedule counts optimizer steps: μ of them per trainer step. transformers' "constant" ignores
        # the warmup, so a warmup turns it into "constant_with_warmup".
        optimizer_steps = self.total_steps * cfg.num_iterations
        warmup = int(cfg.warmup_ratio * optimizer_steps)
        name = "constant_with_warmup" if cfg.lr_scheduler == "constant" and warmup > 0 else cfg.lr_scheduler
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=optimizer_steps)
        self.param_counts = _param_counts(model)
        if self.ds_config is None:
            if self.reference is not None:
                self.reference.to(self.device).eval()
            self.engine = PlainEngine(model, optimizer, scheduler, cfg.max_grad_norm, masters=masters)
        else:
            import deepspeed

            engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                              config=self.ds_config)
            self.engine = DeepSpeedEngine(engine, self.backward_per_step, self.world_size)
            if self.reference is not None:
                ref_cfg = {k: v for k, v in self.ds_config.items() if k not in ("optimizer", "scheduler")}
                self.reference, *_ = deepspeed.initialize(model=self.reference, config=ref_cfg)
                self.reference.eval()
        self.policy = self.engine.module

    @property
    def backward_per_step(self) -> int:
        """Backward calls per optimizer step (DeepSpeed's accumulation count); μ does not enter: each of the
        μ passes over the step's rows ends with its own optimizer step."""
        cfg = self.cfg
        return cfg.gradient_accumulation_steps * (cfg.rows_per_micro_step // cfg.update_micro_batch_size)

    def _fill_ds_config(self) -> None:
        """Resolve the DeepSpeed JSON's "auto" values from this config (the optimizer is ours, not DeepSpeed's)."""
        cfg, ds = self.cfg, self.ds_config
        ds.pop("optimizer", None)
        ds.pop("scheduler", None)
        ds["train_micro_batch_size_per_gpu"] = cfg.update_micro_batch_size
        ds["gradient_accumulation_steps"] = self.backward_per_step
        ds["train_batch_size"] = cfg.update_micro_batch_size * self.backward_per_step * self.world_size
        ds["gradient_clipping"] = cfg.max_grad_norm
        ds.setdefault("bf16", {})["enabled"] = cfg.bf16
        ds.setdefault("steps_per_print", 10**9)

    # ---------------------------------------------------------------------------------- the loop
    def train(self) -> dict:
        """Run until `total_steps`; save every `save_steps` and at the end. Returns the last metrics."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        self._banner()
        save_config(cfg, Path(cfg.output_dir) / "config.yaml") if self.rank == 0 else None
        bar = tqdm(total=self.total_steps, initial=self.global_step, desc="train", disable=self.rank != 0,
                   dynamic_ncols=True)
        metrics: dict = {}
        start = time.time()
        with bar:  # closed (its line ended) also when a step raises, so an error message starts a new line
            while self.global_step < self.total_steps:
                metrics = self.step()
                bar.update(1)
                bar.set_postfix(reward=f"{metrics.get('reward/total', math.nan):.3f}",
                                kl=f"{metrics.get('actor/kl', math.nan):.4f}")
                if cfg.save_steps > 0 and self.global_step % cfg.save_steps == 0:
                    self.save()
        if not ckpt.list_checkpoints(cfg.output_dir) or ckpt.list_checkpoints(cfg.output_dir)[-1].name != f"step-{self.global_step:07d}":
            self.save()
        self.writer.close()
        if self.rank == 0:
            logger.info("done: %d steps in %.1f s; last reward %.3f; checkpoints in %s", self.global_step,
                        time.time() - start, metrics.get("reward/total", math.nan), ckpt.checkpoints_dir(cfg.output_dir))
        return metrics

    def step(self) -> dict:
        """One optimizer step: rollouts for every micro-step, then μ updates over them."""
        cfg = self.cfg
        t0 = time.perf_counter()
        beta = core_algos.kl_coef_schedule(self.global_step, self.total_steps, cfg.beta, cfg.beta_final,
                                           cfg.beta_schedule, cfg.beta_schedule_fraction)
        temperature = core_algos.temperature_schedule(self.global_step, self.total_steps, cfg.temperature,
                                                      cfg.temperature_final, cfg.temperature_schedule,
                                                      cfg.temperature_schedule_fraction)
        self.module.tower_calls.vision = self.module.tower_calls.audio = 0
        decodes_before = media.VIDEO_DECODES
        video_decodes = 0
        rollouts, reward_metrics = [], []
        for _ in range(cfg.gradient_accumulation_steps):
            with self.timer("data"):
                batch = self._next_batch()
            video_decodes += batch.video_decodes
            rollout = self._rollout(batch, temperature)
            with self.timer("rewards"):
                reward_metrics.append(self._score(rollout))
            self._reference_and_old(rollout, beta)
            rollouts.append(rollout)
        update = self._update(rollouts, beta)
        self.global_step += 1
        self.samples_seen += sum(r.num_rows for r in rollouts) * self.world_size
        metrics = {**_mean_dicts(reward_metrics), **update, **self._rollout_metrics(rollouts, temperature)}
        metrics.update(self.timer.pop())
        metrics["timing/step"] = time.perf_counter() - t0
        metrics["throughput/samples_per_s"] = sum(r.num_rows for r in rollouts) / metrics["timing/step"]
        metrics["counters/tower_calls"] = float(self.module.tower_calls.total)
        metrics["counters/video_decodes"] = float(video_decodes + media.VIDEO_DECODES - decodes_before)
        metrics["actor/beta"] = beta
        metrics["data/epoch"] = float(self.cursor.epoch)
        metrics = reduce_metrics(metrics, self.world_size)
        metrics["throughput/samples_per_s"] *= self.world_size
        if self.global_step % self.cfg.logging_steps == 0 or self.global_step == 1:
            self.writer.scalars(metrics, self.global_step)
            self.writer.completions(self._table(rollouts[0]), self.global_step)
        return metrics

    def _next_batch(self):
        if self.loader_iter is None:
            self.loader_iter = self._make_loader()
        batch = next(self.loader_iter)
        self.cursor = batch.cursor
        return batch

    # ---------------------------------------------------------------------------------- phases
    def _rollout(self, batch, temperature: float) -> Rollout:
        cfg = self.cfg
        inputs = batch.inputs.to(self.device, dtype=torch.bfloat16 if cfg.bf16 else None)
        if self.encode_once:
            with self.timer("encode"), torch.no_grad():
                inputs.encoded = self.module.encode_media(self.policy, inputs)
        with self.timer("rollout"), torch.no_grad(), gathered_for_generation(getattr(self.engine, "engine", None)):
            comps = generate(self.module, self.policy, self.processor, inputs, cfg.num_generations,
                             cfg.max_completion_length, temperature=temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                             repetition_penalty=cfg.repetition_penalty, do_sample=True)
        texts = self.processor.tokenizer.batch_decode(comps.completion_ids, skip_special_tokens=True)
        samples = [s for s in batch.samples for _ in range(cfg.num_generations)]
        return Rollout(inputs=inputs.repeat(cfg.num_generations), completion_ids=comps.completion_ids,
                       completion_mask=comps.completion_mask, truncated=comps.truncated, texts=texts, samples=samples,
                       temperature=temperature)

    def _score(self, rollout: Rollout) -> dict:
        g = self.cfg.num_generations
        out = self.rewards(rollout.texts, rollout.samples, group_size=g)
        rollout.scores, rollout.rewards = out.scores, out.total.to(self.device)  # total NaN: none (advantage 0)
        rollout.per_sample_rewards = out.per_sample
        rollout.advantages = core_algos.group_advantages(rollout.rewards.float(), g, scale=self.cfg.advantage_scale)
        flat = (rollout.advantages.view(-1, g) == 0).all(dim=1).float().mean().item()
        return {**out.metrics, "reward/zero_std_group_ratio": flat}

    def _reference_and_old(self, rollout: Rollout, beta: float) -> None:
        cfg = self.cfg
        args = (rollout.inputs, rollout.completion_ids, rollout.completion_mask)
        share = self._scoring(rollout)
        if cfg.uses_reference_model:
            with self.timer("ref_log_probs"), torch.no_grad():
                if self.reference is not None:
                    rollout.ref_log_probs, _ = log_probs(self.module, self.reference, *args, **share)
                else:  # LoRA: the base model with the adapter switched off is the reference
                    with base_thinker_adapter_disabled(self.policy):
                        rollout.ref_log_probs, _ = log_probs(self.module, self.policy, *args, **share)
        if cfg.num_iterations > 1:
            with self.timer("old_log_probs"), torch.no_grad():
                rollout.old_log_probs, _ = log_probs(self.module, self.policy, *args, **share)

    def _scoring(self, rollout: Rollout) -> dict:
        """How every log-prob pass scores a rollout's rows: at its sampling temperature, media tokens banned
        (the distribution `generate` drew from), with the configured prompt sharing."""
        return {"share_prompt": self.cfg.share_prompt, "temperature": rollout.temperature,
                "banned_token_ids": self.banned_token_ids}

    def _update(self, rollouts: list[Rollout], beta: float) -> dict:
        """μ optimizer steps over the same rows (DeepSeekMath's μ; TRL's `num_iterations`).

        Each pass runs every row of the step through the policy and ends with one optimizer step; the ratio
        compares with `old_log_probs` from before the first pass, so it is 1 in the first pass and clipping acts
        from the second on. Every pass normalises by the same global token/sequence counts of the step (so a
        pass's gradient does not depend on how rows split over micro-batches and ranks), and the LR schedule
        counts optimizer steps (μ per trainer step). A checkpoint is only written between trainer steps, after
        all μ passes, so resume never lands inside one.
        """
        cfg = self.cfg
        tokens = sum(r.completion_mask.sum() for r in rollouts).float()
        seqs = sum((r.completion_mask.sum(-1) > 0).sum() for r in rollouts).float()
        counts = torch.stack([tokens, seqs]).to(self.device)
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(counts)
        global_tokens, global_seqs = counts[0], counts[1]
        mb = cfg.update_micro_batch_size
        parts: list[dict] = []
        norms, skips = [], 0
        with self.timer("update"), training_mode(self.policy):
            for _ in range(cfg.num_iterations):
                skipped = False
                for rollout in rollouts:
                    for start in range(0, rollout.num_rows, mb):
                        part = rollout.rows(start, start + mb)
                        loss, m = self._micro_loss(part, beta, global_tokens, global_seqs)
                        if not self._all_finite(loss):
                            skipped = True
                            loss = loss.nan_to_num(0.0, 0.0, 0.0) * 0.0
                        self.engine.backward(loss)
                        parts.append(m)
                if skipped and isinstance(self.engine, PlainEngine):
                    self.engine.skip_step()
                    grad_norm, stepped = math.nan, False
                else:
                    grad_norm, stepped = self.engine.step()
                norms.append(grad_norm)
                skips += int(skipped or not stepped)
                self._count_nonfinite(stepped and not skipped)
        metrics = {f"actor/{k}": v for k, v in _mean_dicts(parts).items()}
        finite = [n for n in norms if math.isfinite(n)]
        metrics.update({"actor/grad_norm": sum(finite) / len(finite) if finite else math.nan,
                        "actor/lr": self.engine.lr(), "actor/skipped_updates": float(skips),
                        "actor/optimizer_steps": float(len(norms) - skips)})
        return metrics

    def _count_nonfinite(self, ok: bool) -> None:
        cfg = self.cfg
        self.nonfinite_in_a_row = 0 if ok else self.nonfinite_in_a_row + 1
        if self.nonfinite_in_a_row:
            logger.warning("step %d: non-finite loss or gradient norm, update skipped (%d in a row)",
                           self.global_step + 1, self.nonfinite_in_a_row)
        if self.nonfinite_in_a_row >= cfg.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"{self.nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or gradient norm. "
                "Lower learning_rate, check the rewards for NaN, and resume with resume_from_checkpoint=latest.")

    def _micro_loss(self, part: Rollout, beta: float, global_tokens, global_seqs):
        cfg = self.cfg
        lp, entropy = log_probs(self.module, self.policy, part.inputs, part.completion_ids, part.completion_mask,
                                with_entropy=True, **self._scoring(part))
        old = part.old_log_probs if part.old_log_probs is not None else lp.detach()
        mask = part.completion_mask.to(lp.dtype)
        loss, m = core_algos.policy_loss(
            lp, old, part.advantages, mask, cfg.clip_low, cfg.clip_high, cfg.loss_agg,
            ref_log_probs=part.ref_log_probs if beta > 0 else None, beta=beta, kl_estimator=cfg.kl_estimator,
            entropy=entropy if cfg.entropy_coef > 0 else None, entropy_coef=cfg.entropy_coef,
            global_tokens=global_tokens, global_seqs=global_seqs, max_length=cfg.max_completion_length)
        out = {k: float(v) for k, v in m.items()}
        out["entropy"] = float(core_algos.masked_mean(entropy.detach(), mask))
        if part.ref_log_probs is not None:
            out["kl"] = float(core_algos.masked_mean(core_algos.kl_penalty(lp.detach(), part.ref_log_probs,
                                                                           cfg.kl_estimator), mask))
        out["loss"] = float(loss.detach())
        return loss, out

    def _all_finite(self, loss: torch.Tensor) -> bool:
        flag = torch.tensor([0.0 if torch.isfinite(loss).all() else 1.0], device=self.device)
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(flag)
        return bool(flag.item() == 0)

    # ---------------------------------------------------------------------------------- logging
    def _rollout_metrics(self, rollouts: list[Rollout], temperature: float) -> dict:
        lengths = torch.cat([r.completion_mask.sum(-1).float() for r in rollouts])
        truncated = torch.cat([r.truncated.float() for r in rollouts])
        return {"rollout/completion_length": lengths.mean().item(), "rollout/completion_length_max": lengths.max().item(),
                "rollout/truncated_ratio": truncated.mean().item(), "rollout/temperature": temperature}

    def _table(self, rollout: Rollout) -> list[dict]:
        rows = []
        for i in range(min(self.cfg.log_completions, rollout.num_rows)):
            row = {"id": rollout.samples[i].get("id"), "answer": rollout.samples[i].get("answer")}
            row.update(rollout.per_sample_rewards[i] if rollout.per_sample_rewards else {})
            row["total"] = float(rollout.rewards[i])
            row["advantage"] = float(rollout.advantages[i])
            row["completion"] = rollout.texts[i]
            rows.append(row)
        return rows

    def _banner(self) -> None:
        if self.rank != 0:
            return
        trainable, frozen = self.param_counts
        lines = [
            f"omni-grpo: {self.module.family} from {self.cfg.model_name_or_path}",
            f"  world size {self.world_size}, {'DeepSpeed ZeRO-' + str(self.zero_stage) if self.ds_config else 'single process'}"
            f", device {self.device}",
            f"  parameters: {trainable:,} trainable, {frozen:,} frozen{' (LoRA)' if self.cfg.lora.enabled else ''}",
            f"  {len(self.dataset)} prompts; {self.total_steps} optimizer steps of "
            f"{self.cfg.per_device_prompts * self.cfg.gradient_accumulation_steps * self.world_size} prompts × "
            f"{self.cfg.num_generations} completions",
            f"  use_audio_in_video={self.cfg.use_audio_in_video}, encode media once={self.encode_once}, "
            f"output {self.cfg.output_dir}",
            "  config: " + json.dumps(config_to_dict(self.cfg), default=str),
        ]
        logger.info("\n".join(lines))

    # ---------------------------------------------------------------------------------- checkpoints
    def save(self) -> Path | None:
        """Atomic checkpoint of everything needed to continue exactly (collective under DeepSpeed).

        Any failure to write it (full disk, read-only or vanished output_dir) is a `CheckpointError` that names
        the folder and what to do; the previous checkpoints are never touched before the new one is complete.
        """
        cfg = self.cfg
        tmp = Path(ckpt.checkpoints_dir(cfg.output_dir)) / f".tmp-step-{self.global_step:07d}"
        final = None
        try:
            if self.rank == 0:
                tmp = ckpt.begin(cfg.output_dir, self.global_step)
            self._barrier()
            self.engine.save_state(tmp / "state") if isinstance(self.engine, DeepSpeedEngine) else None
            state_dict = self.engine.full_state_dict()
            ckpt.save_rng(tmp, self.rank)
            if self.rank == 0:
                (tmp / "state").mkdir(exist_ok=True)
                if isinstance(self.engine, PlainEngine):
                    self.engine.save_state(tmp / "state")
                self._save_model(tmp / "model", state_dict)
                save_config(cfg, tmp / "config.yaml")
                ckpt.write_trainer_state(tmp, {
                    "global_step": self.global_step, "cursor": [self.cursor.epoch, self.cursor.position],
                    "nonfinite_in_a_row": self.nonfinite_in_a_row, "samples_seen": self.samples_seen,
                    "world_size": self.world_size})
            self._barrier()
            if self.rank == 0:
                final = ckpt.finish(tmp, self.global_step, cfg.save_total_limit)
        except ckpt.WRITE_ERRORS as err:
            raise ckpt.CheckpointError(
                f"saving the checkpoint of step {self.global_step} to {tmp} failed: {type(err).__name__}: {err} "
                f"({ckpt.free_space(cfg.output_dir)}). The previous checkpoints are intact; free disk space or fix "
                f"permissions on {cfg.output_dir}, then resume with resume_from_checkpoint=latest.") from err
        self._barrier()
        return final

    def _save_model(self, folder: Path, state_dict: dict) -> None:
        model = self.policy
        if self.cfg.lora.enabled:
            from peft import get_peft_model_state_dict

            model.save_pretrained(folder, state_dict=get_peft_model_state_dict(model, state_dict=state_dict))
            if self.cfg.lora.merge_on_save:
                with hf_zero3_disabled():  # rank 0 alone: no zero.Init collectives
                    merged = self._load_thinker()
                merged = _merge_lora(merged, folder)
                merged.save_pretrained(folder / "merged")
                self.processor.save_pretrained(folder / "merged")
        else:
            export_model(base_thinker(model), state_dict, partitioned=self.zero_stage == 3).save_pretrained(folder)
        self.processor.save_pretrained(folder)

    def _load_checkpoint(self, folder: Path) -> None:
        state = ckpt.read_trainer_state(folder)
        if state.get("world_size", 1) != self.world_size:
            raise ckpt.CheckpointError(
                f"{folder} was written by {state['world_size']} rank(s); resume it with the same number of processes")
        if isinstance(self.engine, DeepSpeedEngine):
            self.engine.load_state(folder / "state")
        else:
            self._load_plain_weights(folder / "model")
            self.engine.load_state(folder / "state")
        ckpt.load_rng(folder, self.rank)
        self.global_step = state["global_step"]
        self.cursor = Cursor(*state["cursor"])
        self.nonfinite_in_a_row = state["nonfinite_in_a_row"]
        self.samples_seen = state["samples_seen"]
        if self.rank == 0:
            logger.info("resumed from %s at step %d", folder, self.global_step)

    def _load_plain_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        if self.cfg.lora.enabled:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.policy, load_file(str(folder / "adapter_model.safetensors")))
            return
        # transformers renames keys on save/load (its conversion mapping): load through it, then copy.
        saved = self.module.load_model(folder, dtype=next(self.policy.parameters()).dtype)
        base_thinker(self.policy).load_state_dict(saved.state_dict())

    def _barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


@contextmanager
def training_mode(model):
    """The policy in training mode for the gradient passes only.

    Hugging Face checkpoints a decoder layer only when the layer is `training`, and `from_pretrained` returns
    the model in eval mode: without this, `gradient_checkpointing` does nothing. Generation and the no-grad
    passes stay in eval mode, where the KV cache is kept.
    """
    was = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was)


class base_thinker_adapter_disabled:
    """Context manager: a peft model's adapters off (the LoRA reference policy)."""

    def __init__(self, model):
        self.ctx = model.disable_adapter()

    def __enter__(self):
        return self.ctx.__enter__()

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc)


@contextmanager
def hf_zero3_disabled():
    """HF's global ZeRO-3 switch off for a block that builds a model on one rank only: with it on, the
    submodules are wrapped in `zero.Init`, whose broadcasts wait for the other ranks forever."""
    from transformers.integrations import deepspeed as hf_ds

    keep = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = keep


def export_model(thinker, state_dict: dict, partitioned: bool):
    """A model whose `save_pretrained` writes the standard checkpoint format.

    `save_pretrained(state_dict=...)` re-applies transformers' key conversion to keys that are already in
    module form (measured: `thinker.model.thinker.audio_tower...`), so under ZeRO-3 — where the live
    weights are partitioned — the consolidated weights are assigned to a fresh model built on the meta
    device instead, which costs no extra memory until the assignment.
    """
    if not partitioned:
        return thinker
    with hf_zero3_disabled(), torch.device("meta"):
        fresh = type(thinker)(thinker.config)
    fresh.load_state_dict(state_dict, assign=True, strict=True)
    fresh.generation_config = thinker.generation_config
    return fresh


def _merge_lora(base, adapter_dir: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def _param_counts(model) -> tuple[int, int]:
    trainable = frozen = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", p.numel())
        if p.requires_grad:
            trainable += n
        else:
            frozen += n
    return trainable, frozen


def _mean_dicts(dicts: list[dict]) -> dict:
    keys = {k for d in dicts for k in d}
    out = {}
    for k in keys:
        vals = [float(d[k]) for d in dicts if k in d and d[k] is not None and math.isfinite(float(d[k]))]
        out[k] = sum(vals) / len(vals) if vals else math.nan
    return out
