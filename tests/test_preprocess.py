"""preprocess: shards hold the frames and 16 kHz audio qwen-omni-utils would give the model, with the QA fields.

Runs decode in this process (``workers=0``); worker processes are covered in test_preprocess_resume.py.
"""

import inspect
import json
import warnings

import numpy as np
import pytest
import soundfile

from omni_grpo import synthetic
from preprocess import media, shards
from preprocess.media import VideoOptions
from tests.helpers import SMALL_VIDEO, preprocess_here


def write_manifest(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def qwen_frames(path, monkeypatch, **ele):
    """What qwen-omni-utils' fetch_video returns (decord backend): frames [T, H, W, 3], indices, fps."""
    from qwen_omni_utils.v2_5 import vision_process as vp

    monkeypatch.setattr(vp, "get_video_reader_backend", lambda: "decord")
    with_metadata = "return_video_metadata" in inspect.signature(vp.fetch_video).parameters
    extra = {"return_video_metadata": True} if with_metadata else {}
    out, sample_fps = vp.fetch_video({"video": str(path), **ele}, return_video_sample_fps=True, **extra)
    video, metadata = out if with_metadata else (out, None)
    indices = [int(i) for i in metadata["frames_indices"]] if metadata else None
    return video.permute(0, 2, 3, 1).numpy(), indices, float(sample_fps)


def qwen_audio(path):
    """What process_mm_info(..., use_audio_in_video=True) loads for a video."""
    from qwen_omni_utils import process_mm_info

    conversation = [{"role": "user", "content": [{"type": "video", "video": str(path)}]}]
    with synthetic.audioread_without_ffmpeg(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # librosa's notice about its audioread path
        audios = process_mm_info(conversation, use_audio_in_video=True)[0]
    return audios[0]


CLIPS = {
    "h264_8fps": dict(seconds=3.0, fps=8, size=(96, 128), seed=1),
    "h264_25fps": dict(seconds=2.0, fps=25, size=(120, 160), seed=2),
    "hevc_30fps": dict(seconds=2.0, fps=30, size=(96, 128), seed=3, video_codec="libx265"),
}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    for name, kwargs in CLIPS.items():
        if kwargs.get("video_codec") == "libx265" and not synthetic.hevc_available():
            continue
        synthetic.make_clip(folder / f"{name}.mp4", **kwargs)
    rows = [
        {"id": p.stem, "video": p.name, "question": "What happens?", "answer": "x"}
        for p in sorted(folder.glob("*.mp4"))
    ]
    write_manifest(folder / "manifest.jsonl", rows)
    return folder


@pytest.mark.parametrize(
    "video_options,ele",
    [
        (VideoOptions(), {"fps": 2.0}),
        (
            VideoOptions(fps=4.0, min_pixels=28 * 28 * 8, max_pixels=28 * 28 * 30, max_frames=6),
            {"fps": 4.0, "min_pixels": 28 * 28 * 8, "max_pixels": 28 * 28 * 30, "max_frames": 6},
        ),
        (
            VideoOptions(fps=1.0, min_pixels=28 * 28 * 4, total_pixels=28 * 28 * 40),
            {"fps": 1.0, "min_pixels": 28 * 28 * 4, "total_pixels": 28 * 28 * 40},
        ),
    ],
)
def test_frames_match_qwen_omni_utils(clip_dir, tmp_path, monkeypatch, video_options, ele):
    preprocess_here(tmp_path / "out", manifest=clip_dir / "manifest.jsonl", video=video_options)
    ds = shards.load(tmp_path / "out")
    assert len(ds) == len(list(clip_dir.glob("*.mp4")))
    for item in ds:
        expected, indices, sample_fps = qwen_frames(clip_dir / item["video"], monkeypatch, **ele)
        assert item["frames"].dtype == np.uint8
        assert item["frames"].shape == expected.shape  # count and resized size
        assert item["frames"].shape[0] % 2 == 0
        if indices is not None:
            assert item["frame_indices"] == indices
        assert item["fps"] == pytest.approx(sample_fps)
        diff = np.abs(item["frames"].astype(np.float64) - expected).mean()
        assert diff <= 2.0, f"{item['id']}: mean abs diff {diff:.2f}/255 after JPEG"


def test_decoded_frames_equal_qwen_before_jpeg(clip_dir, monkeypatch):
    path = clip_dir / "h264_25fps.mp4"
    decoded = media.decode_clip(path)
    expected, indices, _ = qwen_frames(path, monkeypatch, fps=2.0)
    np.testing.assert_array_equal(decoded.frames, expected.astype(np.uint8))


@pytest.mark.parametrize("rate,channels", [(16000, 1), (48000, 6), (44100, 2), (22050, 1), (11025, 1)])
def test_audio_from_mp4_matches_process_mm_info(tmp_path, rate, channels):
    path = synthetic.make_clip(tmp_path / "a.mp4", seconds=2.0, sample_rate=rate, channels=channels, seed=5)
    decoded = media.decode_clip(path, options=SMALL_VIDEO)
    assert decoded.audio_source == "video"
    audio = decoded.audio
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == 32000  # 16 kHz over the video's 16 frames at 8 fps, cut at the video's end
    reference = qwen_audio(path)
    assert len(reference) >= len(audio) and len(reference) - len(audio) < 0.1 * 16000
    np.testing.assert_allclose(audio, reference[: len(audio)], atol=1e-4)  # 16-bit rounding in audioread
    # Aligned in time: the chirp's pitch at each instant matches, at zero lag.
    expected = synthetic.chirp(2.0, 16000, seed=5)
    assert np.corrcoef(audio, expected)[0, 1] > 0.99


@pytest.mark.parametrize(
    "rate,channels,subtype", [(22050, 1, "PCM_16"), (11025, 1, "PCM_U8"), (44100, 2, "PCM_16"), (48000, 6, "PCM_24")]
)
def test_audio_file_matches_librosa(tmp_path, rate, channels, subtype):
    import librosa

    path = synthetic.make_wav(
        tmp_path / "a.wav", seconds=2.0, sample_rate=rate, channels=channels, subtype=subtype, seed=6
    )
    audio = media.load_audio_file(path)
    reference, sr = librosa.load(str(path), sr=16000)
    assert sr == 16000 and audio.dtype == np.float32
    np.testing.assert_allclose(audio, reference, atol=1e-5)
    assert np.corrcoef(audio, synthetic.chirp(2.0, 16000, seed=6))[0, 1] > 0.98


def test_siq2_build_uses_wav_and_maps_fields(tmp_path):
    root = synthetic.make_siq2_dataset(tmp_path / "siq2", n_clips=3, seconds=2.0)
    qa = [json.loads(line) for line in (root / "qa" / "qa_train.json").read_text().splitlines()]
    # Make the wav of one clip differ from its mp4 track, to prove the wav is the one used.
    vid = qa[0]["vid_name"]
    synthetic.make_wav(root / "audio" / "wav" / f"{vid}.wav", seconds=2.0, sample_rate=22050, seed=99)
    summary = preprocess_here(tmp_path / "out", root=root, video=SMALL_VIDEO)
    assert summary["counts"]["written"] == len(qa)
    ds = shards.load(tmp_path / "out")
    by_id = {item["id"]: item for item in ds}
    assert set(by_id) == {row["qid"] for row in qa}
    for row in qa:
        item = by_id[row["qid"]]
        assert item["question"] == row["q"]
        assert item["options"] == [row["a0"], row["a1"], row["a2"], row["a3"]]
        assert item["answer"] == "ABCD"[row["answer_idx"]]
        assert item["problem_type"] == "multiple_choice"
        assert item["extra"] == {"vid_name": row["vid_name"], "ts": row["ts"], "qid": row["qid"]}
        assert item["audio_source"] == "file" and item["sample_rate"] == 16000
        assert item["audio"].dtype == np.float32 and len(item["audio"]) == 32000
    wav_audio = by_id[qa[0]["qid"]]["audio"]
    assert np.corrcoef(wav_audio, synthetic.chirp(2.0, 16000, seed=99))[0, 1] > 0.98
    reference = soundfile.read(str(root / "audio" / "wav" / f"{vid}.wav"))[0]
    assert len(reference) == 44100


def test_siq2_without_wav_uses_mp4_track(tmp_path):
    root = synthetic.make_siq2_dataset(tmp_path / "siq2", n_clips=2, seconds=2.0)
    for wav in (root / "audio" / "wav").glob("*.wav"):
        wav.unlink()
    preprocess_here(tmp_path / "out", root=root, video=SMALL_VIDEO)
    ds = shards.load(tmp_path / "out")
    assert {item["audio_source"] for item in ds} == {"video"}
    assert all(item["audio"] is not None and len(item["audio"]) == 32000 for item in ds)


def test_jsonl_fields_extra_and_no_audio(tmp_path):
    synthetic.make_clip(tmp_path / "v" / "a.mp4", seconds=1.0)
    synthetic.make_clip(tmp_path / "v" / "quiet.mp4", seconds=1.0, audio=None)
    rows = [
        {
            "id": "mc",
            "video": "v/a.mp4",
            "question": "Q1",
            "options": ["x", "y"],
            "answer": "B",
            "source": "unit",
            "meta": {"k": [1, 2]},
        },
        {"id": 7, "video": "./v/a.mp4", "question": "Q2", "answer": 3.5, "problem_type": "numerical"},
        {"id": "free", "video": "v/quiet.mp4", "question": "Q3", "answer": "a dog"},
    ]
    write_manifest(tmp_path / "m.jsonl", rows)
    summary = preprocess_here(tmp_path / "out", manifest=tmp_path / "m.jsonl", video=SMALL_VIDEO)
    counts = summary["counts"]
    assert (counts["written"], counts["failed"], counts["with_audio"], counts["without_audio"]) == (3, 0, 2, 1)
    assert counts["clips_written"] == 2  # v/a.mp4 is decoded and stored once for its two questions
    items = {item["id"]: item for item in shards.load(tmp_path / "out")}
    assert items["mc"]["options"] == ["x", "y"] and items["mc"]["problem_type"] == "multiple_choice"
    assert items["mc"]["extra"] == {"source": "unit", "meta": {"k": [1, 2]}}
    assert items["7"]["answer"] == "3.5" and items["7"]["problem_type"] == "numerical"
    assert items["7"]["options"] == []
    assert items["free"]["problem_type"] == "free_form"
    assert items["free"]["audio"] is None and items["free"]["audio_source"] == "none"
    assert items["free"]["frames"].shape[0] == 4


def test_require_audio_makes_silent_clip_a_failure(tmp_path):
    synthetic.make_clip(tmp_path / "quiet.mp4", seconds=1.0, audio=None)
    synthetic.make_clip(tmp_path / "loud.mp4", seconds=1.0)
    write_manifest(
        tmp_path / "m.jsonl",
        [
            {"id": "q", "video": "quiet.mp4", "question": "?", "answer": "a"},
            {"id": "l", "video": "loud.mp4", "question": "?", "answer": "a"},
        ],
    )
    summary = preprocess_here(tmp_path / "out", manifest=tmp_path / "m.jsonl", video=SMALL_VIDEO, require_audio=True)
    assert summary["counts"]["written"] == 1 and summary["counts"]["without_audio"] == 0
    failures = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failures] == ["q"]
    assert "no audio" in failures[0]["reason"]


def test_manifest_schema(tmp_path):
    root = synthetic.make_siq2_dataset(tmp_path / "siq2", n_clips=3, seconds=1.0)
    preprocess_here(tmp_path / "out", root=root, video=SMALL_VIDEO, shard_size=2)
    manifest = shards.read_manifest(tmp_path / "out")
    assert manifest["format_version"] == shards.FORMAT_VERSION
    counts = manifest["counts"]
    for key in ("written", "failed", "with_audio", "without_audio", "clips_written", "samples"):
        assert isinstance(counts[key], int)
    assert counts["written"] + counts["failed"] == counts["samples"]
    assert manifest["options"]["fps"] == 2.0 and manifest["options"]["min_pixels"] == 28 * 28 * 4
    assert manifest["qwen_omni_utils"]["defaults"]["frame_factor"] == 2
    assert manifest["bytes_per_clip_second"] > 0
    assert manifest["clip_seconds"] == pytest.approx(3.0)
    assert [s["file"] for s in manifest["shards"]] == ["shard-00000.parquet", "shard-00001.parquet"]
    assert [s["rows"] for s in manifest["shards"]] == [2, 1]
    assert sum(s["samples"] for s in manifest["shards"]) == counts["written"]
    for entry in manifest["shards"]:
        assert entry["sha256"] == shards.sha256_file(tmp_path / "out" / entry["file"])
        assert entry["bytes"] == (tmp_path / "out" / entry["file"]).stat().st_size
    assert sorted(p.name for p in (tmp_path / "out").glob("*.parquet")) == [s["file"] for s in manifest["shards"]]
