"""Benchmark one GRPO optimizer step, phase by phase, against ms-swift, TRL and the loop we replace.

Four systems train the same randomly initialised Qwen2.5-Omni thinker (the tiny kit of
``omni_grpo.tiny_models``) on the same synthetic video+audio question (one prompt per step, G completions),
with the same sampling settings, rewards (format + accuracy), β, learning rate and update micro-batch:

* **ours** — ``omni_grpo.trainer.GRPOTrainer`` in one process: decoded shards, the vision and audio towers
  run once per prompt (encode once), the G completions in one batch with the prompt prefilled once,
  log-probs with each prompt run once per micro-batch (``share_prompt``) and a chunked vocabulary projection.
  Phases come from its ``timing/*`` metrics; the optimizer phase is timed by wrapping its engine's ``step``
  (so "policy" is forward + backward only).
* **swift** — ms-swift's GRPO (``swift rlhf --rlhf_type grpo``) in its own environment and process
  (``bench/swift_system.py``: the thinker wrapped as a full Qwen2.5-Omni checkpoint, rows that pin the shard's
  frames, the mp4 decoded by ms-swift at every step, phases from a training callback).
* **trl** — TRL's ``GRPOTrainer`` on the same thinker as a causal LM on the *text* prompt only (the chat
  turn without the video). It passes no media to generation or to any log-prob pass, so it does less work
  than the other two and trains the wrong objective: it is the speed of a text-only GRPO step on this model,
  not a usable omni trainer. Phases by wrapping its methods (``_generate``, ``_calculate_rewards``,
  ``_get_per_token_logps_and_entropies``, ``accelerator.backward``) and the optimizer callbacks; it runs in
  a thread that pauses at the end of every optimizer step, so its steps alternate with the others'.
* **anchor** — the loop of the public omni GRPO projects, written here with the same loss math
  (``omni_grpo.core_algos``): every step decodes the mp4 with ``qwen_omni_utils.process_mm_info(...,
  use_audio_in_video=True)``, calls the processor, runs one ``generate`` per completion, and scores the
  reference and the policy with plain Hugging Face forwards that carry all media (the towers run again in
  every pass, over G copies of the video and audio). Flattering departures, so that it fits in memory:
  log-softmax over the completion positions only (the projects take it over the whole sequence), and it
  skips the entropy the others compute for their metrics.

TRL's fused LM head scores only the completion positions where Triton runs (GPUs) and every position of
prompt + completion elsewhere; the bench measures its GPU behaviour (same torch code, compact selection)
unless ``--trl-cpu-path``.

Rounds alternate ours → swift → trl → anchor so all of them see the same background load; each
reports the median over ``--steps`` rounds after ``--warmup`` rounds. Tower calls count how many videos
and audios went through a tower per step (forward hooks on the towers, all systems; for ours this equals the
trainer's ``counters/tower_calls``). steps/s is 1 / median step wall time; samples/s counts completions.

    python bench/step_bench.py                    # the full matrix: 2 models x G 4, 8 x clips 3 s, 30 s
    python bench/step_bench.py --quick            # one small configuration, about half a minute
    python bench/step_bench.py --models 256x4:qwen --generations 8 --seconds 30 --systems ours anchor
    python bench/step_bench.py --models 256x4:qwen --generations 8 --seconds 3 30 --systems ours swift --threads 1

``--threads 1`` on a shared machine: with torch's default threads (one per core) OpenMP's spinning wait makes a
step many times slower whenever another process holds a core (``bench/contention.py``).

Where no ``ffmpeg`` program is installed, the anchor's audio is read through a PyAV stand-in for audioread's
ffmpeg reader (``omni_grpo.synthetic.audioread_without_ffmpeg``), as in ``bench/preprocess_bench.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SYSTEMS = ("ours", "swift", "trl", "anchor")
PHASES = ("data", "encode", "rollout", "rewards", "ref", "old", "policy", "optimizer")
REWARDS = ["format", "accuracy"]


@dataclass
class Settings:
    """What every system shares for one configuration."""

    model_dir: Path
    shards: Path
    manifest: Path
    generations: int
    completion_length: int
    micro_batch: int
    beta: float = 0.04
    learning_rate: float = 1e-6
    temperature: float = 1.0
    max_pixels: int | None = 12544  # None: qwen-omni-utils' default
    min_pixels: int | None = 3136
    fps: float = 2.0
    seed: int = 0
    out: Path = Path(".")
    min_new_tokens: int = 0  # > 0: stop tokens are banned before this many tokens (every system)
    frames: dict = field(default_factory=dict)  # sample id -> (frames, height, width) of its shard (`frame_plan`)


@dataclass
class StepResult:
    wall: float
    rows: int
    phases: dict = field(default_factory=dict)
    tower_calls: int = 0
    completion_tokens: float = 0.0
    prompt_tokens: int = 0


class Timer:
    """Accumulates seconds per phase."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.totals[phase] = self.totals.get(phase, 0.0) + seconds

    def pop(self) -> dict[str, float]:
        out, self.totals = self.totals, {}
        return out

    def wrap(self, phase, fn):
        """`fn` timed into `phase` (a name, or a function of the call's arguments returning one)."""

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(phase(*args, **kwargs) if callable(phase) else phase, time.perf_counter() - start)

        return timed


class TowerCounter:
    """Counts videos and audios that go through a tower (forward hooks on the vision and audio encoders)."""

    def __init__(self):
        self.calls = 0
        self.handles = []

    def attach(self, model) -> None:
        from omni_grpo.models.base import base_thinker

        inner = base_thinker(model).model

        def vision(_module, args, kwargs, _out):
            grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
            self.calls += int(grid.shape[0]) if grid is not None else 1

        def audio(_module, args, kwargs, _out):
            lens = kwargs.get("feature_lens")
            self.calls += int(lens.shape[0]) if lens is not None else 1

        self.handles.append(inner.visual.register_forward_hook(vision, with_kwargs=True))
        self.handles.append(inner.audio_tower.register_forward_hook(audio, with_kwargs=True))

    def pop(self) -> int:
        n, self.calls = self.calls, 0
        return n


# ------------------------------------------------------------------------------------------------ ours
class Ours:
    name = "ours"

    def __init__(self, s: Settings):
        from omni_grpo.config import load_config
        from omni_grpo.trainer import GRPOTrainer

        overrides = dict(
            model_name_or_path=s.model_dir,
            data=f"[{s.shards}]",
            num_generations=s.generations,
            per_device_prompts=1,
            micro_batch_size=s.micro_batch,
            max_completion_length=s.completion_length,
            max_prompt_length=32768,
            max_steps=10**6,
            learning_rate=s.learning_rate,
            beta=s.beta,
            temperature=s.temperature,
            dataloader_num_workers=0,
            dataset_order="sequential",
            save_steps=0,
            output_dir=s.out / "ours",
            seed=s.seed,
            logging_steps=10**9,
            log_completions=0,
            reward_funcs=f"[{', '.join(REWARDS)}]",
        )
        self.trainer = GRPOTrainer(load_config(None, [f"{k}={v}" for k, v in overrides.items()]))
        if s.min_new_tokens:
            _force_min_new_tokens(s.min_new_tokens)
        self.timer = Timer()
        engine = self.trainer.engine
        engine.step = self.timer.wrap("optimizer", engine.step)
        self.towers = TowerCounter()
        for m in (self.trainer.policy, self.trainer.reference):
            if m is not None:
                self.towers.attach(m)
        self._prompt_len = None

    def step(self) -> StepResult:
        start = time.perf_counter()
        m = self.trainer.step()
        wall = time.perf_counter() - start
        opt = self.timer.pop().get("optimizer", 0.0)
        phases = {
            "data": m.get("timing/data", 0.0),
            "encode": m.get("timing/encode", 0.0),
            "rollout": m.get("timing/rollout", 0.0),
            "rewards": m.get("timing/rewards", 0.0),
            "ref": m.get("timing/ref_log_probs", 0.0),
            "old": m.get("timing/old_log_probs", 0.0),
            "policy": m.get("timing/update", 0.0) - opt,
            "optimizer": opt,
        }
        hooked = self.towers.pop()
        counted = int(m["counters/tower_calls"])
        if hooked != counted:
            raise RuntimeError(f"ours: towers ran {hooked} times by the hooks but counters/tower_calls says {counted}")
        rows = self.trainer.cfg.rows_per_micro_step
        return StepResult(
            wall=wall,
            rows=rows,
            phases=phases,
            tower_calls=counted,
            completion_tokens=m["rollout/completion_length"],
            prompt_tokens=self._prompt_tokens(),
        )

    def _prompt_tokens(self) -> int:
        if self._prompt_len is None:
            first = self.trainer.dataset[0]
            self._prompt_len = int(self.trainer.collate([first]).inputs.attention_mask.sum())
        return self._prompt_len

    def close(self) -> None:
        self.trainer.writer.close()


def _force_min_new_tokens(n: int) -> None:
    """Every token loop of this process bans stop tokens before `n` new tokens (the config has no such option:
    it is a benchmark setting, so that completions reach the length being measured): `generate` looks up
    `sampling_processors` at each call, and gets it with Hugging Face's `min_new_tokens`."""
    import functools

    from omni_grpo.models import sampling

    base = getattr(sampling.sampling_processors, "func", sampling.sampling_processors)
    sampling.sampling_processors = functools.partial(base, min_new_tokens=n)


# ------------------------------------------------------------------------------------------------- TRL
class TRL:
    """TRL's GRPOTrainer driven one optimizer step at a time from a worker thread."""

    name = "trl"

    def __init__(self, s: Settings, total_steps: int, gpu_path: bool = True):
        import datasets
        import torch
        import trl.trainer.utils as trl_utils
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        # TRL's fused LM head scores only the completion positions where Triton runs (GPUs) and every position
        # of prompt + completion elsewhere (to keep tile shapes fixed for compilers). Measure it as it runs on a
        # GPU: same torch tiles, compact selection. `gpu_path=False` keeps its CPU behaviour.
        self._restore = (trl_utils, trl_utils._use_triton)
        if gpu_path:
            trl_utils._use_triton = lambda device: True

        from omni_grpo.models import get_module
        from omni_grpo.rewards import REWARDS as BUILTIN

        module = get_module("qwen2_5_omni")
        processor = module.load_processor(s.model_dir)
        tokenizer = processor.tokenizer
        model = module.load_model(s.model_dir)
        for tower in module.tower_modules(model).values():
            tower.requires_grad_(False)  # as in ours and the anchor: the towers are frozen
        rows = [json.loads(line) for line in s.manifest.read_text().splitlines() if line.strip()]
        prompts = []
        for row in rows:
            messages = module.build_messages(row, _system_prompt(), True)
            messages[1]["content"] = [c for c in messages[1]["content"] if c["type"] == "text"]  # no media
            prompts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        data = datasets.Dataset.from_dict(
            {
                "prompt": prompts,
                "answer": [r["answer"] for r in rows],
                "options": [r["options"] for r in rows],
                "problem_type": ["multiple_choice"] * len(rows),
                "id": [r["id"] for r in rows],
            }
        )
        self.prompt_tokens = len(tokenizer(prompts[0])["input_ids"])
        g, mb = s.generations, s.micro_batch
        args = GRPOConfig(
            output_dir=str(s.out / "trl"),
            per_device_train_batch_size=mb,
            gradient_accumulation_steps=g // mb,
            steps_per_generation=g // mb,
            num_generations=g,
            max_completion_length=s.completion_length,
            temperature=s.temperature,
            top_p=1.0,
            top_k=0,
            beta=s.beta,
            epsilon=0.2,
            loss_type="dapo",
            scale_rewards="group",
            learning_rate=s.learning_rate,
            lr_scheduler_type="constant",
            max_grad_norm=1.0,
            weight_decay=0.0,
            use_cpu=True,
            bf16=False,
            report_to="none",
            logging_steps=10**9,
            save_strategy="no",
            max_steps=total_steps,
            disable_dropout=True,
            gradient_checkpointing=False,
            log_completions=False,
            dataloader_num_workers=0,
            shuffle_dataset=False,
            seed=s.seed,
            num_iterations=1,
            model_init_kwargs={"dtype": torch.float32},
            generation_kwargs={
                "suppress_tokens": module.banned_token_ids(tokenizer),
                **({"min_new_tokens": s.min_new_tokens} if s.min_new_tokens else {}),
            },
        )
        self.timer = Timer()
        self.go, self.done = threading.Semaphore(0), threading.Semaphore(0)
        self.error: BaseException | None = None
        bench = self

        class Pause(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                bench._opt_start = time.perf_counter()

            def on_optimizer_step(self, args, state, control, **kwargs):
                bench.timer.add("optimizer", time.perf_counter() - bench._opt_start)

            def on_step_end(self, args, state, control, **kwargs):
                bench.done.release()
                bench.go.acquire()

        funcs = [_named(BUILTIN[name], name) for name in REWARDS]
        self.trainer = GRPOTrainer(
            model=model,
            reward_funcs=funcs,
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=[Pause()],
        )
        t = self.trainer
        t._generate = self.timer.wrap("rollout", t._generate)
        t._calculate_rewards = self.timer.wrap("rewards", t._calculate_rewards)
        t.get_batch_samples = self.timer.wrap("data", t.get_batch_samples)

        def logps_phase(model, *a, **k):
            if torch.is_grad_enabled():
                return "policy"
            return "ref" if model is t.ref_model else "old"

        t._get_per_token_logps_and_entropies = self.timer.wrap(logps_phase, t._get_per_token_logps_and_entropies)
        t.accelerator.backward = self.timer.wrap("policy", t.accelerator.backward)
        self.towers = TowerCounter()
        for m in (t.model, t.ref_model):
            if m is not None:
                self.towers.attach(m)
        self.started = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.trainer.train()
        except BaseException as exc:  # surfaced in step()
            self.error = exc
        finally:
            self.done.release()

    def step(self) -> StepResult:
        start = time.perf_counter()
        if not self.started:
            self.started = True
            self.thread.start()  # the first step also pays TRL's setup inside train(); it is a warm-up round
        else:
            self.go.release()
        self.done.acquire()
        wall = time.perf_counter() - start
        if self.error is not None:
            raise RuntimeError(f"TRL failed: {type(self.error).__name__}: {self.error}") from self.error
        phases = self.timer.pop()
        lengths = self.trainer._metrics["train"].get("completions/mean_length") or [math.nan]
        return StepResult(
            wall=wall,
            rows=self.trainer.num_generations,
            phases=phases,
            tower_calls=self.towers.pop(),
            completion_tokens=lengths[-1],
            prompt_tokens=self.prompt_tokens,
        )

    def close(self) -> None:
        if self.started and self.thread.is_alive():
            self.trainer.control.should_training_stop = True
            self.go.release()
            self.thread.join(timeout=600)
        module, original = self._restore
        module._use_triton = original


def _named(fn, name):
    def reward(completions, **kwargs):
        return fn(completions, **kwargs)

    reward.__name__ = name
    return reward


def _system_prompt() -> str:
    from omni_grpo.config import TrainConfig

    return TrainConfig.__dataclass_fields__["system_prompt"].default


# ---------------------------------------------------------------------------------------------- ms-swift
def load_swift_system():
    """bench/swift_system.py as a module (bench/ is a folder of scripts, not a package)."""
    import importlib.util
    import sys

    name = "bench_swift_system"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "swift_system.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class Swift:
    """ms-swift's GRPO in its own environment and process (``bench/swift_system.py``), one step per call."""

    name = "swift"

    def __init__(self, s: Settings, rounds: int, threads: int = 0):
        self.system = load_swift_system().Swift(s, rounds, threads)

    def step(self) -> StepResult:
        r = self.system.step()
        return StepResult(
            wall=r["wall"],
            rows=r["rows"],
            phases=r["phases"],
            tower_calls=r["tower_calls"],
            completion_tokens=r["completion_tokens"],
            prompt_tokens=r["prompt_tokens"],
        )

    def memory(self) -> dict:
        """The worker's resident set after the build (GB): ms-swift runs in its own process."""
        return {"rss_built_gb": self.system.built.get("rss_built_gb", math.nan)}

    def close(self) -> dict:
        return self.system.close()


# ---------------------------------------------------------------------------------------------- anchor
class Anchor:
    """Decode the mp4 every step, one generate per completion, the towers in every pass."""

    name = "anchor"

    def __init__(self, s: Settings):
        import torch

        from omni_grpo.models import get_module
        from omni_grpo.rewards import build_reward_manager

        torch.manual_seed(s.seed)
        self.s = s
        self.module = get_module("qwen2_5_omni")
        self.processor = self.module.load_processor(s.model_dir)
        self.policy = self.module.load_model(s.model_dir)
        for tower in self.module.tower_modules(self.policy).values():
            tower.requires_grad_(False)
        self.reference = self.module.load_model(s.model_dir).eval().requires_grad_(False)
        self.policy.train()
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=s.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        self.rewards = build_reward_manager(REWARDS)
        self.rows = [json.loads(line) for line in s.manifest.read_text().splitlines() if line.strip()]
        self.next_row = 0
        self.timer = Timer()
        self.towers = TowerCounter()
        self.towers.attach(self.policy)
        self.towers.attach(self.reference)
        tok = self.processor.tokenizer
        self.stop_ids = self.module.stop_token_ids(tok)
        self.pad_id = self.module.pad_token_id(tok)
        self.banned = self.module.banned_token_ids(tok)

    def _decode(self, row: dict) -> dict:
        import numpy as np
        from qwen_omni_utils import process_mm_info

        from omni_grpo.synthetic import audioread_without_ffmpeg

        video = {"type": "video", "video": str(self.s.manifest.parent / row["video"])}
        plan = self.s.frames.get(row["id"])
        if plan is not None:  # the frames preprocess kept under the prompt budget, decoded from the mp4 here
            video.update(nframes=plan[0], resized_height=plan[1], resized_width=plan[2])
        else:
            video["fps"] = self.s.fps
            video.update(
                {
                    k: v
                    for k, v in (("min_pixels", self.s.min_pixels), ("max_pixels", self.s.max_pixels))
                    if v is not None
                }
            )
        conversation = [{"role": "user", "content": [video]}]
        with audioread_without_ffmpeg():
            audios, _, videos, kwargs = process_mm_info(conversation, use_audio_in_video=True, return_video_kwargs=True)
        frames = videos[0].clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()
        return dict(
            row,
            problem_type="multiple_choice",
            frames=frames,
            fps=float(kwargs["fps"][0]),
            audio=np.asarray(audios[0], dtype=np.float32),
            sample_rate=16000,
        )

    def _log_probs(self, model, inputs, completion_ids, completion_mask):
        """A plain forward with every media tensor (the towers run again), full logits, then log-softmax."""
        import torch

        ids = torch.cat([inputs.input_ids, completion_ids], dim=1)
        mask = torch.cat([inputs.attention_mask, completion_mask.to(inputs.attention_mask.dtype)], dim=1)
        out = model(input_ids=ids, attention_mask=mask, use_cache=False, **inputs.media_kwargs())
        logits = out.logits[:, inputs.input_ids.shape[1] - 1 : -1].float() / self.s.temperature
        return torch.log_softmax(logits, dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)

    def step(self) -> StepResult:
        import torch

        from omni_grpo import core_algos
        from omni_grpo.models.sampling import finish_completions

        s, t, g = self.s, self.timer, self.s.generations
        start = time.perf_counter()
        # data: decode the mp4 (frames + audio) and run the processor, every step
        t0 = time.perf_counter()
        row = self.rows[self.next_row % len(self.rows)]
        self.next_row += 1
        sample = self._decode(row)
        inputs = self.module.build_inputs(self.processor, [sample], _system_prompt(), True)
        t.add("data", time.perf_counter() - t0)
        # rollout: one generate per completion, all media each time
        t0 = time.perf_counter()
        pieces = []
        with torch.no_grad():
            for _ in range(g):
                out = self.policy.generate(
                    input_ids=inputs.input_ids,
                    attention_mask=inputs.attention_mask,
                    **inputs.media_kwargs(),
                    max_new_tokens=s.completion_length,
                    do_sample=True,
                    temperature=s.temperature,
                    top_p=1.0,
                    top_k=None,
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.pad_id,
                    suppress_tokens=self.banned,
                    use_cache=True,
                    min_new_tokens=s.min_new_tokens or None,
                )
                pieces.append(out[0, inputs.input_ids.shape[1] :])
        width = max(p.shape[0] for p in pieces)
        padded = torch.full((g, width), self.pad_id, dtype=torch.long)
        for i, p in enumerate(pieces):
            padded[i, : p.shape[0]] = p
        comps = finish_completions(padded, self.stop_ids, self.pad_id)
        texts = self.processor.tokenizer.batch_decode(comps.completion_ids, skip_special_tokens=True)
        t.add("rollout", time.perf_counter() - t0)
        # rewards and advantages
        t0 = time.perf_counter()
        fields = {k: sample.get(k) for k in ("id", "question", "options", "answer", "problem_type")}
        scored = self.rewards(texts, [fields] * g)
        advantages = core_algos.group_advantages(scored.total.float(), g)
        t.add("rewards", time.perf_counter() - t0)
        rows = inputs.repeat(g)  # G copies of every media tensor: the towers see G videos per pass
        ids, cmask = comps.completion_ids, comps.completion_mask
        mb = s.micro_batch
        # reference log-probs
        t0 = time.perf_counter()
        ref = []
        with torch.no_grad():
            for a in range(0, g, mb):
                part = rows.select(list(range(a, a + mb)))
                ref.append(self._log_probs(self.reference, part, ids[a : a + mb], cmask[a : a + mb]))
        ref = torch.cat(ref)
        t.add("ref", time.perf_counter() - t0)
        # policy forward + backward, same loss as ours
        t0 = time.perf_counter()
        tokens = cmask.sum().float()
        seqs = (cmask.sum(-1) > 0).sum().float()
        for a in range(0, g, mb):
            part = rows.select(list(range(a, a + mb)))
            lp = self._log_probs(self.policy, part, ids[a : a + mb], cmask[a : a + mb])
            loss, _ = core_algos.policy_loss(
                lp,
                lp.detach(),
                advantages[a : a + mb],
                cmask[a : a + mb].to(lp.dtype),
                0.2,
                0.2,
                "token_mean",
                ref_log_probs=ref[a : a + mb],
                beta=s.beta,
                kl_estimator="k3",
                global_tokens=tokens,
                global_seqs=seqs,
                max_length=s.completion_length,
            )
            loss.backward()
        t.add("policy", time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t.add("optimizer", time.perf_counter() - t0)
        wall = time.perf_counter() - start
        return StepResult(
            wall=wall,
            rows=g,
            phases=t.pop(),
            tower_calls=self.towers.pop(),
            completion_tokens=float(cmask.sum(-1).float().mean()),
            prompt_tokens=int(inputs.attention_mask.sum()),
        )

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------- driver
QUESTION = "Why does the person in the video raise their voice?"
OPTIONS = ["They are nervous.", "They are excited.", "They are angry.", "They are bored."]


def prepare_model(work: Path, spec: str) -> Path:
    from omni_grpo.tiny_models import build_tiny_model

    hidden, layers, vocab = parse_model(spec)
    out = work / f"model-{hidden}x{layers}-{vocab}"
    if not (out / "config.json").exists():
        build_tiny_model(out, vocab=vocab, hidden=hidden, layers=layers, seed=0)
    return out


def parse_model(spec: str) -> tuple[int, int, str]:
    """'256x4:qwen' -> (256, 4, 'qwen'): hidden size, decoder layers, vocabulary ('tiny' or 'qwen')."""
    try:
        size, _, vocab = spec.partition(":")
        hidden, layers = (int(x) for x in size.split("x"))
    except ValueError:
        raise SystemExit(f"--models: {spec!r} is not HIDDENxLAYERS[:tiny|qwen], e.g. 64x2:tiny") from None
    vocab = vocab or "tiny"
    if vocab not in ("tiny", "qwen"):
        raise SystemExit(f"--models: vocabulary must be tiny or qwen, got {vocab!r}")
    return hidden, layers, vocab


def prepare_data(work: Path, seconds: float, args) -> tuple[Path, Path]:
    """`args.clips` mp4 clips of `seconds` (H.264 + AAC 44.1 kHz stereo), a JSONL manifest, and their shards
    (preprocess's prompt budget `args.max_prompt_tokens`, its default when absent)."""
    from omni_grpo import synthetic
    from preprocess.budget import DEFAULT_MAX_PROMPT_TOKENS
    from preprocess.build import BuildOptions, build
    from preprocess.media import VideoOptions

    budget = getattr(args, "max_prompt_tokens", DEFAULT_MAX_PROMPT_TOKENS)
    pixels = args.max_pixels or "default"
    folder = work / f"clips-{seconds:g}s-{args.size[0]}x{args.size[1]}-{args.video_fps}fps-{pixels}px-{budget}tok"
    manifest, shards = folder / "manifest.jsonl", folder / "shards"
    if (shards / "manifest.json").exists():
        return manifest, shards
    rows = []
    for i in range(args.clips):
        name = f"clip{i:03d}.mp4"
        synthetic.make_clip(
            folder / name,
            seconds=seconds,
            fps=args.video_fps,
            size=tuple(args.size),
            sample_rate=44100,
            channels=2,
            seed=i,
        )
        rows.append({"id": f"q{i}", "video": name, "question": QUESTION, "options": OPTIONS, "answer": "B"})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    video = VideoOptions(fps=args.fps, min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    build(
        BuildOptions(
            source="jsonl",
            manifest=manifest,
            output=shards,
            video=video,
            workers=0,
            progress=False,
            max_prompt_tokens=budget,
        )
    )
    return manifest, shards


def frame_plan(shards: Path) -> dict:
    """Sample id -> (frames, height, width) stored in `shards`: what the anchor asks qwen-omni-utils for, so
    that it decodes the same frames from the mp4 where the prompt budget reduced them."""
    from preprocess.shards import ShardDataset

    ds = ShardDataset(shards, verify=False)
    plan = {}
    for i in range(len(ds)):
        sample = ds[i]
        if sample["frames"] is not None:
            plan[sample["id"]] = tuple(int(x) for x in sample["frames"].shape[:3])
    return plan


def make_system(name: str, s: Settings, rounds: int, trl_gpu_path: bool = True, threads: int = 0):
    if name == "ours":
        return Ours(s)
    if name == "swift":
        return Swift(s, rounds, threads)
    if name == "trl":
        return TRL(s, total_steps=rounds, gpu_path=trl_gpu_path)
    return Anchor(s)


def run_config(
    s: Settings, systems: list[str], warmup: int, steps: int, trl_gpu_path: bool = True, threads: int = 0
) -> dict:
    """Build every system, then `warmup + steps` rounds of one step each, in turn; keep the timed rounds."""
    built, results, errors = {}, {name: [] for name in systems}, {}
    for name in systems:
        try:
            built[name] = make_system(name, s, warmup + steps, trl_gpu_path, threads)
        except Exception as exc:  # TRL may not run on this stack: report why, still compare the others
            errors[name] = f"{type(exc).__name__}: {exc}"
    try:
        for r in range(warmup + steps):
            for name, system in list(built.items()):
                try:
                    res = system.step()
                except Exception as exc:
                    errors[name] = f"{type(exc).__name__}: {exc}"
                    system.close()
                    del built[name]
                    continue
                if r >= warmup:
                    results[name].append(res)
    finally:
        for system in built.values():
            system.close()
        built.clear()
        gc.collect()
    return {"results": results, "errors": errors}


def summarize(results: list[StepResult]) -> dict:
    walls = [r.wall for r in results]
    wall = statistics.median(walls)
    phases = {p: statistics.median([r.phases.get(p, 0.0) for r in results]) for p in PHASES}
    known = statistics.median([sum(r.phases.get(p, 0.0) for p in PHASES) for r in results])
    return {
        "step_s": wall,
        "steps_per_s": 1.0 / wall,
        "samples_per_s": results[0].rows / wall,
        "phases": phases,
        "other": max(0.0, wall - known),
        "tower_calls": statistics.median(r.tower_calls for r in results),
        "completion_tokens": statistics.mean(r.completion_tokens for r in results),
        "prompt_tokens": results[0].prompt_tokens,
        "walls": walls,
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    import transformers

    trl = "not installed"
    try:
        import trl as _trl

        trl = _trl.__version__
    except ImportError:
        pass
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, trl {trl}"
    )


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if a and b and math.isfinite(a) and math.isfinite(b) else "—"


def tables(records: list[dict]) -> str:
    head = (
        "| model | G | clip | system | prompt tok | compl tok | step s | steps/s | samples/s | ours/this | "
        "per round | tower calls/step | load avg |\n|" + "---|" * 13
    )
    lines = [head]
    for rec in records:
        summ, ours = rec["summary"], rec["summary"].get("ours")
        for name in SYSTEMS:
            if name not in rec["systems"]:
                continue
            if name not in summ:
                lines.append(
                    f"| {rec['model']} | {rec['G']} | {rec['clip']} | {name} | " + "— | " * 8 + f"{rec['load']} |"
                )
                continue
            x = summ[name]
            ratio = "1.00x" if name == "ours" else (fmt_ratio(ours["steps_per_s"], x["steps_per_s"]) if ours else "—")
            spread = "—"
            if ours and name != "ours" and len(ours["walls"]) == len(x["walls"]):
                per_round = [w / o for w, o in zip(x["walls"], ours["walls"])]
                spread = f"{min(per_round):.2f}–{max(per_round):.2f}x"
            note = {"trl": " (text only, no media)", "anchor": " (imitation loop)"}.get(name, "")
            lines.append(
                f"| {rec['model']} | {rec['G']} | {rec['clip']} | {name}{note} | {x['prompt_tokens']} | "
                f"{x['completion_tokens']:.1f} | {x['step_s']:.2f} | {x['steps_per_s']:.3f} | "
                f"{x['samples_per_s']:.2f} | {ratio} | {spread} | {x['tower_calls']:g} | {rec['load']} |"
            )
    lines.append("")
    lines.append(
        "ours/this = ratio of median step times (> 1: ours is faster); per round = the same ratio in each "
        "timed round (the systems alternate, so each round saw one load)."
    )
    lines.append("")
    lines.append("Phases (median seconds per step; policy = forward + backward; other = the rest of the step):")
    lines.append("")
    cols = ["data", "encode", "rollout", "rewards", "ref", "old", "policy", "optimizer"]
    lines.append(
        "| model | G | clip | system | " + " | ".join(cols) + " | other | step |\n|" + "---|" * (len(cols) + 6)
    )
    for rec in records:
        for name in SYSTEMS:
            x = rec["summary"].get(name)
            if x is None:
                continue
            cells = [f"{x['phases'][c]:.3f}" if x["phases"][c] else "—" for c in cols]
            lines.append(
                f"| {rec['model']} | {rec['G']} | {rec['clip']} | {name} | "
                + " | ".join(cells)
                + f" | {x['other']:.3f} | {x['step_s']:.3f} |"
            )
    errors = [(rec, name, err) for rec in records for name, err in rec["errors"].items()]
    if errors:
        lines.append("")
        for rec, name, err in errors:
            lines.append(f"- {name} failed on {rec['model']} G={rec['G']} clip {rec['clip']}: {err[:500]}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models",
        nargs="+",
        default=["64x2:tiny", "256x4:qwen"],
        help="HIDDENxLAYERS[:tiny|qwen] of the tiny kit (default: 64x2:tiny 256x4:qwen)",
    )
    p.add_argument("--generations", type=int, nargs="+", default=[4, 8], help="G values (default: 4 8)")
    p.add_argument("--seconds", type=float, nargs="+", default=[3.0, 30.0], help="clip lengths (default: 3 30)")
    p.add_argument(
        "--systems",
        nargs="+",
        default=list(SYSTEMS),
        choices=SYSTEMS,
        help="default: ours swift trl anchor (swift: ms-swift in .swift-venv, created on first use)",
    )
    p.add_argument("--steps", type=int, default=3, help="timed rounds per configuration (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    p.add_argument("--completion-length", type=int, default=16, help="max new tokens (default: 16)")
    p.add_argument(
        "--micro-batch",
        type=int,
        default=2,
        help="rows per forward/backward in the update and the anchor's log-prob passes (default: 2)",
    )
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient for all systems (default: 0.04)")
    p.add_argument("--clips", type=int, default=2, help="clips per length, used in turn (default: 2)")
    p.add_argument("--size", type=int, nargs=2, default=[360, 640], metavar=("H", "W"), help="default: 360 640")
    p.add_argument("--video-fps", type=int, default=30, help="frame rate of the source mp4 (default: 30)")
    p.add_argument("--fps", type=float, default=2.0, help="frames sampled per second (default: 2)")
    p.add_argument("--min-pixels", type=int, default=3136, help="default: 3136")
    p.add_argument("--max-pixels", type=int, default=12544, help="per frame, as qwen-omni-utils (default: 12544)")
    p.add_argument(
        "--trl-cpu-path",
        action="store_true",
        help="let TRL's fused LM head score every prompt position, as it does without Triton (default: "
        "the completion positions only, as on a GPU)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--workdir", type=Path, default=None, help="keep models and clips here between runs")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    p.add_argument(
        "--quick",
        action="store_true",
        help="one small configuration: 64x2:tiny, G=4, 3 s clip, 16 tokens, 1 clip, 2 timed rounds",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.generations, args.seconds = ["64x2:tiny"], [4], [3.0]
        args.completion_length, args.clips, args.steps, args.warmup = 16, 1, 2, 1
    for g in args.generations:
        if g % args.micro_batch:
            p.error(f"--micro-batch {args.micro_batch} must divide every G (got G={g})")
    return args


def main(argv=None) -> list[dict]:
    import logging
    import warnings

    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    for name in ("qwen_omni_utils", "transformers", "omni_grpo", "trl", "accelerate", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    records = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"step benchmark on {machine()}; load average at start {load()}", flush=True)
        for spec in args.models:
            model_dir = prepare_model(work, spec)
            for seconds in args.seconds:
                manifest, shards = prepare_data(work, seconds, args)
                for g in args.generations:
                    s = Settings(
                        model_dir=model_dir,
                        shards=shards,
                        manifest=manifest,
                        generations=g,
                        completion_length=args.completion_length,
                        micro_batch=args.micro_batch,
                        beta=args.beta,
                        max_pixels=args.max_pixels,
                        min_pixels=args.min_pixels,
                        fps=args.fps,
                        out=Path(tmp) / f"run-{spec.replace(':', '-')}-{seconds:g}-{g}",
                        frames=frame_plan(shards),
                    )
                    t0 = time.perf_counter()
                    out = run_config(s, args.systems, args.warmup, args.steps, not args.trl_cpu_path, args.threads)
                    rec = {
                        "model": spec,
                        "G": g,
                        "clip": f"{seconds:g} s",
                        "systems": list(args.systems),
                        "errors": out["errors"],
                        "load": load(),
                        "seconds": time.perf_counter() - t0,
                        "summary": {k: summarize(v) for k, v in out["results"].items() if v},
                    }
                    records.append(rec)
                    print(
                        f"[{spec} G={g} {seconds:g} s] done in {rec['seconds']:.0f} s, load {rec['load']}; "
                        + ", ".join(f"{k} {v['step_s']:.2f} s/step" for k, v in rec["summary"].items())
                        + "".join(f"; {k} FAILED" for k in rec["errors"]),
                        flush=True,
                    )
    print()
    print(
        f"# settings: {args.completion_length} new tokens, micro-batch {args.micro_batch}, beta {args.beta}, "
        f"clips {args.size[0]}x{args.size[1]} at {args.video_fps} fps sampled at {args.fps:g} fps with max_pixels "
        f"{args.max_pixels}; median of {args.steps} rounds after {args.warmup} warm-up; float32 on CPU; "
        f"total {time.perf_counter() - started:.0f} s; load average at end {load()}"
    )
    print(tables(records))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1, default=str))
    return records


if __name__ == "__main__":
    main()
