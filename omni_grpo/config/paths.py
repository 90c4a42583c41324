"""Filesystem checks of a config before any model is loaded: the model directory, the shard directories
(finished by `python -m preprocess`, with audio when `use_audio_in_video`), the checkpoint to resume."""

from __future__ import annotations

import json
from pathlib import Path

from omni_grpo.config.convert import ConfigError
from omni_grpo.config.schema import TrainConfig

_PREPROCESS = "bash run_scripts/python.sh -m preprocess"  # the command as typed on a fresh clone (README)


def check_paths(cfg: TrainConfig, *, for_training: bool = True) -> None:
    """Check the model and data directories before any model is loaded; ConfigError says what to fix.

    With `for_training`, `data` must list at least one shard directory. Every shard directory (of `data` and of
    `eval_data`) must hold the `manifest.json` that `python -m preprocess` writes last; with
    `use_audio_in_video`, a shard whose manifest counts no clip with audio is rejected.
    """
    model_dir = Path(cfg.model_name_or_path)
    if not (model_dir / "config.json").is_file():
        what = "has no config.json" if model_dir.is_dir() else "not found"
        raise ConfigError(
            f"model_name_or_path={cfg.model_name_or_path!r} {what}; pass model_name_or_path=DIR "
            "(a Qwen2.5-Omni or Qwen3-Omni checkpoint directory containing config.json)"
        )
    if for_training and not cfg.data:
        raise ConfigError(f"no training data; pass data=[DIR, ...] with shard directories written by {_PREPROCESS}")
    for key, dirs in (("data", cfg.data), ("eval_data", cfg.eval_data)):
        for shard_dir in dirs:
            _check_shard_dir(key, Path(shard_dir), cfg.use_audio_in_video)
    resume = cfg.resume_from_checkpoint
    if resume not in (None, "auto", "latest", "none") and not Path(resume).is_dir():
        raise ConfigError(
            f"resume_from_checkpoint={resume!r} is not a directory; pass a checkpoint directory, auto, latest, or null"
        )


def _check_shard_dir(key: str, shard_dir: Path, use_audio_in_video: bool) -> None:
    if not shard_dir.is_dir():
        raise ConfigError(
            f"{key} directory {str(shard_dir)!r} not found; build it with {_PREPROCESS} --output {shard_dir} ... "
            f"or fix {key}=[...]"
        )
    manifest_path = shard_dir / "manifest.json"
    if not manifest_path.is_file():
        if any(shard_dir.glob("shard-*")) or any(shard_dir.glob(".*.partial")):
            raise ConfigError(
                f"{key} directory {str(shard_dir)!r} has no manifest.json, so preprocess did not finish writing it; "
                f"re-run {_PREPROCESS} --output {shard_dir} ... (it resumes)"
            )
        raise ConfigError(
            f"{key} directory {str(shard_dir)!r} holds no shards (no manifest.json); write them with "
            f"{_PREPROCESS} --output {shard_dir} ..."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{manifest_path} cannot be read ({exc}); re-run {_PREPROCESS} for it") from None
    counts = manifest.get("counts", {}) if isinstance(manifest, dict) else {}
    if counts.get("written") == 0:
        raise ConfigError(
            f"{key} directory {str(shard_dir)!r} holds no samples (counts.written = 0); "
            "check the preprocess failures.jsonl"
        )
    if use_audio_in_video and counts.get("with_audio") == 0:
        raise ConfigError(
            f"{key} directory {str(shard_dir)!r} has no clip with audio (counts.with_audio = 0) but "
            f"use_audio_in_video=true; re-run {_PREPROCESS} on clips with audio, or set use_audio_in_video=false"
        )
