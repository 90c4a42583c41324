"""LoRA checkpoints hold the adapter and its optimizer state, never the frozen base, and
resume from them is exact. The 2-rank ZeRO-3 LoRA resume is in test_distributed.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omni_grpo.trainer import GRPOTrainer
from tests.helpers import LENGTH, TINY_RUN, tiny_config

REPO = Path(__file__).resolve().parents[1]
LORA = {"lora.enabled": True, "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0}


def state_tensors(obj, prefix=""):
    """(dotted key, tensor) of every tensor in a loaded state file."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from state_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from state_tensors(v, f"{prefix}.{i}")


def frozen_weights_in_state(state_dir: Path) -> list[str]:
    """Keys of the state files that hold a non-empty weight of a frozen parameter (a name without `lora_`).
    DeepSpeed writes its module state under `module` and ZeRO-2/3's frozen weights under `frozen_param_fragments`."""
    found = []
    for path in state_dir.rglob("*.pt"):
        state = torch.load(path, map_location="cpu", weights_only=False)
        for part in ("module", "frozen_param_fragments"):
            for key, t in state_tensors(state.get(part) or {}):
                if "lora_" not in key and t.numel() > 0:
                    found.append(f"{path.name}:{part}.{key}")
    return found


def state_bytes(state_dir: Path) -> int:
    """Bytes of every tensor in the state files."""
    total = 0
    for path in state_dir.rglob("*.pt"):
        state = torch.load(path, map_location="cpu", weights_only=False)
        total += sum(t.numel() * t.element_size() for _, t in state_tensors(state))
    return total


@pytest.mark.slow
def test_deepspeed_lora_state_holds_no_frozen_weight(tmp_path):
    """One rank, ZeRO-2 and ZeRO-3, through the checkpoint bench: the state files hold at most the adapter,
    its fp32 master and its two Adam moments (4 × the adapter, 5 × allowed), and no frozen parameter."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "lora_checkpoint_bench.py"),
            "--width",
            "tiny",
            "--backend",
            "zero2",
            "zero3",
            "--work",
            str(tmp_path),
            "--json",
            str(tmp_path / "r.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for row in json.loads((tmp_path / "r.json").read_text()):
        state = tmp_path / "runs" / row["backend"] / "checkpoints" / "step-0000001" / "state"
        assert (state / "deepspeed").is_dir()
        assert frozen_weights_in_state(state) == [], row["backend"]
        assert state_bytes(state) <= 5 * row["trainable"] < row["frozen"], row  # the tiny model trains in fp32
        assert row["total"] < row["frozen"], row  # the whole checkpoint is smaller than the frozen base alone


def test_plain_lora_checkpoint_is_small_and_resume_is_exact(tiny_model_dir, tiny_shards, tmp_path):
    """Plain engine: the checkpoint holds no frozen weight, and the step after a resume from step 1 equals
    the uninterrupted run's (loss and adapter weights)."""
    run = dict(
        TINY_RUN,
        per_device_prompts=2,
        max_completion_length=6,
        max_steps=2,
        save_steps=0,
        reward_funcs=["format", LENGTH],
        **LORA,
    )
    full = GRPOTrainer(tiny_config(tiny_model_dir, tiny_shards, tmp_path / "a", run))
    full.step()
    folder = full.save()
    second = full.step()["actor/loss"]
    frozen = sum(p.numel() * p.element_size() for p in full.policy.parameters() if not p.requires_grad)
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert total < frozen
    assert frozen_weights_in_state(folder / "state") == []
    resumed = GRPOTrainer(
        tiny_config(tiny_model_dir, tiny_shards, tmp_path / "b", run, resume_from_checkpoint=str(folder))
    )
    assert resumed.global_step == 1
    assert resumed.step()["actor/loss"] == second != 0.0
    for (n, p), (_, q) in zip(full.policy.named_parameters(), resumed.policy.named_parameters()):
        assert torch.equal(p, q), n
