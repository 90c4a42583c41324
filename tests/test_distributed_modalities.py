"""ZeRO-3 on 2 CPU ranks whose batches hold different modalities (slow): one rank trains on an
audio clip alone, the other on a silent video, so each rank lacks the tower the other runs. Both must call
both towers every pass (dummy passes), or the run hangs in a parameter gather; the timeout turns a hang into a
failure."""

import json

import pytest

from tests.helpers import common, launch, run_preprocess, scalars, zero3_test_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def audio_and_video_shards(tmp_path_factory):
    """Sample 0 an audio file alone (rank 0's batch), sample 1 a video without a sound track (rank 1's)."""
    from omni_grpo.synthetic import make_audio, make_clip

    root = tmp_path_factory.mktemp("ranks")
    make_audio(root / "voice.flac", seconds=2.0, sample_rate=22050, seed=1)
    make_clip(root / "quiet.mp4", seconds=2.0, audio=None, seed=2)
    qa = {"options": ["yes", "no"], "answer": "A", "problem_type": "multiple_choice"}
    lines = [
        {"id": "voice", "audio": "voice.flac", "question": "Is the speaker calm?", **qa},
        {"id": "quiet", "video": "quiet.mp4", "question": "Is the person sitting?", **qa},
    ]
    (root / "qa.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    run_preprocess(["--source", "jsonl", "--manifest", str(root / "qa.jsonl"), "--output", str(root / "shards")])
    modalities = json.loads((root / "shards" / "manifest.json").read_text())["modalities"]
    assert modalities == {"audio": 1, "video_only": 1}
    return root / "shards"


def test_zero3_audio_only_rank_and_video_only_rank_finish_with_kl_zero_at_step_zero(
    tiny_model_dir, audio_and_video_shards, tmp_path
):
    ds = zero3_test_config(tmp_path / "zero3.json")
    out = tmp_path / "out"
    launch(tmp_path, common(tiny_model_dir, audio_and_video_shards, out, ds, steps=2) + ["save_steps=0"], timeout=300)
    losses = scalars(out, "actor/loss")
    kl = scalars(out, "actor/kl")
    assert len(losses) == 2 and kl[0] == 0.0 and kl[1] > 0.0
