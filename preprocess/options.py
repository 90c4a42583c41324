"""What a preprocessing run is asked to do: ``BuildOptions`` (everything ``python -m preprocess`` accepts) and
their checks, all made before any file is read: values in range, pairs that contradict each other or
qwen-omni-utils' defaults, a prompt budget that can hold a prompt at all (``text_counter``), and
``content_options``, the options that change what a shard holds (a resumed run must match them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import shards as fmt
from .benchmarks import BENCHMARKS
from .budget import DEFAULT_FAMILY, DEFAULT_MAX_PROMPT_TOKENS, PIXEL_GRID, TextCounter, pixel_grid
from .media import VideoOptions


class PreprocessError(Exception):
    """The run cannot start or continue (bad arguments, unreadable source, a conflicting output folder)."""


@dataclass
class BuildOptions:
    """Everything ``python -m preprocess`` accepts. ``workers=0`` decodes in this process (for debugging)."""

    source: str
    output: Path
    root: Path | None = None
    split: str = "train"
    manifest: Path | None = None
    video: VideoOptions = field(default_factory=VideoOptions)
    jpeg_quality: int = 90
    workers: int | None = None
    shard_size: int = 32
    num_shards: int = 1
    shard_index: int = 0
    overwrite: bool = False
    require_audio: bool = False
    progress: bool = True
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
    tokenizer: Path | None = None
    system_prompt: str | None = None
    answer_instructions: dict | None = None  # the training config's answer_instructions (problem type -> text)
    family: str = DEFAULT_FAMILY  # the model family trained on the shards: its pixel grid and token counts

    def __post_init__(self):
        if self.tokenizer is not None:
            self.tokenizer = Path(self.tokenizer)

    def prompt_system(self) -> str:
        """The system prompt counted in the budget: the one training builds its prompts with (the default of
        `TrainConfig.system_prompt`, which `configs/stage4.yaml` keeps) unless given."""
        if self.system_prompt is not None:
            return self.system_prompt
        from omni_grpo.config.schema import DEFAULT_SYSTEM_PROMPT

        return DEFAULT_SYSTEM_PROMPT

    def validate(self) -> None:
        if self.source not in ("siq2", "jsonl", *BENCHMARKS):
            raise PreprocessError(f"--source must be one of siq2, jsonl, {', '.join(BENCHMARKS)}; got {self.source!r}")
        if self.source == "siq2" and self.root is None:
            raise PreprocessError("--source siq2 needs --root DIR (the folder holding qa/ and video/)")
        if self.source in BENCHMARKS and self.root is None:
            raise PreprocessError(f"--source {self.source} needs --root DIR:\n{BENCHMARKS[self.source].layout}")
        if self.source == "jsonl" and self.manifest is None:
            raise PreprocessError("--source jsonl needs --manifest FILE")
        from omni_grpo.rewards.instructions import check_instructions

        try:
            check_instructions(self.answer_instructions)
        except ValueError as exc:
            raise PreprocessError(f"--answer-instructions: {exc}") from None
        v = self.video
        if not v.fps > 0:
            raise PreprocessError(f"--fps must be positive, got {v.fps}")
        for name in ("min_pixels", "max_pixels", "total_pixels", "min_frames", "max_frames"):
            value = getattr(v, name)
            if value is not None and not value > 0:
                raise PreprocessError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.family not in PIXEL_GRID:
            raise PreprocessError(
                f"--family must be one of {', '.join(PIXEL_GRID)} (the training config's "
                f"model_family), got {self.family!r}"
            )
        _check_pairs(v, pixel_grid(self.family))
        if self.max_prompt_tokens < 0:
            raise PreprocessError(f"--max-prompt-tokens must be 0 (no budget) or more, got {self.max_prompt_tokens}")
        if self.tokenizer is not None and not (self.tokenizer / "tokenizer_config.json").is_file():
            raise PreprocessError(
                f"--tokenizer {self.tokenizer} has no tokenizer_config.json; pass the model "
                "(or processor) folder of the model you will train"
            )
        if not 90 <= self.jpeg_quality <= 100:
            raise PreprocessError(f"--jpeg-quality must be 90-100, got {self.jpeg_quality}")
        if self.workers is not None and self.workers < 0:
            raise PreprocessError(f"--workers must be 0 or more, got {self.workers}")
        if self.shard_size < 1:
            raise PreprocessError(f"--shard-size must be at least 1, got {self.shard_size}")
        if self.num_shards < 1:
            raise PreprocessError(f"--num-shards must be at least 1, got {self.num_shards}")
        if not 0 <= self.shard_index < self.num_shards:
            raise PreprocessError(f"--shard-index must be in 0..{self.num_shards - 1}, got {self.shard_index}")
        if self.output.exists() and not self.output.is_dir():
            raise PreprocessError(f"--output {self.output} exists and is not a folder")


def _check_pairs(v: VideoOptions, grid: int) -> None:
    """Options that contradict each other or qwen-omni-utils' defaults: one error before any file is read."""
    from .media import qwen_defaults

    defaults = qwen_defaults()

    def value(name):
        given = getattr(v, name)
        return (
            (given, f"--{name.replace('_', '-')} {given:g}")
            if given is not None
            else (defaults[name], f"the default --{name.replace('_', '-')} {defaults[name]:g}")
        )

    for low, high, fix in (
        ("min_pixels", "max_pixels", "pass a --min-pixels no larger than --max-pixels"),
        ("min_frames", "max_frames", "pass a --min-frames no larger than --max-frames"),
        ("min_pixels", "total_pixels", "lower --min-pixels or raise --total-pixels"),
    ):
        (lo, lo_text), (hi, hi_text) = value(low), value(high)
        if (getattr(v, low) is not None or getattr(v, high) is not None) and lo > hi:
            raise PreprocessError(f"{lo_text} is larger than {hi_text}: no frame could be sampled; {fix}")
    if v.max_pixels is not None and v.max_pixels < grid * grid:
        raise PreprocessError(
            f"--max-pixels {v.max_pixels} is smaller than one {grid}x{grid} patch "
            f"({grid * grid} pixels), the smallest frame the model takes"
        )


def content_options(options: BuildOptions) -> dict:
    """The options that change what a shard holds (not where or how fast it is made)."""
    split_counts = options.source == "siq2" or getattr(BENCHMARKS.get(options.source), "uses_split", False)
    return {
        "format_version": fmt.FORMAT_VERSION,
        "source": options.source,
        "split": options.split if split_counts else None,
        **options.video.to_dict(),
        "jpeg_quality": options.jpeg_quality,
        "require_audio": options.require_audio,
        "shard_size": options.shard_size,
        "max_prompt_tokens": options.max_prompt_tokens,
        "tokenizer": str(options.tokenizer) if options.tokenizer is not None else None,
        "system_prompt": options.prompt_system(),
        "family": options.family,
        **({"answer_instructions": options.answer_instructions} if options.answer_instructions else {}),
    }


def text_counter(options: BuildOptions) -> TextCounter:
    """The prompt text counter; refuses a budget that not even the system prompt and the fewest frames fit."""
    try:
        counter = TextCounter(options.prompt_system(), options.tokenizer)
    except (OSError, ValueError) as exc:
        raise PreprocessError(f"--tokenizer {options.tokenizer} cannot be loaded: {exc}") from None
    least = counter.count("") + 2  # no question, 4 frames of one 28x28 cell
    if 0 < options.max_prompt_tokens < least:
        raise PreprocessError(
            f"--max-prompt-tokens {options.max_prompt_tokens} cannot hold any prompt: the chat "
            f"template and system prompt alone take {least - 2} tokens; raise it (it should "
            "equal the training config's max_prompt_length, 2048 in configs/stage4.yaml)"
        )
    return counter


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
