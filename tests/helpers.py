"""Helpers the tests share: the arguments of a tiny training run, preprocessing in this process or as the
command, synthetic shards, multi-process launches, the README's commands, parameter snapshots and a byte flip.
Session-wide fixtures (tiny models, `tiny_shards`, `mixed_shards`) are in conftest.py."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import torch

from preprocess.media import VideoOptions

REPO = Path(__file__).resolve().parents[1]

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


# ------------------------------------------------------------------------------------------------ preprocess

SMALL_VIDEO = VideoOptions(min_pixels=28 * 28 * 4)  # no upscaling of the tiny synthetic clips: fast


def preprocess_here(output: Path, **options) -> dict:
    """`python -m preprocess` in this process: one decoder (workers=0), no progress bar, `SMALL_VIDEO` unless
    `video` is given; `source` is jsonl when a `manifest` is given, else siq2. `options`: more BuildOptions."""
    from preprocess.build import BuildOptions, build

    options.setdefault("source", "jsonl" if options.get("manifest") is not None else "siq2")
    options.setdefault("video", SMALL_VIDEO)
    return build(BuildOptions(output=output, workers=0, progress=False, **options))


def preprocess_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    """``python -m preprocess ARGS`` in a fresh process in ``cwd``, importing this checkout's package."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-m", "preprocess", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def run_preprocess(args: list[str], cwd=None) -> None:
    """``python -m preprocess ARGS`` with one worker and small frames; raises if it fails."""
    cmd = [sys.executable, "-m", "preprocess", *args, "--workers", "1", "--min-pixels", "3136", "--max-pixels", "50176"]
    subprocess.run(cmd, check=True, cwd=cwd, capture_output=True)


def build_shards(root: Path, n_clips: int, seconds: float, max_pixels: int = 50176, seed: int = 0, **options) -> Path:
    """Shards of a synthetic Social-IQ 2.0 dataset built in this process (`options`: more BuildOptions)."""
    from omni_grpo.synthetic import make_siq2_dataset
    from preprocess.build import BuildOptions, build
    from preprocess.media import VideoOptions

    make_siq2_dataset(root / "raw", n_clips=n_clips, seconds=seconds, seed=seed)
    build(
        BuildOptions(
            source="siq2",
            root=root / "raw",
            output=root / "shards",
            workers=0,
            progress=False,
            video=VideoOptions(min_pixels=3136, max_pixels=max_pixels),
            **options,
        )
    )
    return root / "shards"


# ------------------------------------------------------------------------------------- multi-process runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zero3_test_config(path: Path) -> Path:
    """zero3.json with nothing kept gathered, so a rank that skips a tower would really hang."""
    cfg = json.loads((REPO / "configs/deepspeed/zero3.json").read_text())
    cfg["zero_optimization"].update(
        stage3_max_reuse_distance=0,
        stage3_param_persistence_threshold=0,
        stage3_max_live_parameters=0,
        stage3_prefetch_bucket_size=0,
    )
    path.write_text(json.dumps(cfg))
    return path


def launch(
    tmp_path: Path,
    overrides: list[str],
    timeout: int = 420,
    entry: tuple[str, ...] = ("-m", "omni_grpo.train"),
    processes: int = 2,
) -> subprocess.CompletedProcess:
    """`entry` (`python -m omni_grpo.train` unless given) under `accelerate launch` on `processes` ranks, or run
    directly when 1 (one process, no DeepSpeed unless the overrides ask for it)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    launcher = [
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs/accelerate/zero3.yaml"),
        "--num_processes",
        str(processes),
        "--main_process_port",
        str(free_port()),
    ]
    cmd = [sys.executable, *(launcher if processes > 1 else []), *entry, *overrides]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def common(model_dir, shards, out, ds_config, steps=3):
    """The overrides of a tiny ZeRO-3 run: G = 2, one prompt per rank, data in order, a checkpoint every 2 steps."""
    return [
        f"model_name_or_path={model_dir}",
        f"data=[{shards}]",
        f"output_dir={out}",
        f"deepspeed={ds_config}",
        "num_generations=2",
        "per_device_prompts=1",
        "max_completion_length=10",
        "max_prompt_length=4096",
        f"max_steps={steps}",
        "learning_rate=1e-3",
        "dataloader_num_workers=0",
        "dataset_order=sequential",
        "save_steps=2",
        "save_total_limit=0",
        "seed=5",
        "reward_funcs=[format, tests.rewards_for_tests:length_reward]",
    ]


def scalars(out: Path, tag: str) -> list[float]:
    """Every value of a TensorBoard scalar of the run in `out`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from omni_grpo.logging import log_dir

    acc = EventAccumulator(str(log_dir(out)))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


# ----------------------------------------------------------------------------------------------- the rest


def readme_commands(first_screen: bool = False) -> list[str]:
    """Every `bash run_scripts/...` command in the README's bash blocks and inline code, continuation lines joined
    (with `first_screen`: the commands of the first bash block, in its first 30 lines)."""
    text = (REPO / "README.md").read_text()
    if first_screen:
        block = re.search(r"```bash\n(.*?)```", "\n".join(text.splitlines()[:30]), re.S).group(1)
        return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.split("  #")[0].strip() for b in blocks for line in b.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`((?:[A-Z_]+=\S+ )*bash run_scripts/[^`]+)`", text)
    return [line for line in lines if "bash run_scripts/" in line]


def real_ids(inputs, row: int) -> torch.Tensor:
    """Row `row`'s token ids without its padding."""
    return inputs.input_ids[row][inputs.attention_mask[row].bool()]


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
