"""python -m omni_grpo.train --config FILE [key=value ...]

Runs GRPO training. Launch it directly for one process, or under
`accelerate launch --config_file configs/accelerate/zero3.yaml -m omni_grpo.train ...` for DeepSpeed.
Configuration errors are reported before any model is loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omni_grpo.train", description="GRPO training for omni thinkers.")
    parser.add_argument("--config", help="YAML config file (see docs/config_reference.md)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. learning_rate=5e-7 lora.enabled=true")
    args = parser.parse_args(argv)

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from omni_grpo.config import ConfigError, check_paths, load_config

    try:
        cfg = load_config(args.config, args.overrides)
        check_paths(cfg)
        check_output_dir(cfg.output_dir)
    except (ConfigError, FileNotFoundError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2

    from omni_grpo.checkpoint import CheckpointError
    from omni_grpo.models.qwen2_5_omni import PromptTooLongError
    from omni_grpo.rewards import RewardError
    from omni_grpo.trainer import GRPOTrainer, NonFiniteLossError
    from preprocess.shards import ShardCorruptError, ShardFormatError

    try:
        trainer = GRPOTrainer(cfg)
    except (ShardCorruptError, ShardFormatError) as err:
        print(f"data error: {err}", file=sys.stderr)
        return 2
    try:
        trainer.train()
    except (RewardError, NonFiniteLossError, CheckpointError, PromptTooLongError) as err:
        print(f"training stopped: {err}", file=sys.stderr)
        return 1
    return 0


def check_output_dir(output_dir: str) -> None:
    """Create `output_dir` and write a file in it, or raise ConfigError (root ignores permission bits, so try)."""
    import tempfile
    from pathlib import Path

    from omni_grpo.config import ConfigError

    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as err:
        raise ConfigError(f"output_dir={output_dir!r} cannot be written ({err.strerror or err}); pass a writable "
                          "directory as output_dir=DIR or fix its permissions") from None


if __name__ == "__main__":
    raise SystemExit(main())
