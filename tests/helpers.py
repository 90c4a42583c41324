"""Helpers the tests share: the arguments of a tiny training run, synthetic shards, parameter snapshots and a
byte flip. Session-wide fixtures (tiny models, `tiny_shards`) are in conftest.py."""

from __future__ import annotations

from pathlib import Path

import torch

LENGTH = "tests.rewards_for_tests:length_reward"  # a reward that varies within a group (see rewards_for_tests)

# Every tiny run: G = 2, data read in the main process, a learning rate that moves a tiny model visibly.
TINY_RUN = dict(num_generations=2, max_prompt_length=4096, learning_rate=1e-3, dataloader_num_workers=0, seed=3)
# The command-line runs of the reliability and security tests: one prompt per micro-step, the data in order.
CLI_RUN = dict(TINY_RUN, per_device_prompts=1, max_completion_length=8, max_steps=2, dataset_order="sequential")


def _value(v) -> str:
    return f"[{', '.join(map(str, v))}]" if isinstance(v, (list, tuple)) else str(v)


def run_args(model_dir, data_dir, out, base: dict = TINY_RUN, **overrides) -> list[str]:
    """`key=value` arguments of a tiny run on `data_dir` writing to `out`: `base`, then `overrides`."""
    args = dict(model_name_or_path=model_dir, data=[data_dir], output_dir=out, **base)
    args.update(overrides)
    return [f"{k}={_value(v)}" for k, v in args.items()]


def tiny_config(model_dir, data_dir, out, base: dict = TINY_RUN, **overrides):
    """The validated config of `run_args(...)`."""
    from omni_grpo.config import load_config

    return load_config(None, run_args(model_dir, data_dir, out, base, **overrides))


def build_shards(root: Path, n_clips: int, seconds: float, max_pixels: int = 50176, seed: int = 0,
                 **options) -> Path:
    """Shards of a synthetic Social-IQ 2.0 dataset built in this process (`options`: more BuildOptions)."""
    from omni_grpo.synthetic import make_siq2_dataset
    from preprocess.build import BuildOptions, build
    from preprocess.media import VideoOptions

    make_siq2_dataset(root / "raw", n_clips=n_clips, seconds=seconds, seed=seed)
    build(BuildOptions(source="siq2", root=root / "raw", output=root / "shards", workers=0, progress=False,
                       video=VideoOptions(min_pixels=3136, max_pixels=max_pixels), **options))
    return root / "shards"


def snapshot(model, trainable_only: bool = False) -> dict:
    """A copy of the model's parameters (only the trainable ones with `trainable_only`)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad or not trainable_only}


def same_params(model, before: dict) -> bool:
    """Whether every parameter in `before` is unchanged."""
    return all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Corrupt one byte of a file (the middle one unless `offset`)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    path.write_bytes(bytes(data))
