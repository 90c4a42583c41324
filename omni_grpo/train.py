"""python -m omni_grpo.train --config FILE [key=value ...]

Runs GRPO training. Launch it directly for one process, or under
`accelerate launch --config_file configs/accelerate/zero3.yaml -m omni_grpo.train ...` for DeepSpeed
(`run_scripts/stage4.sh` launches it through `omni_grpo.launch`, which reports a failed rank in one line).
Configuration errors (over-long prompts in the data included) are reported before any model is loaded;
`--check` stops there (what stage4.sh runs once before it starts the ranks; with GPUs in sight it also prints
the memory the run needs per GPU, `omni_grpo.memory_check`). Every error ends in one line on stderr:
`config error: …`, `data error: …`, `training stopped: …` (a data-loader worker's error too, its message alone;
a rank whose peer process or node went away), `setup error: …` (a Python without the project's dependencies),
or, for a bug of ours, the traceback and an `internal error: …` line to report.
SIGTERM or SIGINT stops training at the next safe point with a checkpoint and one line, `preempted (SIGTERM) at
step N: saved DIR; resume with: COMMAND`, exit code 128 + the signal (143, 130); see `omni_grpo.preemption`.
Dependencies' deprecation warnings are hidden unless `--verbose` or `OMNI_GRPO_VERBOSE=1`. Torch runs one intra-op
thread per process unless `OMP_NUM_THREADS` is set (what torchrun gives each rank; see `main`), and idle OpenMP
threads sleep instead of spinning (`OMP_WAIT_POLICY=PASSIVE` unless set; `passive_openmp_wait`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path


def passive_openmp_wait() -> None:
    """Idle OpenMP threads sleep at once (`OMP_WAIT_POLICY=PASSIVE`) unless the environment chose a policy.

    torch runs one intra-op thread per core; by default a thread that finishes its share of an operation spins
    before it sleeps. When another process holds one of the cores, every small parallel region of a step then
    waits for a descheduled thread while its partner spins (a `64x2:tiny` step took 23 s instead of 0.7 s at
    load 10, `bench/contention.py`). OpenMP reads the variable once, when torch loads it, so this runs before
    anything imports torch; ranks started by a launcher run it too (they start through `main`).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    passive_openmp_wait()
    parser = argparse.ArgumentParser(prog="python -m omni_grpo.train", description="GRPO training for omni thinkers.")
    parser.add_argument("--config", help="YAML config file (see docs/config_reference.md)")
    parser.add_argument(
        "--check", action="store_true", help="validate the config, the model and data folders and output_dir, then exit"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show dependencies' deprecation warnings (same as OMNI_GRPO_VERBOSE=1)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. learning_rate=5e-7 lora.enabled=true")
    args = parser.parse_args(argv)
    # One intra-op thread unless OMP_NUM_THREADS says otherwise, as torchrun sets for each rank: on a CPU shared
    # with other work, torch's default (a thread per core, spin-waiting) made one-process steps 10-30x slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from omni_grpo.logging import configure_logging, missing_dependency, report_error

    rank = int(os.environ.get("RANK", "0"))
    configure_logging(rank, verbose=args.verbose or os.environ.get("OMNI_GRPO_VERBOSE", "") not in ("", "0"))
    try:
        return run(
            args.config, args.overrides, check_only=args.check, argv=list(sys.argv[1:] if argv is None else argv)
        )
    except Exception as err:  # a bug of ours: the traceback is what to report
        if line := missing_dependency(err, "omni_grpo.train"):  # the wrong Python, not a bug
            return report_error(line, 2)
        import traceback

        frames = traceback.extract_tb(err.__traceback__)
        ours = [f for f in frames if {"omni_grpo", "preprocess"} & set(Path(f.filename).parts)] or frames
        where = f"{os.path.relpath(ours[-1].filename)}:{ours[-1].lineno}"  # the innermost line of ours
        summary = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return report_error(
            f"{traceback.format_exc()}internal error (a bug in omni-grpo; please report it with the "
            f"traceback above): {summary} at {where}",
            1,
        )


def run(config: str | None, overrides: list[str], check_only: bool = False, argv: list[str] | None = None) -> int:
    """Check the config and the paths (exit code 2 with one line if wrong), then train unless `check_only`.
    `argv`: this command's arguments (for the resume command a stopped run prints)."""
    from omni_grpo.checkpoint import CheckpointError
    from omni_grpo.config import ConfigError, check_paths, load_config
    from omni_grpo.data_check import check_data
    from omni_grpo.logging import report_error
    from omni_grpo.rewards import check_reward_names
    from omni_grpo.rewards.instructions import check_config_instructions
    from omni_grpo.run_control import decide_resume
    from preprocess.shards import ShardCorruptError, ShardFormatError

    try:
        cfg = load_config(config, overrides)
        check_reward_names(cfg.reward_funcs)
        check_config_instructions(cfg)
        check_paths(cfg)
        check_data(cfg, report=check_only)  # when training, the trainer's own check logs the warnings
        check_output_dir(cfg.output_dir)
        decide_resume(cfg)  # refuses a folder holding a different run, before ranks launch
    except (ConfigError, FileNotFoundError, CheckpointError) as err:
        return report_error(f"config error: {err}", 2)
    except (ShardCorruptError, ShardFormatError) as err:
        return report_error(f"data error: {err}", 2)
    if check_only:
        print_memory_estimate(cfg)
        return 0
    from omni_grpo import preemption

    if argv is None:
        argv = [*(["--config", config] if config else []), *overrides]
    command = preemption.resume_command(argv, cfg)
    with preemption.stop_on_signals(command, int(os.environ.get("RANK", "0"))):
        return train(cfg, command)


def train(cfg, command: str = "") -> int:
    """Build the trainer and run it; a known failure becomes one line and exit code 1 or 2; a stop signal the
    `preempted …` line with `command` (the one that resumes) and exit code 128 + the signal."""
    from omni_grpo.checkpoint import CheckpointError
    from omni_grpo.logging import one_line, report_error
    from omni_grpo.models.base import PromptTooLongError
    from omni_grpo.preemption import Preempted, report
    from omni_grpo.rewards import RewardError
    from omni_grpo.trainer import GRPOTrainer, NonFiniteLossError
    from preprocess.shards import ShardCorruptError, ShardFormatError

    if cfg.deepspeed or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        skip_deepspeed_shm_op()
    try:
        trainer = GRPOTrainer(cfg)
    except (ShardCorruptError, ShardFormatError) as err:
        return report_error(f"data error: {one_line(err)}", 2)
    try:
        trainer.train()
    except (RewardError, NonFiniteLossError, CheckpointError, PromptTooLongError) as err:
        return report_error(f"training stopped: {one_line(err)}", 1)
    except Preempted as stop:
        return report(stop.line(command), stop.code, trainer.rank)
    except RuntimeError as err:
        if (peer := lost_peer(err)) is None:
            raise
        return report_error(
            f"training stopped: rank {trainer.rank} lost its connection to another rank ({peer}): a "
            "process or node of this run ended; its own output says why. Checkpoints are kept; "
            f"once every node is back, resume with: {command}",
            1,
        )
    return 0


def lost_peer(err: BaseException) -> str | None:
    """What a collective said when another rank's process went away (gloo: the connection closed or reset), or
    None for any other error. The ranks of a node that dies end this way within seconds instead of waiting."""
    match = re.search(r"Connection (?:closed|reset) by peer[^.]*", str(err))
    return match.group(0) if match else None


def print_memory_estimate(cfg) -> None:
    """`--check` on a machine with GPUs: the modelled memory per GPU for this run next to the GPUs seen, and a
    warning when it will not fit (`omni_grpo.memory_check`); the world size is `OMNI_GRPO_WORLD_SIZE` (stage4.sh
    sets it), else the GPUs seen. Nothing on a machine without GPUs. Never stops the run."""
    from omni_grpo import memory_check

    gpus = memory_check.visible_gpus_gb()
    if not gpus:
        return
    try:
        lines = memory_check.report(cfg, int(os.environ.get(memory_check.WORLD_SIZE_ENV) or len(gpus)), gpus)
    except Exception as err:  # an estimate that cannot be made must not stop a run
        lines = [f"memory estimate: not available ({type(err).__name__}: {err})"]
    for line in lines:
        print(line, file=sys.stderr)


def skip_deepspeed_shm_op() -> None:
    """Mark DeepSpeed's CPU shared-memory op unbuildable, so that its process group does not JIT-compile it.

    On a CPU accelerator `deepspeed.init_distributed` compiles `deepspeed_shm_comm` (2–3 minutes, cached in
    ~/.cache/torch_extensions, which other checkouts overwrite). Only `inference_all_reduce` uses it, and that
    falls back to torch.distributed without it; training never calls it. DeepSpeed documents its op table
    `deepspeed.ops.__compatible_ops__` as one dict whose edits persist; GPU accelerators have no such op.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def check_output_dir(output_dir: str) -> None:
    """Create `output_dir` and write a file in it, or raise ConfigError (root ignores permission bits, so try)."""
    import tempfile

    from omni_grpo.config import ConfigError

    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as err:
        raise ConfigError(
            f"output_dir={output_dir!r} cannot be written ({err.strerror or err}); pass a writable "
            "directory as output_dir=DIR or fix its permissions"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
