"""The training configuration's schema: documented dataclasses with validation, and nothing heavy.

Every option is a dataclass field whose `metadata["help"]` says what it does (TRL style); fields with a
fixed set of values list them in `metadata["choices"]`. `__post_init__` converts values to the declared
types (`convert.py`) and rejects bad values with a `ConfigError` that says what to do. Building a config
imports neither torch nor any reward module: the commands resolve reward names after loading
(`omni_grpo.rewards.check_reward_names`).

Counting: a *prompt* is one sample (video + question); each prompt yields `num_generations` (G)
completions, one *row* each. One micro-step on one device handles `per_device_prompts` prompts, i.e.
`per_device_prompts × G` rows; an optimizer step is `gradient_accumulation_steps` micro-steps on every
device, so it sees `per_device_prompts × gradient_accumulation_steps × world_size` prompts.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from omni_grpo.config.convert import ConfigError, _coerce_fields, _did_you_mean, _require

__all__ = ["ConfigError", "DEFAULT_SYSTEM_PROMPT", "JudgeConfig", "LoraConfig", "TrainConfig"]

EVAL_ABLATIONS = (
    "video",
    "audio",
    "media",
    "text",
)  # = omni_grpo.evaluate.ABLATIONS (a config builds without evaluate)
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant who watches a video and listens to its audio to answer a question about "
    "the people in it. First describe the context that matters for the question: what people do, say and "
    "how they sound, inside <context> </context>. Then reason step by step about their emotions, intentions "
    "and relationships inside <think> </think>. Finally give only the answer inside <answer> </answer>. "
    "Reply exactly as <context>...</context><think>...</think><answer>...</answer>."
)


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class LoraConfig:
    """LoRA adapters on the language model (the vision and audio towers never get adapters)."""

    _section: ClassVar[str] = "lora"

    enabled: bool = field(default=False, metadata=_help("Train LoRA adapters instead of all language-model weights."))
    r: int = field(default=16, metadata=_help("LoRA rank."))
    alpha: int = field(default=32, metadata=_help("LoRA scaling numerator (scale = alpha / r)."))
    dropout: float = field(
        default=0.0,
        metadata=_help("Dropout on the LoRA input, in [0, 1). Above 0, KL(π‖π_ref) is no longer exactly 0 at step 0."),
    )
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
    """An OpenAI-compatible LLM judge endpoint (`rewards.judge.JudgeClient` calls it). Holds the NAME of the
    variable with the API key, never the key. The one judge config: the `judge:` section of a training config,
    and what `people_focus`'s `judge` option takes (as this class or a mapping of its fields)."""

    _section: ClassVar[str] = "judge"

    enabled: bool = field(default=False, metadata=_help("Call the judge for rewards that use one."))
    url: str = field(
        default="", metadata=_help("Chat-completions URL, e.g. `http://127.0.0.1:8000/v1/chat/completions`.")
    )
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
    temperature: float = field(default=0.0, metadata=_help("Sampling temperature sent to the judge, in [0, 2]."))
    max_cache_entries: int = field(
        default=100_000, metadata=_help("Ratings kept in memory (keyed by the rated text; oldest evicted first).")
    )

    def __post_init__(self) -> None:
        if self.api_key_env is None:  # a mapping may say null for "no key"
            self.api_key_env = ""
        _coerce_fields(self)
        if self.enabled:
            _require(
                self.url.startswith(("http://", "https://")),
                "judge.enabled=true needs judge.url, the http(s) URL of a chat-completions endpoint; "
                "set judge.url=... or judge.enabled=false",
            )
            _require(
                bool(self.model.strip()), "judge.enabled=true needs judge.model=NAME (the model the endpoint serves)"
            )
        elif self.url:  # a client built from settings (people_focus's `judge` option) is not "enabled"
            _require(
                self.url.startswith(("http://", "https://")),
                "judge.url must be the http(s) URL of a chat-completions endpoint",
            )
        _require(
            self.api_key_env == "" or re.fullmatch(r"[A-Z_][A-Z0-9_]*", self.api_key_env) is not None,
            "judge.api_key_env must be the NAME of an environment variable in capitals (e.g. JUDGE_API_KEY) that "
            "holds the key, never the key itself; export JUDGE_API_KEY=... and set judge.api_key_env=JUDGE_API_KEY",
        )
        _require(self.timeout_s > 0, f"judge.timeout_s={self.timeout_s} must be > 0 seconds")
        for name in ("batch_size", "concurrency", "max_cache_entries"):
            _require(getattr(self, name) >= 1, f"judge.{name}={getattr(self, name)} must be >= 1")
        _require(0 <= self.temperature <= 2, f"judge.temperature={self.temperature} must be in [0, 2]")

    @classmethod
    def from_dict(cls, settings) -> "JudgeConfig":
        """From a mapping of its fields (`people_focus`'s `judge` option); `url` and `model` are required."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(valid))
        if unknown:
            raise ConfigError(f"judge settings: unknown key(s) {unknown}; valid keys are {valid}")
        missing = [k for k in ("url", "model") if k not in settings]
        if missing:
            raise ConfigError(f"judge settings: missing {missing}; 'url' and 'model' are required")
        return cls(**settings)

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
            "Required. Directory with config.json: a Qwen2.5-Omni or Qwen3-Omni checkpoint, full or thinker-only. "
            "Nothing is downloaded."
        ),
    )
    model_family: str = field(
        default="auto",
        metadata=_help(
            "Model module to use; `auto` reads `model_type` from config.json.",
            choices=("auto", "qwen2_5_omni", "qwen3_omni"),
        ),
    )
    use_audio_in_video: bool = field(
        default=True,
        metadata=_help(
            "Feed each clip's soundtrack as audio interleaved with its frames (TMRoPE); false: after the video as "
            "its own audio item. The default of every sample; a sample's own `use_audio_in_video` (jsonl "
            "manifest) overrides it; silent videos, audio clips and images have nothing to interleave. The "
            "processor, generation and every log-prob pass receive each row's value. Needs shards with audio."
        ),
    )
    freeze_vision_tower: bool = field(
        default=True, metadata=_help("Keep the vision encoder frozen (run once per prompt per step).")
    )
    freeze_audio_tower: bool = field(
        default=True, metadata=_help("Keep the audio encoder frozen (run once per prompt per step).")
    )
    gradient_checkpointing: bool = field(
        default=False, metadata=_help("Recompute activations in the backward pass to save memory.")
    )
    bf16: bool = field(
        default=False,
        metadata=_help(
            "Train in bfloat16 (needs hardware support) with float32 master weights for the optimizer "
            "(DeepSpeed's own, or ours without DeepSpeed); false = float32."
        ),
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata=_help(
            "Attention kernel passed to transformers.",
            choices=("sdpa", "eager", "flash_attention_2", "flash_attention_3"),
        ),
    )
    system_prompt: str = field(
        default=DEFAULT_SYSTEM_PROMPT,
        metadata=_help(
            "System message of every prompt; the default asks for `<context>`, `<think>`, `<answer>` sections."
        ),
    )
    answer_instructions: dict[str, str] = field(
        default_factory=dict,
        metadata=_help(
            "Replace the sentence that ends each question's prompt for a problem type: `{matcher: text}` with "
            "matcher one of multiple_choice, multi_label, yes_no, numeric, free_text ('' for none); e.g. "
            "`answer_instructions.yes_no='Reply Yes or No.'`. The defaults are in docs/rewards.md; pass the "
            "same to preprocess (--answer-instructions) so its prompt budget counts the same text."
        ),
    )
    lora: LoraConfig = field(default_factory=LoraConfig, metadata=_help("LoRA settings."))

    # ------------------------------------------------------------------------------------------------- data
    data: list[str] = field(
        default_factory=list,
        metadata=_help(
            "Training shard directories written by `bash run_scripts/python.sh -m preprocess` (each has manifest.json)."
        ),
    )
    dataset_order: str = field(
        default="shuffle",
        metadata=_help(
            "Prompt order each epoch: `shuffle` (seeded by `seed`) or `sequential`.", choices=("shuffle", "sequential")
        ),
    )
    skip_corrupt_shards: bool = field(
        default=False,
        metadata=_help(
            "Skip (with a warning) a shard file or sample that cannot be read or decoded instead of stopping."
        ),
    )
    eval_data: list[str] = field(
        default_factory=list,
        metadata=_help(
            "Held-out shard directories evaluated during training (greedy, every `eval_steps`); "
            "see `omni_grpo.eval_loop`."
        ),
    )
    eval_steps: int = field(
        default=0,
        metadata=_help("Evaluate the policy on `eval_data` every N optimizer steps and at the end; 0 = off."),
    )
    eval_group_by: list[str] = field(
        default_factory=lambda: ["problem_type"],
        metadata=_help(
            "Sample fields whose values get their own `eval/<value>/accuracy` (a field no eval sample has is skipped)."
        ),
    )
    eval_ablations: list[str] = field(
        default_factory=list,
        metadata=_help(
            "Also evaluate with media blanked, each logged as `eval/ablate_<name>/accuracy`: `video` (every "
            "frame one grey), `audio` (silence), `media` (both), `text` (no media tokens at all); shows "
            "whether the gains depend on the media (as `python -m omni_grpo.evaluate --ablate`)."
        ),
    )
    skip_long_prompts: bool = field(
        default=False,
        metadata=_help(
            "Leave out (counted, logged at startup) samples whose prompt is longer than "
            "`max_prompt_length` instead of stopping before training."
        ),
    )
    dataloader_num_workers: int = field(
        default=2, metadata=_help("Data-loading worker processes per device; 0 = load in the main process.")
    )
    dataloader_prefetch_factor: int = field(
        default=2, metadata=_help("Batches each worker loads ahead (used when workers > 0).")
    )

    # ---------------------------------------------------------------------------------------------- rollout
    num_generations: int = field(
        default=8, metadata=_help("G: completions sampled per prompt; advantages compare them. At least 2.")
    )
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
    skip_zero_advantage_rows: bool = field(
        default=True,
        metadata=_help(
            "In the update, leave out the rows whose advantage is exactly 0 when they contribute exactly nothing "
            "(β = 0 in that step and entropy_coef = 0; with β > 0 their KL term still trains, so they run). "
            "Same gradient to float rounding: the loss normalisers still count every row. Counted in "
            "actor/skipped_rows."
        ),
    )
    gradient_accumulation_steps: int = field(
        default=1,
        metadata=_help("Micro-steps per optimizer step (leave it `auto` in the DeepSpeed JSON)."),
    )
    dynamic_sampling: bool = field(
        default=False,
        metadata=_help(
            "DAPO's dynamic sampling (Yu et al. 2025, §3.2): leave out the groups whose G rewards are all equal "
            "(advantage 0) and draw more rollout rounds of per_device_prompts prompts until every rank holds "
            "per_device_prompts × gradient_accumulation_steps groups with a reward spread (the ranks decide "
            "together). Spread groups beyond that are dropped; at the cap the remainder is filled with the "
            "step's constant groups (advantage 0). Needs num_generations divisible by the update micro-batch. "
            "Counted in rollout/dynamic_sampling_*."
        ),
    )
    dynamic_sampling_max_extra_rounds: int = field(
        default=8,
        metadata=_help(
            "With dynamic_sampling: at most this many rollout rounds beyond the gradient_accumulation_steps "
            "ones per optimizer step; 0 draws none (the step then trains on the same groups as without "
            "dynamic_sampling)."
        ),
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
    temperature_final: float | None = field(
        default=None, metadata=_help("Temperature at the end of a linear schedule.")
    )
    temperature_schedule_fraction: float = field(
        default=1.0, metadata=_help("Fraction of training over which a linear temperature schedule ramps, in (0, 1].")
    )
    top_p: float = field(default=1.0, metadata=_help("Nucleus sampling mass in (0, 1]; 1 = off."))
    top_k: int = field(default=0, metadata=_help("Sample from the k most likely tokens; 0 = off."))
    repetition_penalty: float = field(default=1.0, metadata=_help("Generation repetition penalty; 1 = off."))

    # -------------------------------------------------------------------------------------------- algorithm
    beta: float = field(
        default=0.04,
        metadata=_help(
            "KL coefficient β (the start value when scheduled); 0 with a constant schedule = no reference model."
        ),
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
        metadata=_help(
            "Per-token KL estimator: `k2` ½ squared log-ratio (gradient of KL(π‖ref)), `k3` Schulman's "
            "(GRPO; gradient of KL(ref‖π)); `k1` log-ratio has zero expected gradient and is refused "
            "as a loss term.",
            choices=("k1", "k2", "k3"),
        ),
    )
    clip_low: float = field(default=0.2, metadata=_help("PPO ratio clip below: 1 - clip_low, in (0, 1)."))
    clip_high: float = field(
        default=0.2, metadata=_help("PPO ratio clip above: 1 + clip_high (DAPO's clip-higher uses 0.28).")
    )
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
        metadata=_help(
            "μ: optimizer steps over each step's rollouts (> 1: ratios against the log-probs from before the "
            "first, clipping acts from the second); the LR schedule counts all of them."
        ),
    )
    entropy_coef: float = field(
        default=0.0,
        metadata=_help(
            "Weight of the entropy term, either sign: the loss gets −entropy_coef·H per token (verl's "
            "entropy_coeff). > 0 raises the policy's entropy (exploration; open-ended answers), < 0 "
            "lowers it (sharper answers: grounding, counting, one letter); 0 = off."
        ),
    )
    ref_sync_steps: int = field(
        default=0,
        metadata=_help(
            "Every N steps (counted as save_steps counts them; after the step's μ updates) the reference "
            "follows the policy: reference ← α·policy + (1 − α)·reference, α = ref_sync_alpha (TR-DPO, "
            "arXiv:2404.09656; TRL's ref_model_sync_steps; α = 1 is Kimi k1.5's reference reset, "
            "arXiv:2501.12599). 0 = off: the initial policy throughout, as in the paper. "
            "Needs β > 0 at some step. Refused with LoRA: there the reference is the base model with the "
            "adapter off, and following the policy would change the frozen base, which checkpoints do not "
            "hold and the saved adapter is relative to. Checkpoints then hold the reference's weights."
        ),
    )
    ref_sync_alpha: float = field(
        default=0.6,
        metadata=_help(
            "α of the reference sync, in (0, 1]: 1 copies the policy; TRL's ref_model_mixup_alpha (its default 0.6)."
        ),
    )
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
        metadata=_help(
            "Fraction of optimizer steps of linear warmup, in [0, 1); applies to every lr_scheduler, "
            "`constant` included."
        ),
    )
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW β1, in [0, 1)."))
    adam_beta2: float = field(default=0.999, metadata=_help("AdamW β2, in [0, 1)."))
    adam_epsilon: float = field(default=1e-8, metadata=_help("AdamW ε, > 0."))
    max_steps: int = field(
        default=-1, metadata=_help("Optimizer steps to train; -1 = num_epochs passes over the data.")
    )
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
        metadata=_help(
            "Options per reward: `{name: {option: value}}`, e.g. `reward_kwargs.format.partial_credit=0.5`."
        ),
    )
    max_consecutive_reward_errors: int = field(
        default=3,
        metadata=_help("Stop when a reward fails on this many batches in a row (failures are counted and logged)."),
    )
    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata=_help("LLM judge settings."))

    # -------------------------------------------------------------------------------------------------- run
    seed: int = field(default=42, metadata=_help("Seed for data order, sampling and initialisation."))
    deepspeed: str | None = field(
        default=None,
        metadata=_help(
            "DeepSpeed JSON config (e.g. configs/deepspeed/zero3.json); null = the file `accelerate launch "
            "--deepspeed_config_file` names, else plain single-process PyTorch."
        ),
    )
    output_dir: str = field(
        default="outputs/run", metadata=_help("Where checkpoints, TensorBoard logs and the saved config go.")
    )
    logging_steps: int = field(default=1, metadata=_help("Log scalars every N optimizer steps."))
    log_completions: int = field(
        default=4, metadata=_help("Sample completions per logging step in the TensorBoard table; 0 = none.")
    )
    save_steps: int = field(
        default=50, metadata=_help("Save a checkpoint every N optimizer steps (and at the end); 0 = only at the end.")
    )
    save_total_limit: int = field(default=2, metadata=_help("Keep the newest N checkpoints; 0 = keep all."))
    resume_from_checkpoint: str | None = field(
        default="auto",
        metadata=_help(
            "`auto`: resume output_dir's newest checkpoint if this config wrote it, refuse a folder "
            "holding a different run, else start fresh; `latest`: the newest checkpoint whatever its "
            "config; a checkpoint directory; null: never resume (refuses a folder with checkpoints). "
            "See omni_grpo/run_control.py."
        ),
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata=_help(
            "Start at step 0 even if output_dir holds a run: its checkpoints/, runs/ and config.yaml "
            "are first moved to output_dir/overwritten-<UTC time>/."
        ),
    )

    def __post_init__(self) -> None:
        _coerce_fields(self)
        self._validate_model_and_data()
        self._validate_rollout()
        self._validate_algorithm()
        self._validate_optimiser()
        self._validate_run()
        self._validate_reward_settings()

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
    def backward_calls_per_step(self) -> int:
        """Backward calls per optimizer step (DeepSpeed's accumulation count): update micro-batches per
        micro-step × gradient_accumulation_steps. μ does not enter: each of the μ passes over the step's rows
        ends with its own optimizer step."""
        return self.gradient_accumulation_steps * (self.rows_per_micro_step // self.update_micro_batch_size)

    @property
    def uses_reference_model(self) -> bool:
        """Whether any step has β > 0, so reference log-probs are needed."""
        return self.beta > 0 or (self.beta_schedule == "linear" and (self.beta_final or 0.0) > 0)

    def _validate_model_and_data(self) -> None:
        _require(
            bool(self.model_name_or_path),
            "model_name_or_path is required; pass model_name_or_path=DIR (a Qwen2.5-Omni or Qwen3-Omni checkpoint "
            "directory)",
        )
        _require(
            self.dataloader_num_workers >= 0,
            f"dataloader_num_workers={self.dataloader_num_workers} must be >= 0 (0 loads in the main process)",
        )
        _require(
            self.dataloader_prefetch_factor >= 1,
            f"dataloader_prefetch_factor={self.dataloader_prefetch_factor} must be >= 1",
        )
        _require(self.eval_steps >= 0, f"eval_steps={self.eval_steps} must be >= 0 (0 turns evaluation off)")
        bad = [name for name in self.eval_ablations if name not in EVAL_ABLATIONS]
        _require(not bad, f"eval_ablations {bad} unknown; use some of {list(EVAL_ABLATIONS)}")
        _require(
            self.eval_steps == 0 or bool(self.eval_data),
            f"eval_steps={self.eval_steps} needs held-out data; pass eval_data=[DIR, ...] (shard directories written "
            "by python -m preprocess) or set eval_steps=0",
        )

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
        _require(
            self.dynamic_sampling_max_extra_rounds >= 0,
            f"dynamic_sampling_max_extra_rounds={self.dynamic_sampling_max_extra_rounds} must be >= 0",
        )
        _require(
            not self.dynamic_sampling or g % self.update_micro_batch_size == 0,
            f"dynamic_sampling packs the kept groups of several rollout rounds into one step, so an update "
            f"micro-batch must not span groups: its {self.update_micro_batch_size} rows must divide "
            f"num_generations={g}; set micro_batch_size to a divisor of {g} (e.g. micro_batch_size={g}) or "
            "per_device_prompts=1",
        )
        for name in ("max_prompt_length", "max_completion_length"):
            _require(getattr(self, name) > 0, f"{name}={getattr(self, name)} must be > 0 tokens")
        self._validate_schedule(
            "temperature",
            self.temperature,
            self.temperature_final,
            self.temperature_schedule,
            self.temperature_schedule_fraction,
            strictly_positive=True,
        )
        _require(0 < self.top_p <= 1, f"top_p={self.top_p} must be in (0, 1]; 1 turns nucleus sampling off")
        _require(self.top_k >= 0, f"top_k={self.top_k} must be >= 0; 0 turns top-k sampling off")
        _require(
            self.repetition_penalty > 0, f"repetition_penalty={self.repetition_penalty} must be > 0; 1 turns it off"
        )

    def _validate_algorithm(self) -> None:
        self._validate_schedule(
            "beta", self.beta, self.beta_final, self.beta_schedule, self.beta_schedule_fraction, strictly_positive=False
        )
        _require(0 < self.clip_low < 1, f"clip_low={self.clip_low} must be in (0, 1); GRPO uses 0.2")
        _require(self.clip_high > 0, f"clip_high={self.clip_high} must be > 0; GRPO uses 0.2, DAPO 0.28")
        _require(
            self.num_iterations >= 1, f"num_iterations={self.num_iterations} must be >= 1 (1 = one update per rollout)"
        )
        _require(
            self.kl_estimator != "k1" or not self.uses_reference_model,
            "kl_estimator=k1 as a loss term has zero expected gradient (E_π[∇ log π] = 0): it adds noise, not "
            "regularisation; use kl_estimator=k3 (GRPO's; its gradient is that of KL(π_ref‖π)) or k2 (the "
            "gradient of KL(π‖π_ref)), or set beta=0",
        )
        self._validate_reference_sync()
        _require(self.max_grad_norm >= 0, f"max_grad_norm={self.max_grad_norm} must be >= 0; 0 turns clipping off")
        _require(
            self.max_consecutive_nonfinite >= 1,
            f"max_consecutive_nonfinite={self.max_consecutive_nonfinite} must be >= 1",
        )

    def _validate_reference_sync(self) -> None:
        steps = self.ref_sync_steps
        _require(steps >= 0, f"ref_sync_steps={steps} must be >= 0 (0 turns the reference sync off)")
        _require(
            0 < self.ref_sync_alpha <= 1,
            f"ref_sync_alpha={self.ref_sync_alpha} must be in (0, 1]; 1 copies the policy into the reference",
        )
        if steps == 0:
            return
        _require(
            self.uses_reference_model,
            f"ref_sync_steps={steps} needs a reference model, which only β > 0 uses; set beta > 0 or ref_sync_steps=0",
        )
        _require(
            not self.lora.enabled,
            f"ref_sync_steps={steps} with lora.enabled: the reference is the base model with the adapter off, "
            "which cannot follow the policy without changing the frozen base; set lora.enabled=false or "
            "ref_sync_steps=0",
        )

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
        _require(
            self.learning_rate > 0, f"learning_rate={self.learning_rate} must be > 0; GRPO fine-tuning uses about 1e-6"
        )
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
        _require(
            self.resume_from_checkpoint != "", "resume_from_checkpoint is empty; use auto, latest, null or a directory"
        )

    def _validate_reward_settings(self) -> None:
        names = self.reward_funcs
        _require(len(names) > 0, "reward_funcs is empty; list at least one reward, e.g. [format, accuracy]")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        _require(
            not duplicates, f"reward_funcs lists {duplicates} more than once; list each once and use reward_weights"
        )
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
                f"{_did_you_mean(name, names)}; add it to reward_funcs, or drop the options: on the command line "
                "reward_kwargs=null clears the config's (reward_kwargs={} would merge nothing into them)",
            )
        _require(
            self.max_consecutive_reward_errors >= 1,
            f"max_consecutive_reward_errors={self.max_consecutive_reward_errors} must be >= 1",
        )
