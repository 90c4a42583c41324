"""The foundation: the offline tiny kit round-trips, a synthetic clip runs through the model, CI runs the
README's test command."""

import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers import readme_commands

REPO = Path(__file__).resolve().parents[1]


def test_tiny_model_and_processor_round_trip(tiny_model_dir):
    from transformers import AutoProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    assert type(processor).__name__ == "Qwen2_5OmniProcessor"
    tok = processor.tokenizer
    for token in ("<|VIDEO|>", "<|AUDIO|>", "<|vision_bos|>", "<|audio_bos|>", "<|im_end|>"):
        assert tok.convert_tokens_to_ids(token) < model.config.text_config.vocab_size
    assert model.config.video_token_id == tok.convert_tokens_to_ids("<|VIDEO|>")
    assert model.config.audio_token_id == tok.convert_tokens_to_ids("<|AUDIO|>")


def test_tiny_model_is_deterministic(tmp_path):
    from omni_grpo.tiny_models import build_tiny_model

    a = build_tiny_model(tmp_path / "a", seed=3)
    b = build_tiny_model(tmp_path / "b", seed=3)
    c = build_tiny_model(tmp_path / "c", seed=4)
    read = lambda p: (p / "model.safetensors").read_bytes()  # noqa: E731
    assert read(a) == read(b) != read(c)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_real_qwen_vocabulary_puts_special_tokens_at_the_released_ids(tmp_path):
    from transformers import AutoProcessor

    from omni_grpo.tiny_models import build_tiny_model

    processor = AutoProcessor.from_pretrained(build_tiny_model(tmp_path / "q", vocab="qwen"))
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 151643
    assert tok.convert_tokens_to_ids("<|im_end|>") == 151645
    assert tok.convert_tokens_to_ids("<|AUDIO|>") == 151646
    assert tok.convert_tokens_to_ids("<|VIDEO|>") == 151656
    assert tok.encode("hello world") == [14990, 1879]  # the real Qwen2 BPE


def test_synthetic_clip_through_preprocess_and_a_forward_with_audio_in_video(tiny, tiny_shards):
    """A synthetic clip → shards → processor → forward with use_audio_in_video: finite logits, one
    placeholder token per video/audio feature row."""
    from preprocess.shards import load

    module, model, processor = tiny
    sample = load(tiny_shards)[0]
    assert sample["frames"].ndim == 4 and sample["audio"] is not None and sample["sample_rate"] == 16000
    inputs = module.build_inputs(processor, [sample], "You are a helpful assistant.", True)
    with torch.no_grad():
        out = model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, **inputs.media_kwargs())
        enc = module.encode_media(model, inputs)
    assert torch.isfinite(out.logits).all()
    ids = inputs.input_ids[0]
    assert int((ids == model.config.video_token_id).sum()) == enc.video[0].shape[0] > 0
    assert int((ids == model.config.audio_token_id).sum()) == enc.audio[0].shape[0] > 0


def test_synthetic_siq2_dataset_has_the_real_layout(tmp_path):
    import json

    import soundfile

    from omni_grpo.tiny_models import make_siq2_dataset

    root = make_siq2_dataset(tmp_path / "siq2", n_clips=2, seconds=1.0)
    lines = [json.loads(x) for x in (root / "qa" / "qa_train.json").read_text().splitlines()]
    assert lines and set(lines[0]) >= {"qid", "q", "vid_name", "ts", "a0", "a1", "a2", "a3", "answer_idx"}
    vid = lines[0]["vid_name"]
    assert (root / "video" / f"{vid}.mp4").stat().st_size > 0
    info = soundfile.info(str(root / "audio" / "wav" / f"{vid}.wav"))
    assert info.samplerate == 22050 and info.channels == 1


def test_readme_first_screen_has_two_commands_and_ci_runs_the_test_one():
    commands = readme_commands(first_screen=True)
    assert commands == ["bash run_scripts/stage4.sh", "bash run_scripts/test.sh"]
    ci = (REPO / ".ci" / "run").read_text()
    assert any(line.strip() == commands[1] for line in ci.splitlines()), "CI must run the README's test command"
    assert "set -e" in ci


def test_import_has_no_side_effects_in_a_clean_environment(tmp_path):
    code = "import omni_grpo, preprocess, os; print(sorted(os.listdir('.')))"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"  # nothing written
    assert out.stderr == ""
