"""The reference that follows the policy under DeepSpeed on 2 CPU ranks (slow). ZeRO-3: both models' weights are
partitioned, so the sync gathers them, mixes, and partitions the reference again on every rank. ZeRO-2: the
reference's engine runs without ZeRO (DeepSpeed refuses a ZeRO-2 engine without optimizer), whole on every rank."""

import pytest
import torch

from tests.helpers import REPO, common, launch, scalars, zero3_test_config

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stage", [3, 2])
def test_copy_sync_gives_kl_zero_on_every_rank_and_resumes_exactly(tiny_model_dir, mixed_shards, tmp_path, stage):
    """ref_sync_alpha 1 after step 2: step 3's actor/kl (the mean of both ranks) is exactly 0, so the reference
    equals the policy on both ranks; the checkpoint of step 2 holds that reference, and a run resumed from it
    repeats step 3 exactly (a reference rebuilt from the initial model would give KL > 0 there)."""
    from safetensors.torch import load_file

    ds = zero3_test_config(tmp_path / "zero3.json") if stage == 3 else REPO / "configs" / "deepspeed" / "zero2.json"
    sync = ["ref_sync_steps=2", "ref_sync_alpha=1.0"]
    out, resumed = tmp_path / "out", tmp_path / "resumed"
    launch(tmp_path, common(tiny_model_dir, mixed_shards, out, ds) + sync)
    kl = scalars(out, "actor/kl")
    assert kl[0] == 0.0 and kl[1] > 0.0 and kl[2] == 0.0, kl
    step2 = out / "checkpoints" / "step-0000002"
    reference = load_file(str(step2 / "reference.safetensors"))
    assert reference and all(torch.isfinite(t).all() for t in reference.values())
    launch(tmp_path, common(tiny_model_dir, mixed_shards, resumed, ds) + sync + [f"resume_from_checkpoint={step2}"])
    assert scalars(resumed, "actor/kl") == [0.0]
    assert scalars(resumed, "actor/loss") == scalars(out, "actor/loss")[2:]
