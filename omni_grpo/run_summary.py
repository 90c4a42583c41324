"""What a run says about itself at its start and end (pure; the trainer logs both on rank 0): the start
`banner` (model, back end, parameters, data, where the resolved config is), and the end-of-run summary line,
how the main rewards moved over the steps this process trained (the trainer keeps the per-step history).

Main rewards: `reward/<name>` of each reward function and `reward/total` (not their `_std`, `/none_ratio`, ...
companions, nor `reward/zero_std_group_ratio`), accuracy first. A reward "rose" when the mean of its last k
finite values is above the mean of its first k, with k = max(1, min(5, n // 4)) for n steps (so a 60-step run
compares steps 1-5 with 56-60 and a 2-step run step 1 with step 2; steps where a reward
scored nothing are left out); otherwise it "did not rise".
"""

from __future__ import annotations

import math
from pathlib import Path

_NOT_MAIN = ("_std", "zero_std_group_ratio")


def is_main_reward(key: str) -> bool:
    """True for `reward/<name>` (a reward function's mean, or the total), not for its companion metrics."""
    parts = key.split("/")
    return len(parts) == 2 and parts[0] == "reward" and not parts[1].endswith(_NOT_MAIN)


def window(n: int) -> int:
    """Steps averaged at each end of an n-step run."""
    return max(1, min(5, n // 4))


def _order(key: str) -> tuple[int, str]:
    return ({"reward/accuracy": 0, "reward/total": 2}.get(key, 1), key)


def plural(n: int, word: str) -> str:
    """`1 step`, `2 steps`."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def banner(
    cfg,
    family: str,
    world_size: int,
    zero_stage: int | None,
    device,
    param_counts: tuple[int, int],
    num_prompts: int,
    total_steps: int,
    encode_once: bool,
) -> str:
    """The lines a run starts with: model and family, ranks and back end (`zero_stage`: None without DeepSpeed),
    parameter counts, the data and the step size, the media flags, and where the resolved config is written."""
    trainable, frozen = param_counts
    backend = f"DeepSpeed ZeRO-{zero_stage}" if zero_stage is not None else "single process"
    return "\n".join(
        [
            f"omni-grpo: {family} from {cfg.model_name_or_path}",
            f"  world size {world_size}, {backend}, device {device}",
            f"  parameters: {trainable:,} trainable, {frozen:,} frozen{' (LoRA)' if cfg.lora.enabled else ''}",
            f"  {plural(num_prompts, 'prompt')}; {plural(total_steps, 'optimizer step')} of "
            f"{plural(cfg.per_device_prompts * cfg.gradient_accumulation_steps * world_size, 'prompt')} × "
            f"{plural(cfg.num_generations, 'completion')}",
            f"  use_audio_in_video={cfg.use_audio_in_video}, encode media once={encode_once}, output {cfg.output_dir}",
            f"  config: {Path(cfg.output_dir) / 'config.yaml'} (every setting, resolved)",
        ]
    )


def reward_trend(history: dict[str, list[float]]) -> str:
    """e.g. "accuracy rose from 0.25 to 0.81, total rose from 0.62 to 1.70 (reward/*, mean of the first and last
    5 steps)", or "" when no main reward has a finite value. `history`: metric name -> its value at each step."""
    keys = sorted((key for key in history if is_main_reward(key)), key=_order)
    k = window(max((len(history[key]) for key in keys), default=0))
    parts = []
    for key in keys:
        values = _finite(history[key])
        if not values:
            continue
        head, tail = values[:k], values[-k:]
        first, last = sum(head) / len(head), sum(tail) / len(tail)
        verb = "rose" if last > first else "did not rise"
        parts.append(f"{key.split('/', 1)[1]} {verb} from {first:.2f} to {last:.2f}")
    if not parts:
        return ""
    return f"{', '.join(parts)} (reward/*, mean of the first and last {plural(k, 'step')})"


def _finite(values: list[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]
