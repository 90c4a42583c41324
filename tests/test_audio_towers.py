"""The audio towers attend within their windows under `sdpa` and `eager`, on the installed transformers.

Both families' audio encoders were trained with windowed self-attention: Qwen2.5-Omni attends within each
2 s chunk (`n_window` * 2 mel frames), Qwen3-Omni within each `n_window_infer` window (8 s in the release).
The windows reach the attention as `cu_seqlens`, which only the flash-attention path reads on some
transformers versions; there SDPA and eager attend across the whole clip, and the tower's output drifts from
what the model was trained on (Tencent-Hunyuan/UniRL pull request 274 measured a Qwen3-Omni tower output
cosine of 0.92 under SDPA against 0.9998 under flash-attention; QwenLM/Qwen3-ASR issue 213 the same bug in
Qwen3-ASR's copy of the encoder). The windowed result here is computed without trusting `cu_seqlens`: each
window is encoded on its own (one window, so whole-clip attention is windowed attention) and the outputs are
concatenated. That is exact because everything outside attention works per chunk (convolutions, positions)
or per token, and a window holds whole chunks (and, for Qwen2.5-Omni, whole pooling pairs).

A version whose towers fail here is below the floor of `setup.py`'s transformers range.
"""

import pytest
import torch
import transformers

# Window sizes in mel frames (100 per second) as the released configs set them.
AUDIO = {
    "qwen2_5_omni": dict(
        num_mel_bins=128,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        d_model=64,
        output_dim=48,
        n_window=100,
        max_source_positions=1500,
    ),
    "qwen3_omni": dict(
        num_mel_bins=128,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        d_model=64,
        output_dim=48,
        n_window=50,
        n_window_infer=800,
        downsample_hidden_size=16,
        max_source_positions=1500,
    ),
}
WINDOW = {"qwen2_5_omni": 200, "qwen3_omni": 800}  # mel frames per attention window
CLIP = 2.5  # windows per clip: two whole ones and a half one


def build_tower(family: str, attn: str):
    if family == "qwen2_5_omni":
        from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
        from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder as Tower

        config = Qwen2_5OmniAudioEncoderConfig(**AUDIO[family])
    else:
        from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import (
            Qwen3OmniMoeAudioEncoderConfig,
        )
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder as Tower

        config = Qwen3OmniMoeAudioEncoderConfig(**AUDIO[family])
    # Large weights, so that attention is peaked and where it may look changes the output clearly.
    config.initializer_range = 0.2
    torch.manual_seed(0)
    tower = Tower._from_config(config, attn_implementation=attn, dtype=torch.float32)
    assert tower.config._attn_implementation == attn
    return tower.eval()


def encode(tower, family: str, features: torch.Tensor) -> torch.Tensor:
    """The tower on one clip of mel features [n_mel, T], as the thinker's `get_audio_features` calls it."""
    lens = torch.tensor([features.shape[1]])
    kwargs = {"aftercnn_lens": (lens - 1) // 2 + 1} if family == "qwen2_5_omni" else {}
    with torch.no_grad():
        return tower(input_features=features, feature_lens=lens, **kwargs).last_hidden_state


def windowed(tower, family: str, features: torch.Tensor) -> torch.Tensor:
    """The clip's windowed encoding, each window encoded on its own."""
    return torch.cat([encode(tower, family, part) for part in features.split(WINDOW[family], dim=1)])


def whole_clip(tower, family: str, features: torch.Tensor) -> torch.Tensor:
    """What a version that ignores the windows computes: every layer attends across the whole clip."""

    def one_window(module, args, kwargs):
        hidden = args[0]
        full = torch.tensor([0, hidden.shape[0]], dtype=torch.int32)
        if "cu_seqlens" in kwargs:
            kwargs["cu_seqlens"] = full
        else:
            args = (hidden, full, *args[2:])
        if "max_seqlen" in kwargs:
            kwargs["max_seqlen"] = hidden.shape[0]
        return args, kwargs

    handles = [layer.register_forward_pre_hook(one_window, with_kwargs=True) for layer in tower.layers]
    try:
        return encode(tower, family, features)
    finally:
        for handle in handles:
            handle.remove()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["qwen2_5_omni", "qwen3_omni"])
def test_audio_tower_attends_within_its_windows(family, attn):
    tower = build_tower(family, attn)
    features = torch.randn(128, int(CLIP * WINDOW[family]), generator=torch.Generator().manual_seed(1))
    reference = windowed(tower, family, features)
    out = encode(tower, family, features)
    assert out.shape == reference.shape
    where = f"{family} audio tower, {attn}, transformers {transformers.__version__}"
    torch.testing.assert_close(
        out,
        reference,
        atol=1e-5,
        rtol=1e-4,
        msg=lambda m: f"{where}: not the windowed result (cosine {cosine(out, reference):.4f})\n{m}",
    )
    # The check can fail: attending across the whole clip changes the output well beyond that tolerance.
    wrong = whole_clip(tower, family, features)
    assert (wrong - reference).abs().max() > 100 * 1e-5 + 1e-4 * reference.abs().max(), where
    assert cosine(wrong, reference) < 0.999, where


@pytest.mark.parametrize("family", ["qwen2_5_omni", "qwen3_omni"])
def test_sdpa_and_eager_towers_agree(family):
    features = torch.randn(128, int(CLIP * WINDOW[family]), generator=torch.Generator().manual_seed(2))
    sdpa, eager = (encode(build_tower(family, attn), family, features) for attn in ("sdpa", "eager"))
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-4)
