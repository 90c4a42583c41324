"""Batches of samples that differ in how their media were sampled: each row is what its sample gives alone.

Real clips keep their own effective frame rate (a 25 / 29.97 / 23.976 / 30 fps source sampled at `--fps 2` over
an odd duration gives 1.92, 2.0, 1.87 ... frames per second); a batch of them must build each video's own
TMRoPE timing and, with audio in the video, its own video/audio interleave. Both families."""

import copy

import pytest
import torch

from omni_grpo.config import DEFAULT_SYSTEM_PROMPT
from omni_grpo.models import generate, log_probs
from tests.conftest import make_sample
from tests.helpers import real_ids

SYS = DEFAULT_SYSTEM_PROMPT


def real_rate_samples() -> list[dict]:
    """Four clips as `--fps 2` leaves 25, 29.97, 23.976 and 30 fps sources of odd durations (frames / seconds)."""
    specs = [(6, 3.12), (4, 2.002), (6, 3.211), (4, 2.0)]  # (frames, seconds of the clip)
    out = []
    for i, (frames, seconds) in enumerate(specs):
        s = make_sample(i, frames=frames, seconds=seconds, seed=10)
        s["fps"] = frames / seconds
        out.append(s)
    return out


@pytest.mark.parametrize("flag", [True, False])
def test_mixed_frame_rates_batch_equals_one_by_one(kit, flag):
    """Same ids, TMRoPE positions, timing and log-probs per row as each sample built alone."""
    module, model, processor = kit
    samples = real_rate_samples()
    both = module.build_inputs(processor, samples, SYS, flag)
    assert both.batch_size == 4
    expected = torch.tensor([2.0 / s["fps"] for s in samples])  # temporal patch 2: seconds per grid step
    assert torch.allclose(both.video_second_per_grid, expected)
    with torch.no_grad():
        comps = generate(module, model, processor, both, num_generations=1, max_new_tokens=5, do_sample=False)
        lp_both, _ = log_probs(module, model, both, comps.completion_ids, comps.completion_mask, share_prompt=False)
        _, pos_both = module.embed(model, both, both.input_ids, both.attention_mask)
    for row, sample in enumerate(samples):
        alone = module.build_inputs(processor, [sample], SYS, flag)
        assert torch.equal(real_ids(both, row), real_ids(alone, 0))
        assert torch.equal(both.select([row]).video_grid_thw, alone.video_grid_thw)
        assert torch.equal(both.select([row]).pixel_values_videos, alone.pixel_values_videos)
        with torch.no_grad():
            _, pos_alone = module.embed(model, alone, alone.input_ids, alone.attention_mask)
            keep = both.attention_mask[row].bool()
            # positions [3, B, L]: the row's real tokens carry the positions of the sample alone
            assert torch.equal(pos_both[:, row, keep], pos_alone[:, 0])
            one = comps.completion_ids[row : row + 1], comps.completion_mask[row : row + 1]
            lp_alone, _ = log_probs(module, model, alone, *one)
        n = int(one[1].sum())
        assert torch.allclose(lp_both[row, :n], lp_alone[0, :n], atol=1e-5)
    # the rates do differ, so one shared rate would have timed some videos wrongly
    assert len({round(float(t), 6) for t in both.video_second_per_grid}) == 4


@pytest.fixture(scope="module")
def real_like_shards(tmp_path_factory):
    """`python -m preprocess` (default --fps) on the synthetic kit's 25 / 29.97 / 23.976 / 30 fps clips of odd
    durations (the 30 fps one without a sound track): 10 samples at 4 effective frame rates, 56×28 frames."""
    import subprocess
    import sys

    from omni_grpo.synthetic import make_siq2_dataset

    root = tmp_path_factory.mktemp("real-like")
    make_siq2_dataset(root / "raw", n_clips=4, real_like=True, seed=0)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "preprocess",
            "--source",
            "siq2",
            "--root",
            str(root / "raw"),
            "--split",
            "train",
            "--output",
            str(root / "shards"),
            "--workers",
            "1",
            "--min-pixels",
            "3136",
            "--max-pixels",
            "3136",
        ],
        check=True,
        capture_output=True,
    )
    return root / "shards"


def test_trainer_and_evaluate_take_batches_of_real_frame_rates(tiny_model_dir, real_like_shards, tmp_path):
    """`per_device_prompts = 4` trains and evaluate's default batch size scores on clips of different rates."""
    import inspect

    from omni_grpo.evaluate import evaluate
    from omni_grpo.trainer import GRPOTrainer
    from preprocess import shards
    from tests.helpers import TINY_RUN, tiny_config

    data = shards.load(real_like_shards)
    rates = [data[i]["fps"] for i in range(len(data))]
    assert len(data) == 10 and len(set(rates[:4])) >= 2 and len(set(rates)) == 4  # every batch mixes rates
    cfg = tiny_config(
        tiny_model_dir,
        real_like_shards,
        tmp_path / "run",
        TINY_RUN,
        per_device_prompts=4,
        max_completion_length=4,
        max_steps=2,
        save_steps=0,
        logging_steps=1,
        dataset_order="sequential",
    )
    metrics = GRPOTrainer(cfg).train()
    assert metrics is not None
    default_batch = inspect.signature(evaluate).parameters["batch_size"].default
    assert default_batch > 1
    summary = evaluate(
        str(tiny_model_dir),
        [str(real_like_shards)],
        str(tmp_path / "eval"),
        max_new_tokens=4,
        num_workers=0,
        progress=False,
    )
    assert summary["num_questions"] == 10


def flag_samples() -> list[dict]:
    """A clip whose audio rides in the video, one that keeps its audio out (its own flag), a silent clip."""
    on, off, silent = (
        make_sample(0, seed=20),
        make_sample(1, seconds=3.0, frames=6, seed=20),
        make_sample(2, audio=False),
    )
    off["use_audio_in_video"] = False
    return [on, off, silent]


def test_per_sample_audio_in_video_equals_one_by_one(kit):
    """Each row keeps its own flag through the processor, positions, greedy rollout (= HF generate alone) and
    log-probs; KL is exactly 0 at step 0 on the mixed batch."""
    from omni_grpo.core_algos import kl_penalty
    from tests.test_models import hf_greedy

    module, model, processor = kit
    samples = flag_samples()
    both = module.build_inputs(processor, samples, SYS, True)
    assert both.audio_in_video == [True, False, False] and both.audio_rows == [0, 1]
    with torch.no_grad():
        comps = generate(module, model, processor, both, num_generations=2, max_new_tokens=5, do_sample=False)
        rep = both.repeat(2)
        lp_both, _ = log_probs(module, model, rep, comps.completion_ids, comps.completion_mask)
        ref, _ = log_probs(module, copy.deepcopy(model), rep, comps.completion_ids, comps.completion_mask)
        _, pos_both = module.embed(model, both, both.input_ids, both.attention_mask)
    assert torch.equal(kl_penalty(lp_both, ref, kind="k3") * comps.completion_mask, torch.zeros_like(lp_both))
    for row, sample in enumerate(samples):
        alone = module.build_inputs(processor, [sample], SYS, True)
        assert torch.equal(real_ids(both, row), real_ids(alone, 0))
        plain = hf_greedy(kit, alone, n=5)
        n = plain.shape[1]
        for j in range(2):
            assert torch.equal(comps.completion_ids[2 * row + j, :n], plain[0])
        with torch.no_grad():
            _, pos_alone = module.embed(model, alone, alone.input_ids, alone.attention_mask)
            assert torch.equal(pos_both[:, row, both.attention_mask[row].bool()], pos_alone[:, 0])
            one = comps.completion_ids[2 * row : 2 * row + 1], comps.completion_mask[2 * row : 2 * row + 1]
            lp_alone, _ = log_probs(module, model, alone, *one)
        m = int(one[1].sum())
        assert torch.allclose(lp_both[2 * row, :m], lp_alone[0, :m], atol=1e-5)
    # the override is real: the clip with audio built under the batch's flag differs
    shared = module.build_inputs(processor, [dict(samples[1], use_audio_in_video=None)], SYS, True)
    assert not torch.equal(real_ids(shared, 0), real_ids(both, 1))
