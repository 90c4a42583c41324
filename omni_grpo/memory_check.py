"""The memory a run needs per GPU, from `bench/memory_model.py`, for `train --check`: one line with the modelled
peak for this config at its world size next to the GPUs this machine sees, and a warning when it will not fit.

The model (bench/RESULTS.md §6) counts bytes per GPU phase by phase in the thinker's dimensions (built on the meta
device from `config.json`, no weights read): ZeRO-3 shards, the whole model gathered for the token loop, the KV
cache with one prompt copy, activations with or without gradient checkpointing. Checked on a CPU (§6.1): the
reference and update passes within 0.84-1.13x of the measurement, the rollout under-modelled by up to 1.8x;
the Python/CUDA runtime (about 1 GB) comes on top. Qwen2.5-Omni thinkers only; the model lives in the repository's
bench/ folder, so an install without it reports nothing.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

GB = 2**30
RUNTIME_GB = 1.0  # Python, torch and CUDA context per process (§6.1's "resident after build" minus the weights)
WORLD_SIZE_ENV = "OMNI_GRPO_WORLD_SIZE"  # the processes the run will start (stage4.sh sets it for its --check)
MODEL_FILE = Path(__file__).resolve().parents[1] / "bench" / "memory_model.py"


def _memory_model():
    if not MODEL_FILE.is_file():
        return None
    name = "omni_grpo_bench_memory_model"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, MODEL_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _offloads_optimizer(deepspeed_json: str | None) -> bool:
    if not deepspeed_json:
        return False
    zero = json.loads(Path(deepspeed_json).read_text(encoding="utf-8")).get("zero_optimization", {})
    return (zero.get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")


def estimate_gb(cfg, world_size: int) -> tuple[float, str] | None:
    """(peak GB per GPU including the runtime, the phase it occurs in) for `cfg` on `world_size` GPUs, or None
    when the model does not cover this run (not a Qwen2.5-Omni thinker, or no bench/ folder)."""
    mm = _memory_model()
    config_file = Path(cfg.model_name_or_path) / "config.json"
    if mm is None or json.loads(config_file.read_text(encoding="utf-8")).get("model_type") not in (
        "qwen2_5_omni",
        "qwen2_5_omni_thinker",
    ):
        return None
    import torch
    from transformers import AutoConfig, Qwen2_5OmniThinkerForConditionalGeneration

    config = AutoConfig.from_pretrained(cfg.model_name_or_path)
    config = getattr(config, "thinker_config", config)
    with torch.device("meta"):
        model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    dims = mm.dims_of(model, Path(cfg.model_name_or_path).name, lora_r=cfg.lora.r)
    run = mm.Run(
        prompt=cfg.max_prompt_length,
        completion=cfg.max_completion_length,
        generations=cfg.num_generations,
        micro_batch=cfg.update_micro_batch_size,
        world=world_size,
        lora=cfg.lora.enabled,
        checkpointing=cfg.gradient_checkpointing,
        one_prompt_copy=True,
        bytes_per_weight=2 if cfg.bf16 else 4,
        optimizer_bytes=0 if _offloads_optimizer(cfg.deepspeed) else 16,
    )
    peaks = mm.phase_peaks(dims, run)
    phase = max(("rollout", "reference", "update"), key=lambda p: peaks[p + " total"])
    return peaks[phase + " total"] / GB + RUNTIME_GB, phase


def report(cfg, world_size: int, gpu_gb: list[float]) -> list[str]:
    """The lines `train --check` prints: the estimate against `gpu_gb` (each visible GPU's memory in GB; empty:
    none seen), and a warning line when the estimate exceeds the smallest of them. [] when not modelled."""
    found = estimate_gb(cfg, world_size)
    if found is None:
        return []
    peak, phase = found
    mode = "LoRA" if cfg.lora.enabled else "full fine-tuning"
    seen = f"{len(gpu_gb)} GPU(s) of {min(gpu_gb):.0f} GB here" if gpu_gb else "no GPU seen here"
    lines = [
        f"memory estimate: {peak:.1f} GB per GPU at its peak ({phase}) on {world_size} GPU(s), {mode}, "
        f"prompt {cfg.max_prompt_length} + completion {cfg.max_completion_length} tokens x "
        f"G={cfg.num_generations} (bench/memory_model.py; its rollout term up to 1.8x under); {seen}"
    ]
    if gpu_gb and peak > min(gpu_gb):
        lines.append(
            f"warning: {peak:.1f} GB will not fit a {min(gpu_gb):.0f} GB GPU: use more GPUs, "
            "lora.enabled=true, a shorter max_prompt_length / max_completion_length, per_device_prompts=1, "
            "or a DeepSpeed config with offload_optimizer (README: the memory table)"
        )
    return lines


def visible_gpus_gb() -> list[float]:
    """The memory of each GPU torch sees, in GB."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_properties(i).total_memory / GB for i in range(torch.cuda.device_count())]
