"""Training configuration: documented dataclasses, YAML files and `key=value` command-line overrides.

Every option is a dataclass field whose `metadata["help"]` says what it does (TRL style); fields with a
fixed set of values list them in `metadata["choices"]`. `__post_init__` converts values to the declared
types and rejects bad values with a `ConfigError` that says what to do. A misspelled key, in a file or an
override, is an error that names the closest valid key — never a silently ignored option.

    cfg = load_config("configs/stage4.yaml", ["learning_rate=5e-7", "lora.enabled=true"])

Values are parsed as YAML (`true`, `1e-6`, `[a, b]`, `null`), nested keys are joined with dots.
`docs/config_reference.md` is `reference_markdown()`; regenerate it with
`python -m omni_grpo.config > docs/config_reference.md`.

Counting: a *prompt* is one sample (video + question); each prompt yields `num_generations` (G)
completions, one *row* each. One micro-step on one device handles `per_device_prompts` prompts, i.e.
`per_device_prompts × G` rows; an optimizer step is `gradient_accumulation_steps` micro-steps on every
device, so it sees `per_device_prompts × gradient_accumulation_steps × world_size` prompts.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import re
import sys
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

__all__ = [
    "ConfigError",
    "JudgeConfig",
    "LoraConfig",
    "TrainConfig",
    "check_paths",
    "config_to_dict",
    "load_config",
    "reference_markdown",
    "save_config",
]


class ConfigError(ValueError):
    """A configuration value is missing, misspelled or invalid; the message says what to change."""


DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant who watches a video and listens to its audio to answer a question about "
    "the people in it. First describe the context that matters for the question: what people do, say and "
    "how they sound, inside <context> </context>. Then reason step by step about their emotions, intentions "
    "and relationships inside <think> </think>. Finally give only the answer inside <answer> </answer>. "
    "Reply exactly as <context>...</context><think>...</think><answer>...</answer>."
)

# Keys of other trainers (TRL GRPOConfig, verl) that people type out of habit, mapped to ours.
_RENAMED = {
    "per_device_train_batch_size": "per_device_prompts",
    "num_train_epochs": "num_epochs",
    "epsilon": "clip_low",
    "epsilon_high": "clip_high",
    "loss_type": "loss_agg",
    "scale_rewards": "advantage_scale",
    "lr": "learning_rate",
    "lr_scheduler_type": "lr_scheduler",
    "max_new_tokens": "max_completion_length",
    "kl_coef": "beta",
    "entropy_coeff": "entropy_coef",
    "use_peft": "lora.enabled",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
}


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class LoraConfig:
    """LoRA adapters on the language model (the vision and audio towers never get adapters)."""

    _section: ClassVar[str] = "lora"

    enabled: bool = field(default=False, metadata=_help("Train LoRA adapters instead of all language-model weights."))
    r: int = field(default=16, metadata=_help("LoRA rank."))
    alpha: int = field(default=32, metadata=_help("LoRA scaling numerator (scale = alpha / r)."))
    dropout: float = field(default=0.0, metadata=_help(
        "Dropout on the LoRA input, in [0, 1). Above 0, KL(π‖π_ref) is no longer exactly 0 at step 0."))
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata=_help("Linear-layer names that get adapters, matched inside the language model only."),
    )
    merge_on_save: bool = field(
        default=False,
        metadata=_help("Also save a copy with the adapters merged into the weights (a plain checkpoint)."),
    )

    def __post_init__(self) -> None:
        _coerce_fields(self)
        _require(self.r >= 1, f"lora.r={self.r} must be >= 1; typical values are 8-64")
        _require(self.alpha > 0, f"lora.alpha={self.alpha} must be > 0; a common choice is 2 × lora.r")
        _require(0 <= self.dropout < 1, f"lora.dropout={self.dropout} must be in [0, 1)")
        _require(
            not self.enabled or len(self.target_modules) > 0,
            "lora.target_modules is empty; list module names such as [q_proj, v_proj] or set lora.enabled=false",
        )


@dataclass
class JudgeConfig:
    """An OpenAI-compatible LLM judge endpoint. Holds the NAME of the variable with the API key, never the key."""

    _section: ClassVar[str] = "judge"

    enabled: bool = field(default=False, metadata=_help("Call the judge for rewards that use one."))
    url: str = field(default="", metadata=_help("Chat-completions URL, e.g. `http://127.0.0.1:8000/v1/chat/completions`."))
    model: str = field(default="", metadata=_help("Model name sent to the judge."))
    api_key_env: str = field(
        default="",
        metadata=_help(
            "NAME of the environment variable that holds the API key (e.g. `JUDGE_API_KEY`), read when the judge "
            "is called; empty = send no key. The key itself is never stored in a config."
        ),
    )
    timeout_s: float = field(default=30.0, metadata=_help("Seconds to wait for one judge request."))
    batch_size: int = field(default=8, metadata=_help("Completions rated per judge request."))
    concurrency: int = field(default=4, metadata=_help("Judge requests in flight at once."))

    def __post_init__(self) -> None:
        _coerce_fields(self)
        if self.enabled:
            _require(
                self.url.startswith(("http://", "https://")),
                "judge.enabled=true needs judge.url, the http(s) URL of a chat-completions endpoint; "
                "set judge.url=... or judge.enabled=false",
            )
            _require(bool(self.model.strip()), "judge.enabled=true needs judge.model=NAME (the model the endpoint serves)")
        _require(
            self.api_key_env == "" or re.fullmatch(r"[A-Z_][A-Z0-9_]*", self.api_key_env) is not None,
            "judge.api_key_env must be the NAME of an environment variable in capitals (e.g. JUDGE_API_KEY) that "
            "holds the key, never the key itself; export JUDGE_API_KEY=... and set judge.api_key_env=JUDGE_API_KEY",
        )
        _require(self.timeout_s > 0, f"judge.timeout_s={self.timeout_s} must be > 0 seconds")
        _require(self.batch_size >= 1, f"judge.batch_size={self.batch_size} must be >= 1")
        _require(self.concurrency >= 1, f"judge.concurrency={self.concurrency} must be >= 1")

    def api_key(self) -> str | None:
        """The API key from the environment variable named by `api_key_env` (None when it is empty)."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(f"environment variable {self.api_key_env} (judge.api_key_env) is not set; export it")
        return key


@dataclass
class TrainConfig:
    """Everything `python -m omni_grpo.train` needs. See the module docstring for what a batch counts."""

    # ------------------------------------------------------------------------------------------------ model
    model_name_or_path: str | None = field(
        default=None,
        metadata=_help(
            "Required. Directory with config.json: a full Qwen2.5-Omni checkpoint or a thinker-only one. "
            "Nothing is downloaded."
        ),
    )
    model_family: str = field(
        default="auto",
        metadata=_help("Model module to use; `auto` reads `model_type` from config.json.",
                       choices=("auto", "qwen2_5_omni", "qwen3_omni")),
    )
    use_audio_in_video: bool = field(
        default=True,
        metadata=_help(
            "Feed each clip's soundtrack as audio interleaved with its frames (TMRoPE). The one flag: the "
            "processor, generation and every log-prob pass receive it. Needs shards with audio."
        ),
    )
    freeze_vision_tower: bool = field(default=True, metadata=_help("Keep the vision encoder frozen (run once per prompt per step)."))
    freeze_audio_tower: bool = field(default=True, metadata=_help("Keep the audio encoder frozen (run once per prompt per step)."))
    gradient_checkpointing: bool = field(default=False, metadata=_help("Recompute activations in the backward pass to save memory."))
    bf16: bool = field(
        default=False,
        metadata=_help("Train in bfloat16 (needs hardware support) with float32 master weights for the optimizer "
                       "(DeepSpeed's own, or ours without DeepSpeed); false = float32."),
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata=_help("Attention kernel passed to transformers.",
                       choices=("sdpa", "eager", "flash_attention_2", "flash_attention_3")),
    )
    system_prompt: str = field(
        default=DEFAULT_SYSTEM_PROMPT,
        metadata=_help("System message of every prompt; the default asks for `<context>`, `<think>`, `<answer>` sections."),
    )
    lora: LoraConfig = field(default_factory=LoraConfig, metadata=_help("LoRA settings."))

    # ------------------------------------------------------------------------------------------------- data
    data: list[str] = field(
        default_factory=list,
        metadata=_help("Training shard directories written by `python -m preprocess` (each has manifest.json)."),
    )
    dataset_order: str = field(
        default="shuffle",
        metadata=_help("Prompt order each epoch: `shuffle` (seeded by `seed`) or `sequential`.", choices=("shuffle", "sequential")),
    )
    skip_corrupt_shards: bool = field(
        default=False,
        metadata=_help("Skip (with a warning) a shard file or sample that cannot be read or decoded instead of stopping."),
    )
    dataloader_num_workers: int = field(default=2, metadata=_help("Data-loading worker processes per device; 0 = load in the main process."))
    dataloader_prefetch_factor: int = field(default=2, metadata=_help("Batches each worker loads ahead (used when workers > 0)."))

    # ---------------------------------------------------------------------------------------------- rollout
    num_generations: int = field(default=8, metadata=_help("G: completions sampled per prompt; advantages compare them. At least 2."))
    per_device_prompts: int = field(
        default=1,
        metadata=_help(
            "Distinct prompts per device per micro-step. Each yields G completions, so a micro-step holds "
            "per_device_prompts × G rows; an optimizer step sees per_device_prompts × gradient_accumulation_steps "
            "× world_size prompts."
        ),
    )
    micro_batch_size: int = field(
        default=0,
        metadata=_help(
            "Rows per forward/backward in the update phase; must divide per_device_prompts × G. "
            "0 = all rows of a micro-step at once."
        ),
    )
    share_prompt: bool = field(
        default=True,
        metadata=_help(
            "In the log-prob passes, run each prompt through the language model once per micro-batch and let "
            "its G completions attend to that one copy (the same result up to float rounding; the prompt's "
            "compute and activation memory drop G-fold when a micro-batch holds whole groups)."
        ),
    )
    gradient_accumulation_steps: int = field(
        default=1,
        metadata=_help("Micro-steps per optimizer step (leave it `auto` in the DeepSpeed JSON)."),
    )
    max_prompt_length: int = field(
        default=16384,
        metadata=_help(
            "Longest prompt in tokens, video and audio placeholder tokens included. Prompts are never "
            "truncated (cutting media tokens breaks the model); a longer one is an error."
        ),
    )
    max_completion_length: int = field(
        default=1024,
        metadata=_help("Most new tokens per completion; also the constant of loss_agg=seq_mean_token_sum_norm."),
    )
    temperature: float = field(default=1.0, metadata=_help("Sampling temperature (the start value when scheduled)."))
    temperature_schedule: str = field(
        default="constant",
        metadata=_help("`linear` ramps the temperature to temperature_final.", choices=("constant", "linear")),
    )
    temperature_final: float | None = field(default=None, metadata=_help("Temperature at the end of a linear schedule."))
    temperature_schedule_fraction: float = field(
        default=1.0, metadata=_help("Fraction of training over which a linear temperature schedule ramps, in (0, 1].")
    )
    top_p: float = field(default=1.0, metadata=_help("Nucleus sampling mass in (0, 1]; 1 = off."))
    top_k: int = field(default=0, metadata=_help("Sample from the k most likely tokens; 0 = off."))
    repetition_penalty: float = field(default=1.0, metadata=_help("Generation repetition penalty; 1 = off."))

    # -------------------------------------------------------------------------------------------- algorithm
    beta: float = field(
        default=0.04,
        metadata=_help("KL coefficient β (the start value when scheduled); 0 with a constant schedule = no reference model."),
    )
    beta_schedule: str = field(
        default="constant",
        metadata=_help("`linear` ramps β to beta_final (HumanOmniV2's dynamic KL).", choices=("constant", "linear")),
    )
    beta_final: float | None = field(default=None, metadata=_help("β at the end of a linear schedule."))
    beta_schedule_fraction: float = field(
        default=1.0, metadata=_help("Fraction of training over which a linear β schedule ramps, then holds, in (0, 1].")
    )
    kl_estimator: str = field(
        default="k3",
        metadata=_help("Per-token KL estimator: `k2` ½ squared log-ratio (gradient of KL(π‖ref)), `k3` Schulman's "
                       "(GRPO; gradient of KL(ref‖π)); `k1` log-ratio has zero expected gradient and is refused "
                       "as a loss term.",
                       choices=("k1", "k2", "k3")),
    )
    clip_low: float = field(default=0.2, metadata=_help("PPO ratio clip below: 1 - clip_low, in (0, 1)."))
    clip_high: float = field(default=0.2, metadata=_help("PPO ratio clip above: 1 + clip_high (DAPO's clip-higher uses 0.28)."))
    loss_agg: str = field(
        default="token_mean",
        metadata=_help(
            "Loss aggregation: `token_mean` (DAPO), `seq_mean_token_mean` (original GRPO), "
            "`seq_mean_token_sum_norm` (Dr.GRPO, divides by max_completion_length).",
            choices=("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"),
        ),
    )
    advantage_scale: str = field(
        default="group",
        metadata=_help(
            "Advantage = reward - group mean, divided by the group std (`group`, GRPO), the std of the micro-step's "
            "rewards (`batch`), or nothing (`none`, Dr.GRPO).",
            choices=("group", "batch", "none"),
        ),
    )
    num_iterations: int = field(
        default=1,
        metadata=_help("μ: optimizer steps over each step's rollouts (> 1: ratios against the log-probs from before the "
                       "first, clipping acts from the second); the LR schedule counts all of them."),
    )
    entropy_coef: float = field(default=0.0, metadata=_help("Weight of the entropy bonus; 0 = off."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Clip the gradient norm to this value; 0 = no clipping."))
    max_consecutive_nonfinite: int = field(
        default=3,
        metadata=_help("A non-finite loss or gradient norm skips the update; stop after this many in a row."),
    )

    # -------------------------------------------------------------------------------------------- optimiser
    learning_rate: float = field(default=1e-6, metadata=_help("Peak AdamW learning rate, > 0."))
    lr_scheduler: str = field(
        default="constant",
        metadata=_help("Learning-rate schedule after warmup.", choices=("constant", "linear", "cosine")),
    )
    warmup_ratio: float = field(
        default=0.0,
        metadata=_help("Fraction of optimizer steps of linear warmup, in [0, 1); applies to every lr_scheduler, "
                       "`constant` included."),
    )
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW β1, in [0, 1)."))
    adam_beta2: float = field(default=0.999, metadata=_help("AdamW β2, in [0, 1)."))
    adam_epsilon: float = field(default=1e-8, metadata=_help("AdamW ε, > 0."))
    max_steps: int = field(default=-1, metadata=_help("Optimizer steps to train; -1 = num_epochs passes over the data."))
    num_epochs: int = field(default=1, metadata=_help("Passes over the training data when max_steps = -1."))

    # ---------------------------------------------------------------------------------------------- rewards
    reward_funcs: list[str] = field(
        default_factory=lambda: ["format", "accuracy", "people_focus"],
        metadata=_help("Reward names (built-in) or import paths `package.module:function`, summed with their weights."),
    )
    reward_weights: list[float] | None = field(
        default=None, metadata=_help("One weight per reward in reward_funcs; null = 1.0 each.")
    )
    reward_kwargs: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata=_help("Options per reward: `{name: {option: value}}`, e.g. `reward_kwargs.format.partial_credit=0.5`."),
    )
    max_consecutive_reward_errors: int = field(
        default=3, metadata=_help("Stop when a reward fails on this many batches in a row (failures are counted and logged).")
    )
    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata=_help("LLM judge settings."))

    # -------------------------------------------------------------------------------------------------- run
    seed: int = field(default=42, metadata=_help("Seed for data order, sampling and initialisation."))
    deepspeed: str | None = field(
        default=None,
        metadata=_help("DeepSpeed JSON config (e.g. configs/deepspeed/zero3.json); null = the file `accelerate launch "
                       "--deepspeed_config_file` names, else plain single-process PyTorch."),
    )
    output_dir: str = field(default="outputs/run", metadata=_help("Where checkpoints, TensorBoard logs and the saved config go."))
    logging_steps: int = field(default=1, metadata=_help("Log scalars every N optimizer steps."))
    log_completions: int = field(default=4, metadata=_help("Sample completions per logging step in the TensorBoard table; 0 = none."))
    save_steps: int = field(default=50, metadata=_help("Save a checkpoint every N optimizer steps (and at the end); 0 = only at the end."))
    save_total_limit: int = field(default=2, metadata=_help("Keep the newest N checkpoints; 0 = keep all."))
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata=_help("Resume from a checkpoint directory, or `latest` in output_dir; null = start fresh."),
    )

    def __post_init__(self) -> None:
        _coerce_fields(self)
        self._validate_model_and_data()
        self._validate_rollout()
        self._validate_algorithm()
        self._validate_optimiser()
        self._validate_run()
        self._validate_reward_settings()
        try:
            import omni_grpo.rewards.manager  # noqa: F401
        except ModuleNotFoundError as exc:
            if exc.name not in ("omni_grpo.rewards", "omni_grpo.rewards.manager"):
                raise
        else:
            self.validate_rewards()

    # Derived quantities, so that callers do not re-derive them differently.
    @property
    def rows_per_micro_step(self) -> int:
        """Rows (completions) one device handles per micro-step: per_device_prompts × num_generations."""
        return self.per_device_prompts * self.num_generations

    @property
    def update_micro_batch_size(self) -> int:
        """Rows per forward/backward in the update phase (micro_batch_size, or the whole micro-step if 0)."""
        return self.micro_batch_size or self.rows_per_micro_step

    @property
    def uses_reference_model(self) -> bool:
        """Whether any step has β > 0, so reference log-probs are needed."""
        return self.beta > 0 or (self.beta_schedule == "linear" and (self.beta_final or 0.0) > 0)

    def validate_rewards(self) -> None:
        """Resolve every reward name with the reward registry; ConfigError names the one that fails."""
        from omni_grpo import rewards
        from omni_grpo.rewards.manager import resolve_reward

        built_in = sorted(getattr(rewards, "REWARDS", {}))
        for name in self.reward_funcs:
            try:
                resolve_reward(name)
            except (ValueError, LookupError) as exc:
                raise ConfigError(f"reward_funcs: {exc}{_did_you_mean(name, built_in)}") from None

    def _validate_model_and_data(self) -> None:
        _require(
            bool(self.model_name_or_path),
            "model_name_or_path is required; pass model_name_or_path=DIR (a Qwen2.5-Omni checkpoint directory)",
        )
        _require(
            self.dataloader_num_workers >= 0,
            f"dataloader_num_workers={self.dataloader_num_workers} must be >= 0 (0 loads in the main process)",
        )
        _require(self.dataloader_prefetch_factor >= 1, f"dataloader_prefetch_factor={self.dataloader_prefetch_factor} must be >= 1")

    def _validate_rollout(self) -> None:
        g = self.num_generations
        _require(
            g >= 2,
            f"num_generations={g}: GRPO compares the G completions of a prompt, so G must be >= 2; "
            "set num_generations=8 (or any value >= 2)",
        )
        _require(self.per_device_prompts >= 1, f"per_device_prompts={self.per_device_prompts} must be >= 1")
        rows = self.rows_per_micro_step
        divisors = [d for d in range(1, rows + 1) if rows % d == 0]
        _require(
            self.micro_batch_size >= 0 and (self.micro_batch_size == 0 or rows % self.micro_batch_size == 0),
            f"micro_batch_size={self.micro_batch_size} does not divide the {rows} rows of a micro-step "
            f"(per_device_prompts={self.per_device_prompts} × num_generations={g}); use one of "
            f"{divisors}, or 0 for all rows at once",
        )
        _require(
            self.gradient_accumulation_steps >= 1,
            f"gradient_accumulation_steps={self.gradient_accumulation_steps} must be >= 1",
        )
        for name in ("max_prompt_length", "max_completion_length"):
            _require(getattr(self, name) > 0, f"{name}={getattr(self, name)} must be > 0 tokens")
        self._validate_schedule("temperature", self.temperature, self.temperature_final,
                                self.temperature_schedule, self.temperature_schedule_fraction, strictly_positive=True)
        _require(0 < self.top_p <= 1, f"top_p={self.top_p} must be in (0, 1]; 1 turns nucleus sampling off")
        _require(self.top_k >= 0, f"top_k={self.top_k} must be >= 0; 0 turns top-k sampling off")
        _require(self.repetition_penalty > 0, f"repetition_penalty={self.repetition_penalty} must be > 0; 1 turns it off")

    def _validate_algorithm(self) -> None:
        self._validate_schedule("beta", self.beta, self.beta_final, self.beta_schedule,
                                self.beta_schedule_fraction, strictly_positive=False)
        _require(0 < self.clip_low < 1, f"clip_low={self.clip_low} must be in (0, 1); GRPO uses 0.2")
        _require(self.clip_high > 0, f"clip_high={self.clip_high} must be > 0; GRPO uses 0.2, DAPO 0.28")
        _require(self.num_iterations >= 1, f"num_iterations={self.num_iterations} must be >= 1 (1 = one update per rollout)")
        _require(
            self.kl_estimator != "k1" or not self.uses_reference_model,
            "kl_estimator=k1 as a loss term has zero expected gradient (E_π[∇ log π] = 0): it adds noise, not "
            "regularisation; use kl_estimator=k3 (GRPO's; its gradient is that of KL(π_ref‖π)) or k2 (the "
            "gradient of KL(π‖π_ref)), or set beta=0",
        )
        _require(self.entropy_coef >= 0, f"entropy_coef={self.entropy_coef} must be >= 0 (it weights a bonus); 0 turns it off")
        _require(self.max_grad_norm >= 0, f"max_grad_norm={self.max_grad_norm} must be >= 0; 0 turns clipping off")
        _require(self.max_consecutive_nonfinite >= 1, f"max_consecutive_nonfinite={self.max_consecutive_nonfinite} must be >= 1")

    @staticmethod
    def _validate_schedule(
        name: str, start: float, final: float | None, kind: str, fraction: float, strictly_positive: bool
    ) -> None:
        def ok(value: float) -> bool:
            return value > 0 if strictly_positive else value >= 0

        word = "> 0" if strictly_positive else ">= 0"
        _require(ok(start), f"{name}={start} must be {word}")
        _require(final is None or ok(final), f"{name}_final={final} must be {word}")
        _require(
            kind == "constant" or final is not None,
            f"{name}_schedule=linear needs {name}_final (the value at the end of the ramp); "
            f"set {name}_final=... or {name}_schedule=constant",
        )
        _require(0 < fraction <= 1, f"{name}_schedule_fraction={fraction} must be in (0, 1]")

    def _validate_optimiser(self) -> None:
        _require(self.learning_rate > 0, f"learning_rate={self.learning_rate} must be > 0; GRPO fine-tuning uses about 1e-6")
        _require(0 <= self.warmup_ratio < 1, f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        _require(self.weight_decay >= 0, f"weight_decay={self.weight_decay} must be >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            _require(0 <= getattr(self, name) < 1, f"{name}={getattr(self, name)} must be in [0, 1)")
        _require(self.adam_epsilon > 0, f"adam_epsilon={self.adam_epsilon} must be > 0")
        _require(
            self.max_steps == -1 or self.max_steps > 0,
            f"max_steps={self.max_steps} must be > 0, or -1 to train for num_epochs",
        )
        _require(self.num_epochs >= 1, f"num_epochs={self.num_epochs} must be >= 1")

    def _validate_run(self) -> None:
        _require(bool(self.output_dir), "output_dir is empty; set output_dir=DIR")
        _require(self.logging_steps >= 1, f"logging_steps={self.logging_steps} must be >= 1")
        for name in ("log_completions", "save_steps", "save_total_limit"):
            _require(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must be >= 0 (0 turns it off)")
        _require(self.resume_from_checkpoint != "", "resume_from_checkpoint is empty; use null, latest or a directory")

    def _validate_reward_settings(self) -> None:
        names = self.reward_funcs
        _require(len(names) > 0, "reward_funcs is empty; list at least one reward, e.g. [format, accuracy]")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        _require(not duplicates, f"reward_funcs lists {duplicates} more than once; list each once and use reward_weights")
        if self.reward_weights is not None:
            _require(
                len(self.reward_weights) == len(names),
                f"reward_weights has {len(self.reward_weights)} values for {len(names)} rewards {names}; "
                "give one weight per reward, in the same order, or null for 1.0 each",
            )
            _require(
                any(w != 0 for w in self.reward_weights),
                "reward_weights are all 0, so every advantage would be 0; give some reward a non-zero weight",
            )
        for name in self.reward_kwargs:
            _require(
                name in names,
                f"reward_kwargs has options for {name!r}, which is not in reward_funcs {names}"
                f"{_did_you_mean(name, names)}; add it to reward_funcs or remove its options",
            )
        _require(
            self.max_consecutive_reward_errors >= 1,
            f"max_consecutive_reward_errors={self.max_consecutive_reward_errors} must be >= 1",
        )


# -------------------------------------------------------------------------------------- value conversion


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce_fields(obj: Any) -> None:
    """Convert every field of a config dataclass to its declared type, or raise ConfigError."""
    section = getattr(obj, "_section", "")
    prefix = f"{section}." if section else ""
    hints = _hints(type(obj))
    for f in dataclasses.fields(type(obj)):
        value = _coerce(getattr(obj, f.name), hints[f.name], prefix + f.name)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(
                f"{prefix}{f.name}={value!r} is not one of {', '.join(choices)}{_did_you_mean(str(value), list(choices))}"
            )
        setattr(obj, f.name, value)


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_optional(tp):
        if value is None or (isinstance(value, str) and value in ("None", "none", "null")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if value is None:
            return tp()
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping of its options (e.g. {name}.KEY=VALUE), got {_describe(value)}")
        _check_keys(value, tp, f"{name}.", where="")
        return tp(**value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {_describe(value)}")
        if isinstance(value, int):
            return value
        number = _to_float(value)
        if number is not None and number.is_integer():
            return int(number)
        raise ConfigError(f"{name} must be an integer, got {_describe(value)}")
    if tp is float:
        number = None if isinstance(value, bool) else _to_float(value)
        if number is None:
            raise ConfigError(f"{name} must be a number, got {_describe(value)}")
        if not math.isfinite(number):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name} must be a string, got {_describe(value)}")
    if origin is list:
        if value is None:
            return []
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list such as [a, b], got {_describe(value)}")
        return [_coerce(item, args[0], f"{name}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping such as {{key: value}}, got {_describe(value)}")
        return {_coerce(k, args[0], f"{name} key"): _coerce(v, args[1], f"{name}.{k}") for k, v in value.items()}
    raise TypeError(f"config field {name} has an unsupported type {tp!r}")


def _to_float(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


# ------------------------------------------------------------------------------------------------ key names


def _all_paths(cls: type, prefix: str = "") -> list[str]:
    paths = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        paths.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            paths.extend(_all_paths(hints[f.name], f"{prefix}{f.name}."))
    return paths


def _did_you_mean(key: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _unknown_key(cls: type, prefix: str, key: str, where: str) -> ConfigError:
    full = prefix + str(key)
    local = [f.name for f in dataclasses.fields(cls)]
    hint = ""
    if full in _RENAMED:
        hint = f"; did you mean {_RENAMED[full]!r}?"
    if not hint:
        match = difflib.get_close_matches(str(key), local, n=1, cutoff=0.6)
        hint = f"; did you mean {prefix + match[0]!r}?" if match else ""
    if not hint:
        paths = _all_paths(TrainConfig)
        nested = [p for p in paths if "." in p and p.rsplit(".", 1)[1] == str(key)]
        hint = f"; did you mean {nested[0]!r}?" if nested else _did_you_mean(full, paths)
    if not hint:
        hint = "; see docs/config_reference.md for every option"
    return ConfigError(f"unknown config key {full!r}{where}{hint}")


def _check_keys(raw: dict, cls: type, prefix: str, where: str) -> None:
    """Reject keys that are not fields of `cls` (recursively for nested config sections)."""
    names = {f.name for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    for key, value in raw.items():
        if key not in names:
            raise _unknown_key(cls, prefix, key, where)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if isinstance(value, dict):
                _check_keys(value, tp, f"{prefix}{key}.", where)
        elif isinstance(value, dict) and typing.get_origin(tp) is not dict:
            raise ConfigError(f"{prefix}{key}{where} is an option, not a section with sub-keys; set it as {prefix}{key}=VALUE")


def _field_type(path: list[str]) -> Any:
    """Declared type at a dotted path, or None if the path leads into a free-form mapping."""
    cls: Any = TrainConfig
    tp: Any = None
    for part in path:
        if not dataclasses.is_dataclass(cls):
            return None
        tp = _hints(cls).get(part)
        if tp is None:
            return None
        cls = tp
    return tp


# --------------------------------------------------------------------------------------- YAML and overrides


@functools.cache
def _yaml_loader() -> type:
    """yaml.SafeLoader that also reads `1e-6` as a float (YAML 1.2), not as the string PyYAML makes of it."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass


def _parse_override(item: str) -> tuple[list[str], Any]:
    text = item[2:] if item.startswith("--") else item
    key, sep, raw_value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key=value, e.g. learning_rate=1e-6 or lora.r=8")
    path = key.split(".")
    if any(not part for part in path):
        raise ConfigError(f"override {item!r} has an empty key part; write nested keys as section.key=value")
    tp = _field_type(path)
    try:
        value = _parse_yaml(raw_value)
    except yaml.YAMLError:
        value = raw_value
    plain_str = tp is str or (_is_optional(tp) and str in typing.get_args(tp))
    if plain_str and value is not None and not isinstance(value, str):
        value = raw_value  # e.g. system_prompt=Answer: yes — a string, not a mapping
    return path, value


def _nest(path: list[str], value: Any) -> dict:
    for part in reversed(path):
        value = {part: value}
    return value


def _merge(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def load_config(path: str | os.PathLike | None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a YAML file (or nothing, if `path` is None), apply `key=value` overrides, return a validated config.

    Overrides are applied in order, after the file; nested sections merge key by key.
    """
    raw: dict = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {str(path)!r} not found; pass the path of a YAML file such as configs/stage4.yaml")
        try:
            loaded = _parse_yaml(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of option: value, got {type(loaded).__name__}")
        _check_keys(loaded, TrainConfig, "", where=f" in {path}")
        raw = loaded
    if isinstance(overrides, str):
        overrides = [overrides]
    for item in overrides:
        key_path, value = _parse_override(item)
        update = _nest(key_path, value)
        _check_keys(update, TrainConfig, "", where=f" in override {item!r}")
        _merge(raw, update)
    return TrainConfig(**raw)


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain dict of every option (nested sections as dicts), as `save_config` writes it."""
    return dataclasses.asdict(cfg)


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """Write the full config as YAML; `load_config(path)` gives it back. Holds no secret (see JudgeConfig)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    header = "# Full omni-grpo training config, written by omni_grpo.config.save_config.\n"
    body = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True, width=120)
    target.write_text(header + body, encoding="utf-8")


# --------------------------------------------------------------------------------------------- path checks


def effective_reward_kwargs(cfg: TrainConfig) -> dict:
    """`reward_kwargs` with the top-level `judge` section handed to `people_focus` when it is enabled.

    The judge is configured in one place (`judge:`); the reward receives its settings (never the key
    itself, only `api_key_env`, the name of the variable read at call time).
    """
    out = {name: dict(opts) for name, opts in (cfg.reward_kwargs or {}).items()}
    if cfg.judge.enabled and "people_focus" in cfg.reward_funcs:
        j = cfg.judge
        out.setdefault("people_focus", {})["judge"] = {
            "url": j.url, "model": j.model, "api_key_env": j.api_key_env or None, "timeout_s": j.timeout_s,
            "batch_size": j.batch_size, "concurrency": j.concurrency}
    return out


def check_paths(cfg: TrainConfig, *, for_training: bool = True) -> None:
    """Check the model and data directories before any model is loaded; ConfigError says what to fix.

    With `for_training`, `data` must list at least one shard directory. Every shard directory must hold the
    `manifest.json` that `python -m preprocess` writes last; with `use_audio_in_video`, a shard whose manifest
    counts no clip with audio is rejected.
    """
    model_dir = Path(cfg.model_name_or_path)
    if not (model_dir / "config.json").is_file():
        what = "has no config.json" if model_dir.is_dir() else "not found"
        raise ConfigError(
            f"model_name_or_path={cfg.model_name_or_path!r} {what}; pass model_name_or_path=DIR "
            "(a Qwen2.5-Omni checkpoint directory containing config.json)"
        )
    if for_training and not cfg.data:
        raise ConfigError("no training data; pass data=[DIR, ...] with shard directories written by python -m preprocess")
    for key, dirs in (("data", cfg.data),):
        for shard_dir in dirs:
            _check_shard_dir(key, Path(shard_dir), cfg.use_audio_in_video)
    resume = cfg.resume_from_checkpoint
    if resume not in (None, "latest") and not Path(resume).is_dir():
        raise ConfigError(
            f"resume_from_checkpoint={resume!r} is not a directory; pass a checkpoint directory, latest, or null"
        )


def _check_shard_dir(key: str, shard_dir: Path, use_audio_in_video: bool) -> None:
    if not shard_dir.is_dir():
        raise ConfigError(
            f"{key} directory {str(shard_dir)!r} not found; build it with python -m preprocess or fix {key}=[...]"
        )
    manifest_path = shard_dir / "manifest.json"
    if not manifest_path.is_file():
        raise ConfigError(
            f"{key} directory {str(shard_dir)!r} has no manifest.json, so python -m preprocess did not finish "
            "writing it; re-run preprocess for this directory"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{manifest_path} cannot be read ({exc}); re-run python -m preprocess for it") from None
    counts = manifest.get("counts", {}) if isinstance(manifest, dict) else {}
    if counts.get("written") == 0:
        raise ConfigError(f"{key} directory {str(shard_dir)!r} holds no samples (counts.written = 0); check the preprocess failures.jsonl")
    if use_audio_in_video and counts.get("with_audio") == 0:
        raise ConfigError(
            f"{key} directory {str(shard_dir)!r} has no clip with audio (counts.with_audio = 0) but "
            "use_audio_in_video=true; re-run python -m preprocess on clips with audio, or set use_audio_in_video=false"
        )


# ------------------------------------------------------------------------------------------- documentation

_LONG_DEFAULT = 60  # longer string defaults are printed after the tables

_SECTION_TITLES = {
    "model_name_or_path": "Model",
    "data": "Data",
    "num_generations": "Rollout",
    "beta": "Algorithm",
    "learning_rate": "Optimiser",
    "reward_funcs": "Rewards",
    "seed": "Run",
}


def _format_default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if f.name == "model_name_or_path":
        return "required"
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str) and len(value) > _LONG_DEFAULT:
        return "see below"
    elif isinstance(value, str):
        text = value if value else '""'
    elif isinstance(value, list):
        text = "[" + ", ".join(str(v) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{}" if not value else json.dumps(value)
    else:
        text = repr(value)
    return f"`{text}`"


def _row(f: dataclasses.Field, prefix: str) -> str:
    meaning = f.metadata["help"]
    if "choices" in f.metadata:
        meaning += " One of: " + ", ".join(f"`{c}`" for c in f.metadata["choices"]) + "."
    return f"| `{prefix}{f.name}` | {_format_default(f)} | {meaning} |".replace("\n", " ")


def reference_markdown() -> str:
    """The configuration reference as Markdown tables, one per section, generated from the help strings."""
    lines = [
        "# Configuration reference",
        "",
        "Every option of `omni_grpo.config.TrainConfig`. Set options in a YAML file or on the command line as",
        "`key=value` (values are YAML: `true`, `1e-6`, `[a, b]`, `null`; nested options take dots: `lora.r=8`).",
        "A misspelled key is an error. Counting: each prompt yields `num_generations` (G) completions, one row",
        "each; a micro-step on one device holds `per_device_prompts × G` rows; an optimizer step is",
        "`gradient_accumulation_steps` micro-steps on every device.",
        "",
        "Generated from the help strings by `python -m omni_grpo.config > docs/config_reference.md`;",
        "a test fails when this file is out of date.",
    ]
    hints = _hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SECTION_TITLES:
            lines += ["", f"## {_SECTION_TITLES[f.name]}", "", "| Option | Default | Meaning |", "|---|---|---|"]
        section = hints[f.name]
        if dataclasses.is_dataclass(section):
            lines.extend(_row(sub, f"{f.name}.") for sub in dataclasses.fields(section))
        else:
            lines.append(_row(f, ""))
    for f in dataclasses.fields(TrainConfig):
        if isinstance(f.default, str) and len(f.default) > _LONG_DEFAULT:
            lines += ["", f"## Default `{f.name}`", "", "One line, wrapped here for reading:", "",
                      "```text", *textwrap.wrap(f.default, 100), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
