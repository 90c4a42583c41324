"""CUDA smoke test (marker `gpu`, skipped on a machine without CUDA by conftest.py): the trainer puts the tiny
model on the GPU by itself, and one GRPO step there starts at KL exactly 0 (the reference pass equals the
policy pass before any update) with a finite loss, in float32 and in bfloat16."""

import math

import pytest

from tests.helpers import LENGTH, TINY_RUN, tiny_config

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_one_grpo_step_on_cuda_starts_at_kl_zero(tiny_model_dir, tiny_shards, tmp_path, bf16):
    from omni_grpo.trainer import GRPOTrainer

    cfg = tiny_config(
        tiny_model_dir,
        tiny_shards,
        tmp_path / "run",
        TINY_RUN,
        bf16=bf16,
        beta=0.04,
        max_steps=2,
        max_completion_length=6,
        save_steps=0,
        logging_steps=1,
        dataset_order="sequential",
        reward_funcs=["format", LENGTH],
    )
    trainer = GRPOTrainer(cfg)
    assert trainer.device.type == "cuda"
    assert all(p.is_cuda for p in trainer.policy.parameters())
    first, second = trainer.step(), trainer.step()
    assert first["actor/kl"] == 0.0 and second["actor/kl"] > 0.0
    assert math.isfinite(first["actor/loss"]) and math.isfinite(second["actor/loss"])
