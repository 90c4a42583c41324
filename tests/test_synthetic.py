"""Synthetic media: the clips and datasets other tests build on have the layout, rates and content claimed."""

import json
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile

from omni_grpo import synthetic
from tests import broken_media


def _decode(path):
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        info = {
            "codec": video.codec_context.name,
            "fps": float(video.average_rate),
            "size": (video.codec_context.height, video.codec_context.width),
            "audio": [
                (s.codec_context.name, s.codec_context.sample_rate, s.codec_context.channels)
                for s in container.streams.audio
            ],
        }
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return info, np.stack(frames)


def _decode_audio(path):
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="fltp")
        chunks = [out.to_ndarray() for frame in container.decode(audio=0) for out in resampler.resample(frame)]
    return np.concatenate(chunks, axis=1)


def test_clip_layout_rates_and_motion(tmp_path):
    path = synthetic.make_clip(tmp_path / "a.mp4", seconds=3.0, fps=8, size=(96, 128))
    info, frames = _decode(path)
    assert info["codec"] == "h264"
    assert info["fps"] == 8.0
    assert info["size"] == (96, 128)
    assert info["audio"] == [("aac", 16000, 1)]
    assert frames.shape == (24, 96, 128, 3)
    # Visible motion: consecutive frames differ, and the clip's ends differ a lot.
    assert all(np.abs(frames[i + 1].astype(int) - frames[i]).mean() > 0.5 for i in range(23))
    assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 5


def test_clip_is_deterministic_per_seed(tmp_path):
    _, a = _decode(synthetic.make_clip(tmp_path / "a.mp4", seed=3))
    _, b = _decode(synthetic.make_clip(tmp_path / "b.mp4", seed=3))
    _, c = _decode(synthetic.make_clip(tmp_path / "c.mp4", seed=4))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 5


def test_clip_audio_is_the_chirp(tmp_path):
    path = synthetic.make_clip(tmp_path / "a.mp4", seconds=2.0, sample_rate=16000, seed=2)
    audio = _decode_audio(path)[0]
    expected = synthetic.chirp(2.0, 16000, seed=2)
    n = len(expected)
    assert len(audio) >= n
    assert np.corrcoef(audio[:n], expected)[0, 1] > 0.98


@pytest.mark.parametrize("rate,channels,layout", [(48000, 6, "5.1"), (44100, 2, "stereo"), (11025, 1, "mono")])
def test_clip_audio_rates_and_channels(tmp_path, rate, channels, layout):
    path = synthetic.make_clip(tmp_path / "a.mp4", seconds=1.0, sample_rate=rate, channels=channels)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.sample_rate, stream.codec_context.channels) == (rate, channels)
        assert stream.codec_context.layout.name == layout
    audio = _decode_audio(path)
    # Channel c is the chirp scaled by 1 - 0.1 c, so no channel cancels another in a mono mix.
    middle = audio[:, rate // 4 : 3 * rate // 4]
    rms = np.sqrt((middle**2).mean(axis=1))
    last = channels - 1
    assert rms[last] / rms[0] == pytest.approx(1 - 0.1 * last, abs=0.05)


def test_clip_without_audio_and_silence(tmp_path):
    info, _ = _decode(synthetic.make_clip(tmp_path / "none.mp4", audio=None))
    assert info["audio"] == []
    silent = _decode_audio(synthetic.make_clip(tmp_path / "silent.mp4", audio="silence"))
    assert np.abs(silent).max() < 1e-4
    with pytest.raises(ValueError):
        synthetic.make_clip(tmp_path / "x.mp4", audio="music")


def test_one_frame_clip(tmp_path):
    _, frames = _decode(synthetic.make_clip(tmp_path / "one.mp4", seconds=0.125, fps=8))
    assert frames.shape[0] == 1


def test_hevc_clip(tmp_path):
    if not synthetic.hevc_available():
        pytest.skip("this PyAV build cannot encode HEVC")
    info, frames = _decode(synthetic.make_clip(tmp_path / "h.mp4", video_codec="libx265"))
    assert info["codec"] == "hevc"
    assert frames.shape[0] == 24


@pytest.mark.parametrize("rate,channels,subtype", [(22050, 1, "PCM_16"), (11025, 1, "PCM_U8"), (48000, 2, "PCM_16")])
def test_wav(tmp_path, rate, channels, subtype):
    path = synthetic.make_wav(tmp_path / "a.wav", seconds=1.5, sample_rate=rate, channels=channels, subtype=subtype)
    info = soundfile.info(str(path))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (rate, channels, subtype, round(1.5 * rate))
    data, _ = soundfile.read(str(path), always_2d=True)
    assert np.corrcoef(data[:, 0], synthetic.chirp(1.5, rate))[0, 1] > 0.99


def test_broken_files(tmp_path):
    clip = synthetic.make_clip(tmp_path / "a.mp4")
    truncated = broken_media.make_truncated(clip, tmp_path / "t.mp4", keep=0.5)
    assert truncated.stat().st_size == clip.stat().st_size // 2
    text = broken_media.make_text_file(tmp_path / "text.mp4")
    empty = broken_media.make_empty_file(tmp_path / "empty.mp4")
    assert empty.stat().st_size == 0
    for bad in (truncated, text, empty):
        with pytest.raises(av.error.FFmpegError):
            av.open(str(bad)).close()


def test_siq2_dataset_layout(tmp_path):
    root = synthetic.make_siq2_dataset(tmp_path / "siq2", n_clips=4, split="val", seconds=2.0)
    lines = (root / "qa" / "qa_val.json").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]  # JSON Lines despite the .json name
    assert len(rows) >= 8
    for row in rows:
        assert set(row) == {"qid", "q", "vid_name", "ts", "a0", "a1", "a2", "a3", "answer_idx"}
        assert row["answer_idx"] in range(4)
        assert row["ts"] == "00:00-00:02"
        assert (root / "video" / f"{row['vid_name']}.mp4").is_file()
        wav = soundfile.info(str(root / "audio" / "wav" / f"{row['vid_name']}.wav"))
        assert (wav.samplerate, wav.channels, wav.subtype) == (22050, 1, "PCM_16")
    videos = {row["vid_name"] for row in rows}
    assert len(videos) == 4
    assert len({row["qid"] for row in rows}) == len(rows)
    assert len({row["answer_idx"] for row in rows}) > 1
    assert all(sum(r["vid_name"] == v for r in rows) >= 2 for v in videos)


@pytest.mark.parametrize(
    "fps,rate",
    [
        (Fraction(30000, 1001), Fraction(30000, 1001)),
        (30000 / 1001, Fraction(30000, 1001)),
        (Fraction(24000, 1001), Fraction(24000, 1001)),
        (25, Fraction(25)),
    ],
)
def test_clip_at_ntsc_and_pal_rates_with_odd_duration(tmp_path, fps, rate):
    path = synthetic.make_clip(tmp_path / "a.mp4", seconds=2.3, fps=fps, size=(64, 96))
    with av.open(str(path)) as container:
        assert container.streams.video[0].average_rate == rate
    _, frames = _decode(path)
    assert frames.shape[0] == round(2.3 * rate)


@pytest.mark.parametrize(
    "name,rate,channels",
    [("a.wav", 22050, 1), ("a.flac", 48000, 6), ("a.mp3", 44100, 2), ("a.m4a", 48000, 6), ("b.m4a", 22050, 1)],
)
def test_audio_only_files(tmp_path, name, rate, channels):
    path = synthetic.make_audio(tmp_path / name, seconds=1.5, sample_rate=rate, channels=channels)
    with av.open(str(path)) as container:
        assert not container.streams.video
        stream = container.streams.audio[0]
        assert (stream.codec_context.sample_rate, stream.codec_context.channels) == (rate, channels)
    audio = _decode_audio(path)
    assert audio.shape[1] / rate == pytest.approx(1.5, abs=1152 / rate + 1e-3)
    rms = np.sqrt((audio[:, rate // 4 : rate] ** 2).mean(axis=1))
    assert rms[-1] / rms[0] == pytest.approx(1 - 0.1 * (channels - 1), abs=0.05)


def test_audio_only_file_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=".wav, .flac, .mp3, .m4a"):
        synthetic.make_audio(tmp_path / "a.ogg")


@pytest.mark.parametrize("name", ["p.png", "p.jpg"])
def test_image_is_frame_zero(tmp_path, name):
    from PIL import Image

    path = synthetic.make_image(tmp_path / name, size=(60, 80), seed=2)
    image = np.asarray(Image.open(path).convert("RGB"), dtype=int)
    assert image.shape == (60, 80, 3)
    assert np.abs(image - synthetic.frame_image(0, 1.0, 1.0, (60, 80), seed=2)).mean() < 3
