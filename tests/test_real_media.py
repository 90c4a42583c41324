"""Media like real encodes reach the shards right: NTSC and PAL frame rates, odd durations, clips without a
sound track, mono to 5.1 audio at 22.05 / 44.1 / 48 kHz, audio-only files and images, one manifest mixing them
(lessons item 14: every synthetic clip used to be exactly 2.0 fps)."""

import json
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from omni_grpo import synthetic
from preprocess import shards
from preprocess.build import BuildOptions, build

VIDEOS = {k: v for k, v in synthetic.REAL_LIKE_CLIPS.items() if v["seconds"] < 30}
AUDIO_FILES = synthetic.MIXED_AUDIO
AUDIO_SECONDS = 3.3
IMAGES = synthetic.MIXED_IMAGES
QA = {"question": "What happens?", "options": ["x", "y"], "answer": "A"}


def dominant_hz(audio: np.ndarray, centre_s: float, rate: int = 16000, window_s: float = 0.25) -> float:
    start = int((centre_s - window_s / 2) * rate)
    chunk = audio[start : start + int(window_s * rate)] * np.hanning(int(window_s * rate))
    spectrum = np.abs(np.fft.rfft(chunk))
    return float(np.fft.rfftfreq(chunk.shape[0], 1 / rate)[np.argmax(spectrum)])


def chirp_hz(t: float, seconds: float, seed: int = 0) -> float:
    f0, f1 = synthetic.chirp_band(seed)
    return f0 + (f1 - f0) * t / seconds


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One manifest with each real-like video, each audio-only file and each image; preprocessed once."""
    folder = tmp_path_factory.mktemp("real_like")
    synthetic.make_mixed_manifest(folder, audio_seconds=AUDIO_SECONDS)
    build(
        BuildOptions(
            source="jsonl", manifest=folder / "manifest.jsonl", output=folder / "out", workers=0, progress=False
        )
    )
    data = shards.load(folder / "out")
    return folder, {data[i]["id"]: data[i] for i in range(len(data))}


def test_every_sample_is_written(mixed):
    folder, samples = mixed
    assert sorted(samples) == sorted([*VIDEOS, *(n for n, _, _ in AUDIO_FILES), *(n for n, _ in IMAGES)])
    assert (folder / "out" / "failures.jsonl").read_text() == ""
    manifest = json.loads((folder / "out" / "manifest.json").read_text())
    assert manifest["modalities"] == {
        "video": len(VIDEOS) - 1,
        "video_only": 1,
        "audio": len(AUDIO_FILES),
        "image": len(IMAGES),
    }


@pytest.mark.parametrize("name", list(VIDEOS))
def test_frames_span_the_whole_clip_at_its_own_fps(mixed, name):
    _, samples = mixed
    sample, kwargs = samples[name], VIDEOS[name]
    rate = Fraction(kwargs["fps"]).limit_denominator(1001)
    total = round(kwargs["seconds"] * rate)
    n = len(sample["frame_indices"])
    assert sample["modality"] == "video" and sample["frames"].shape[0] == n
    assert sample["frame_indices"] == np.linspace(0, total - 1, n).round().astype(int).tolist()
    assert sample["frame_indices"][-1] == total - 1  # the last frame of the clip is seen
    assert sample["fps"] == pytest.approx(n / total * float(rate))
    # the stored last frame is the clip's last frame, not one a few frames earlier
    h, w = sample["frames"].shape[1:3]
    size = kwargs.get("size", (96, 128))

    def error(index):
        from PIL import Image

        want = Image.fromarray(synthetic.frame_image(index, float(rate), kwargs["seconds"], size)).resize((w, h))
        return np.abs(np.asarray(want, dtype=float) - sample["frames"][-1]).mean()

    assert error(total - 1) < error(total - 1 - max(2, total // 10))


def test_the_clips_keep_different_effective_fps(mixed):
    _, samples = mixed
    rates = {round(samples[name]["fps"], 4) for name in VIDEOS}
    assert len(rates) >= 3 and 2.0 not in rates


@pytest.mark.parametrize("name", [n for n, k in VIDEOS.items() if k.get("audio", "tone") is not None])
def test_video_audio_is_16k_mono_of_the_clip_duration(mixed, name):
    _, samples = mixed
    sample, kwargs = samples[name], VIDEOS[name]
    rate = float(Fraction(kwargs["fps"]).limit_denominator(1001))
    seconds = round(kwargs["seconds"] * rate) / rate
    assert sample["has_audio"] and sample["audio"].ndim == 1 and sample["sample_rate"] == 16000
    assert sample["audio"].shape[0] == pytest.approx(seconds * 16000, abs=2)
    assert dominant_hz(sample["audio"], seconds / 2) == pytest.approx(chirp_hz(seconds / 2, seconds), abs=30)


def test_a_clip_without_sound_track_is_a_video_only_sample(mixed):
    _, samples = mixed
    sample = samples["web30_6s1_silent_track"]
    assert sample["modality"] == "video" and not sample["has_audio"] and sample["audio"] is None
    assert sample["frames"].ndim == 4


@pytest.mark.parametrize("name,rate,channels", AUDIO_FILES)
def test_audio_only_files(mixed, name, rate, channels):
    _, samples = mixed
    sample = samples[name]
    assert sample["modality"] == "audio" and sample["frames"] is None and sample["fps"] is None
    assert sample["audio"].ndim == 1
    # lossy encoders add up to one frame of priming/padding (AAC 1024, MP3 1152 samples at the source rate)
    assert sample["audio"].shape[0] / 16000 == pytest.approx(AUDIO_SECONDS, abs=1152 / rate + 1e-3)
    middle = AUDIO_SECONDS / 2
    assert dominant_hz(sample["audio"], middle) == pytest.approx(chirp_hz(middle, AUDIO_SECONDS), abs=40)
    assert sample["prompt_tokens"] > 25 * AUDIO_SECONDS


@pytest.mark.parametrize("name,size", IMAGES)
def test_images(mixed, name, size):
    _, samples = mixed
    sample = samples[name]
    assert sample["modality"] == "image" and sample["frames"] is None and not sample["has_audio"]
    h, w = sample["image"].shape[:2]
    assert sample["image"].shape[2] == 3 and h % 28 == 0 and w % 28 == 0
    assert abs(w / h - size[1] / size[0]) < 0.15
    from preprocess.budget import grid_tokens

    assert sample["prompt_tokens"] > grid_tokens(h, w)


def test_require_audio_fails_only_the_video_without_sound(mixed, tmp_path):
    folder, _ = mixed
    build(
        BuildOptions(
            source="jsonl",
            manifest=folder / "manifest.jsonl",
            output=tmp_path / "o",
            workers=0,
            progress=False,
            require_audio=True,
        )
    )
    failures = [json.loads(line) for line in (tmp_path / "o" / "failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failures] == ["web30_6s1_silent_track"]
    assert "--require-audio" in failures[0]["reason"]


def test_a_real_like_siq2_folder_keeps_each_clips_fps_and_its_silent_clip(tmp_path):
    root = synthetic.make_siq2_dataset(tmp_path / "siq2", n_clips=4, real_like=True)
    build(BuildOptions(source="siq2", root=root, output=tmp_path / "o", workers=0, progress=False))
    assert (tmp_path / "o" / "failures.jsonl").read_text() == ""
    data = shards.load(tmp_path / "o")
    clips = {}
    for i in range(len(data)):
        clips.setdefault(data[i]["video"], data[i])
    assert len(clips) == 4 and len({round(c["fps"], 4) for c in clips.values()}) == 4
    silent = [c for c in clips.values() if not c["has_audio"]]
    assert len(silent) == 1 and silent[0]["modality"] == "video" and silent[0]["audio_source"] == "none"
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["modalities"]["video_only"] == manifest["counts"]["without_audio"] > 0


def test_image_and_video_in_one_sample_is_one_clear_failure(tmp_path):
    synthetic.make_image(tmp_path / "p.png", size=(56, 56))
    synthetic.make_clip(tmp_path / "c.mp4", seconds=1.0)
    rows = [{"id": "both", "image": "p.png", "video": "c.mp4", **QA}, {"id": "ok", "image": "p.png", **QA}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    build(BuildOptions(source="jsonl", manifest=tmp_path / "m.jsonl", output=tmp_path / "o", workers=0, progress=False))
    failures = [json.loads(line) for line in (tmp_path / "o" / "failures.jsonl").read_text().splitlines()]
    assert [(f["id"], f["line"]) for f in failures] == [("both", 1)]
    assert "'image' cannot be combined with 'video'" in failures[0]["reason"]


def test_version_1_shards_are_still_read(mixed, tmp_path):
    """A folder written before format 2 (no modality / media_tokens / prompt_tokens) loads as video samples."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder, _ = mixed
    src = folder / "out"
    manifest = json.loads((src / "manifest.json").read_text())
    out = tmp_path / "v1"
    out.mkdir()
    table = pq.read_table(src / manifest["shards"][0]["file"])
    keep = [i for i, m in enumerate(table.column("modality").to_pylist()) if m == "video"]
    table = table.take(keep).drop_columns(["modality", "media_tokens"])
    samples = table.column("samples").combine_chunks()
    old_struct = pa.struct([f for f in samples.type.value_type if f.name != "prompt_tokens"])
    table = table.set_column(
        table.schema.get_field_index("samples"),
        "samples",
        pa.array(
            [[{k: v for k, v in s.items() if k != "prompt_tokens"} for s in row] for row in samples.to_pylist()],
            type=pa.list_(old_struct),
        ),
    )
    table = table.replace_schema_metadata({shards.VERSION_KEY: b"1"})
    pq.write_table(table, out / "shard-00000.parquet", row_group_size=1)
    n = sum(len(r) for r in table.column("samples").to_pylist())
    manifest.update(
        format_version=1,
        shards=[
            {
                "file": "shard-00000.parquet",
                "rows": table.num_rows,
                "samples": n,
                "sha256": shards.sha256_file(out / "shard-00000.parquet"),
            }
        ],
    )
    (out / "manifest.json").write_text(json.dumps(manifest))
    data = shards.load(out)
    assert len(data) == len(VIDEOS)
    for i in range(len(data)):
        sample = data[i]
        assert sample["modality"] == "video" and sample["prompt_tokens"] is None and sample["frames"].ndim == 4
        assert isinstance(sample["fps"], float)


FORENSICS = Path("/usr/share/forensics-samples/original-files")
REAL_FILES = [
    ("video", "movie2/movie-hello.mp4"),
    ("video", "movie1/VID_20191220_170832.mp4"),
    ("audio", "audio1/debian.mp3"),
    ("audio", "audio1/debian.ogg"),
    ("audio", "audio1/debian.wav"),
    ("image", "pic1/IMG_1054.JPG"),
    ("image", "pic1/debian.png"),
]


@pytest.mark.skipif(
    not FORENSICS.is_dir(),
    reason="real third-party media come from the Debian package "
    "forensics-samples-files (apt-get install forensics-samples-files); not installed here",
)
def test_real_third_party_media(tmp_path):
    """Phone and screen recordings with speech (H.264 + AAC 48 kHz stereo at 27.02 and 30.12 fps), speech as
    mp3 / ogg / wav, photos and a png: all preprocess into samples that fit the default budget."""
    rows = []
    for i, (kind, rel) in enumerate(REAL_FILES):
        link = tmp_path / f"f{i}{Path(rel).suffix}"
        os.symlink(FORENSICS / rel, link)
        rows.append({"id": rel, kind: link.name, **QA})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    build(BuildOptions(source="jsonl", manifest=tmp_path / "m.jsonl", output=tmp_path / "o", workers=0, progress=False))
    assert (tmp_path / "o" / "failures.jsonl").read_text() == ""
    data = shards.load(tmp_path / "o")
    by_id = {data[i]["id"]: data[i] for i in range(len(data))}
    for kind, rel in REAL_FILES:
        assert by_id[rel]["modality"] == kind and by_id[rel]["prompt_tokens"] <= 2048
    hello = by_id["movie2/movie-hello.mp4"]
    assert hello["has_audio"] and hello["audio"].shape[0] == pytest.approx(8.3 * 16000, rel=0.02)
    assert np.abs(hello["audio"]).max() > 0.01  # speech, not silence


@pytest.mark.skipif(not FORENSICS.is_dir(), reason="needs the Debian package forensics-samples-files")
def test_real_mp4_with_a_trimmed_last_packet_matches_qwen_omni_utils(monkeypatch):
    """movie-hello.mp4's last packet is discarded by its edit list: 250 packets, 249 decodable frames. decord
    (qwen-omni-utils' reader) counts 250 and repeats the last frame; preprocess does the same, not a failure."""
    from preprocess.media import decode_clip
    from tests.test_preprocess import qwen_frames

    path = FORENSICS / "movie2/movie-hello.mp4"
    want, indices, fps = qwen_frames(path, monkeypatch, fps=2.0)
    clip = decode_clip(path)
    assert clip.source_frames == 250 and clip.frame_indices[-1] == 249
    if indices is not None:
        assert clip.frame_indices == indices
    assert clip.fps == pytest.approx(fps) and clip.frames.shape == want.shape
    assert np.abs(clip.frames.astype(int) - want.astype(int)).mean() < 1.0
