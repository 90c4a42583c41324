"""Synthetic media for tests and the demo: mp4 clips, audio files, images and a Social-IQ 2.0 style dataset
(the deliberately broken files the failure tests use are made in `tests/broken_media.py`).

Clips can look like real encodes: NTSC rates (``fps=Fraction(30000, 1001)`` for 29.97,
``Fraction(24000, 1001)`` for 23.976, or the floats ``30000 / 1001`` …), any duration (``seconds=7.3``),
no audio track (``audio=None``), mono to 5.1 AAC at any rate AAC takes (22.05 / 44.1 / 48 kHz).
``make_audio`` writes audio-only files (wav, flac with libsndfile; mp3, m4a with PyAV), ``make_image`` png or
jpg pictures. ``REAL_LIKE_CLIPS`` lists the variants the tests run preprocess on; ``make_mixed_manifest`` one
jsonl manifest holding all of them, and ``make_siq2_dataset(..., real_like=True)`` a Social-IQ 2.0 folder of
clips at mixed frame rates.

Everything is written with PyAV and soundfile (no ffmpeg binary) and is deterministic per ``seed``.
The picture is a square that moves left to right while its colour changes; the sound is a linear chirp whose
pitch rises over the clip (``chirp``), so a test can check that frames and audio are taken at the right times.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import string
from fractions import Fraction
from pathlib import Path

import numpy as np

CHIRP_AMPLITUDE = 0.3
_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 8: "7.1"}
_AAC_FRAME = 1024


def chirp(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """The audio track of ``make_clip(..., audio="tone")``: float32 ``[round(seconds * sample_rate)]``.

    Its frequency rises linearly from ``chirp_band(seed)[0]`` to ``[1]`` Hz over ``seconds`` (kept below
    4 kHz so that every rate down to 11.025 kHz represents it).
    """
    f0, f1 = chirp_band(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * max(seconds, 1e-9)))
    return (CHIRP_AMPLITUDE * np.sin(phase)).astype(np.float32)


def chirp_band(seed: int = 0) -> tuple[float, float]:
    """Start and end frequency (Hz) of the chirp for ``seed``."""
    return 300.0 + 50.0 * (seed % 5), 3000.0 + 100.0 * (seed % 7)


def frame_image(index: int, fps: float, seconds: float, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Frame ``index`` of ``make_clip``: uint8 ``[H, W, 3]``, a coloured square moving over a gradient."""
    height, width = size
    image = _background(size, seed).copy()
    progress = index / fps / max(seconds, 1e-9)
    side = max(2, min(height, width) // 3)
    x0 = int(round(progress * (width - side)))
    y0 = int(round((0.5 + 0.4 * np.sin(2 * np.pi * progress + seed)) * (height - side)))
    colour = 127.5 + 127.5 * np.sin(2 * np.pi * (progress + np.array([0.0, 1 / 3, 2 / 3]) + seed / 7))
    image[y0 : y0 + side, x0 : x0 + side, :] = colour.astype(np.uint8)
    return image


@functools.lru_cache(maxsize=4)
def _background(size: tuple[int, int], seed: int) -> np.ndarray:
    height, width = size
    base = np.random.default_rng(seed).integers(40, 120, size=3)
    ys = np.linspace(0.0, 1.0, height)[:, None, None]
    xs = np.linspace(0.0, 1.0, width)[None, :, None]
    image = base[None, None, :] + 60.0 * ys + 40.0 * xs * np.array([1.0, -0.5, 0.5])
    image = np.clip(image, 0, 255).astype(np.uint8)
    image.setflags(write=False)
    return image


def make_clip(
    path,
    seconds: float = 3.0,
    fps: float | Fraction = 8,
    size: tuple[int, int] = (96, 128),
    audio: str | None = "tone",
    sample_rate: int = 16000,
    channels: int = 1,
    seed: int = 0,
    video_codec: str = "libx264",
) -> Path:
    """Write an mp4 (H.264 by default, ``video_codec="libx265"`` for HEVC) with an AAC track.

    ``size`` is ``(H, W)`` and must be even; the clip has ``max(1, round(seconds * fps))`` frames at the stream
    rate ``Fraction(fps).limit_denominator(1001)`` (so ``30000 / 1001`` gives exactly 29.97 fps).
    ``audio``: ``"tone"`` (``chirp``, each channel scaled by ``1 - 0.1 * c``), ``"silence"`` (zeros) or
    ``None`` (no audio stream). Raises ``av.codec.codec.UnknownCodecError`` if the codec is not built in.
    """
    rate = Fraction(fps).limit_denominator(1001)
    fps = float(rate)
    n_frames = max(1, int(round(seconds * fps)))
    signal = None
    if audio is not None:
        if audio not in ("tone", "silence"):
            raise ValueError(f"audio must be 'tone', 'silence' or None, got {audio!r}")
        mono = chirp(n_frames / fps, sample_rate, seed)
        if audio == "silence":
            mono = np.zeros_like(mono)
        signal = (1.0 - 0.1 * np.arange(channels, dtype=np.float32))[:, None] * mono[None, :]
    frames = (frame_image(i, fps, seconds, size, seed) for i in range(n_frames))
    return write_mp4(path, frames, size, rate, signal, sample_rate, video_codec)


def write_mp4(
    path,
    frames,
    size: tuple[int, int],
    rate: Fraction,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    video_codec: str = "libx264",
) -> Path:
    """Encode ``frames`` (an iterable of uint8 ``[H, W, 3]``, ``size`` = ``(H, W)``, even) at the stream rate
    ``rate`` and, unless None, float ``audio`` ``[channels, n]`` as AAC into an mp4 (H.264, or HEVC with
    ``video_codec="libx265"``). Frames are encoded as they come, so a long clip is never held in memory."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = size
    with av.open(str(path), "w", format="mp4") as container:
        options = {"preset": "veryfast", "crf": "18"}
        if video_codec == "libx265":
            options = {"preset": "ultrafast", "x265-params": "log-level=none"}
        vstream = container.add_stream(video_codec, rate=rate, options=options)
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate, layout=_LAYOUTS[audio.shape[0]])
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))
        if astream is not None:
            _mux_audio(container, astream, audio, sample_rate, _AAC_FRAME, _LAYOUTS[audio.shape[0]])
    return path


def make_wav(
    path,
    seconds: float = 3.0,
    sample_rate: int = 22050,
    channels: int = 1,
    subtype: str = "PCM_16",
    seed: int = 0,
) -> Path:
    """Write ``chirp`` as a wav file (``subtype="PCM_U8"`` for 8-bit); channel c is scaled by ``1 - 0.1 * c``."""
    import soundfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mono = chirp(seconds, sample_rate, seed)
    gains = 1.0 - 0.1 * np.arange(channels, dtype=np.float32)
    soundfile.write(str(path), mono[:, None] * gains[None, :], sample_rate, subtype=subtype)
    return path


AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a")
_PYAV_AUDIO = {".mp3": ("mp3", "mp3", 1152), ".m4a": ("ipod", "aac", _AAC_FRAME)}  # container, codec, frame


def make_audio(path, seconds: float = 3.0, sample_rate: int = 22050, channels: int = 1, seed: int = 0) -> Path:
    """An audio-only file of ``chirp`` (channel c scaled by ``1 - 0.1 * c``), its format from the suffix:
    ``.wav`` / ``.flac`` (libsndfile, 16-bit) or ``.mp3`` / ``.m4a`` (PyAV: MP3, AAC in an MP4 container)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".wav", ".flac"):
        return make_wav(path, seconds=seconds, sample_rate=sample_rate, channels=channels, seed=seed)
    if suffix not in _PYAV_AUDIO:
        raise ValueError(f"make_audio writes {', '.join(AUDIO_SUFFIXES)}, got {path.name}")
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    container_format, codec, frame_size = _PYAV_AUDIO[suffix]
    mono = chirp(seconds, sample_rate, seed)
    gains = (1.0 - 0.1 * np.arange(channels, dtype=np.float32))[:, None]
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=sample_rate, layout=_LAYOUTS[channels])
        _mux_audio(container, stream, gains * mono[None, :], sample_rate, frame_size, _LAYOUTS[channels])
    return path


def _mux_audio(container, stream, signal: np.ndarray, sample_rate: int, frame_size: int, layout: str) -> None:
    """Encode float ``[channels, n]`` into ``stream`` in frames of ``frame_size`` (the last zero-padded)."""
    import av

    signal = np.ascontiguousarray(signal, dtype=np.float32)
    for start in range(0, signal.shape[1], frame_size):
        chunk = np.zeros((signal.shape[0], frame_size), dtype=np.float32)
        part = signal[:, start : start + frame_size]
        chunk[:, : part.shape[1]] = part
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate, frame.pts = sample_rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def make_image(path, size: tuple[int, int] = (360, 640), seed: int = 0) -> Path:
    """A picture (``size`` = ``(H, W)``; png or jpg by suffix): frame 0 of ``make_clip`` with the same seed."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame_image(0, 1.0, 1.0, size, seed)).save(path, quality=95)
    return path


# The real-encode variants (name → make_clip keyword arguments): frame rates, odd and Social-IQ lengths,
# no audio track, mono / 5.1 at the rates real datasets ship.
REAL_LIKE_CLIPS = {
    "pal25_7s3_mono22k": dict(fps=25, seconds=7.3, sample_rate=22050, channels=1),
    "ntsc2997_5s_51_48k": dict(fps=Fraction(30000, 1001), seconds=5.0, sample_rate=48000, channels=6),
    "film23976_4s7_stereo44k": dict(fps=Fraction(24000, 1001), seconds=4.7, sample_rate=44100, channels=2),
    "web30_6s1_silent_track": dict(fps=30, seconds=6.1, audio=None),
    "siq2_60s_640x360": dict(fps=Fraction(30000, 1001), seconds=60.0, size=(360, 640), sample_rate=44100),
}


# Audio-only files (name, rate, channels) of make_mixed_manifest: every format at the rates real datasets ship
# (MP3 holds at most 2 channels), and images (name, (H, W)).
MIXED_AUDIO = [
    ("a22k_mono.wav", 22050, 1),
    ("a48k_51.flac", 48000, 6),
    ("a44k_stereo.mp3", 44100, 2),
    ("a22k_mono.mp3", 22050, 1),
    ("a48k_51.m4a", 48000, 6),
    ("a44k_mono.m4a", 44100, 1),
]
MIXED_IMAGES = [("pic.png", (300, 500)), ("pic.jpg", (720, 1280))]


def make_mixed_manifest(folder, audio_seconds: float = 3.3, seed: int = 0) -> Path:
    """A jsonl manifest (``folder/manifest.jsonl``, returned) mixing every sample layout: each short
    ``REAL_LIKE_CLIPS`` video (with and without a sound track), each ``MIXED_AUDIO`` audio-only file and each
    ``MIXED_IMAGES`` image, one two-option question each; a sample's id is its file's stem."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    qa = {"question": "What happens?", "options": ["x", "y"], "answer": "A"}
    rows = []
    for name, kwargs in REAL_LIKE_CLIPS.items():
        if kwargs["seconds"] < 30:
            make_clip(folder / f"{name}.mp4", **{**kwargs, "seed": seed})
            rows.append({"id": name, "video": f"{name}.mp4", **qa})
    for name, rate, channels in MIXED_AUDIO:
        make_audio(folder / name, seconds=audio_seconds, sample_rate=rate, channels=channels, seed=seed)
        rows.append({"id": name, "audio": name, **qa})
    for name, size in MIXED_IMAGES:
        make_image(folder / name, size=size, seed=seed)
        rows.append({"id": name, "image": name, **qa})
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def hevc_available() -> bool:
    """Whether this PyAV build can encode HEVC (``make_clip(..., video_codec="libx265")``)."""
    import av

    try:
        av.codec.Codec("libx265", "w")
    except Exception:
        return False
    return True


_QUESTIONS = [
    (
        "Why does the person on the left laugh?",
        [
            "Because the other person told a joke.",
            "Because they are nervous.",
            "Because they dropped a cup.",
            "They do not laugh.",
        ],
    ),
    (
        "How does the woman feel when the man interrupts her?",
        [
            "Annoyed, she frowns and stops talking.",
            "Delighted, she claps.",
            "Indifferent, she keeps reading.",
            "Scared, she leaves the room.",
        ],
    ),
    (
        "What is the relationship between the two speakers?",
        [
            "They are old friends catching up.",
            "They are strangers on a train.",
            "A teacher and a pupil.",
            "A customer and a waiter.",
        ],
    ),
    (
        "Why does the man lower his voice?",
        ["He is sharing a secret.", "He has a sore throat.", "The music got louder.", "He is talking to a baby."],
    ),
    (
        "How does the group react to the announcement?",
        ["They cheer and hug each other.", "They ignore it.", "They argue about it.", "They fall asleep."],
    ),
    (
        "Is the speaker being sincere when she compliments the cake?",
        [
            "No, her tone is sarcastic.",
            "Yes, she asks for the recipe.",
            "She does not mention the cake.",
            "She is talking about a different cake.",
        ],
    ),
]
_ID_CHARS = string.ascii_letters + string.digits + "_-"


def make_siq2_dataset(
    root, n_clips: int = 8, split: str = "train", seed: int = 0, seconds: float = 3.0, real_like: bool = False
) -> Path:
    """Write a small dataset in the Social-IQ 2.0 layout under ``root`` and return ``root``.

    ``root/qa/qa_{split}.json`` is JSON Lines (one object per line: ``qid, q, vid_name, ts, a0..a3,
    answer_idx``); ``root/video/{vid_name}.mp4`` holds each clip (H.264 + AAC at 16 kHz) and
    ``root/audio/wav/{vid_name}.wav`` the same chirp at 22.05 kHz mono 16-bit, as the real dataset ships it.
    Each video gets 2 or 3 questions; the correct answer is moved to a varying index. With ``real_like``
    clip ``i`` is the short ``REAL_LIKE_CLIPS`` variant ``i % 4`` (25 / 29.97 / 23.976 / 30 fps, odd
    durations; the 30 fps one has neither a sound track nor a wav) and ``seconds`` is not used.
    """
    root = Path(root)
    rng = random.Random(seed)
    (root / "qa").mkdir(parents=True, exist_ok=True)
    lines = []
    for clip in range(n_clips):
        vid_name = "".join(rng.choice(_ID_CHARS) for _ in range(11))
        clip_seed = seed * 1000 + clip
        kwargs = dict(seconds=seconds)
        if real_like:
            variants = [v for v in REAL_LIKE_CLIPS.values() if v["seconds"] < 30]
            kwargs = variants[clip % len(variants)]
        make_clip(root / "video" / f"{vid_name}.mp4", **{**kwargs, "seed": clip_seed})
        if kwargs.get("audio", "tone") is not None:
            make_wav(
                root / "audio" / "wav" / f"{vid_name}.wav", seconds=kwargs["seconds"], sample_rate=22050, seed=clip_seed
            )
        end = int(round(kwargs["seconds"]))
        for k in range(2 + clip % 2):
            question, answers = _QUESTIONS[(clip + k) % len(_QUESTIONS)]
            answer_idx = rng.randrange(4)
            options = answers[1:]
            options.insert(answer_idx, answers[0])
            lines.append(
                {
                    "qid": f"{vid_name}_{k}",
                    "q": question,
                    "vid_name": vid_name,
                    "ts": f"00:00-{end // 60:02d}:{end % 60:02d}",
                    "a0": options[0],
                    "a1": options[1],
                    "a2": options[2],
                    "a3": options[3],
                    "answer_idx": answer_idx,
                }
            )
    with open(root / "qa" / f"qa_{split}.json", "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return root


@contextlib.contextmanager
def audioread_without_ffmpeg():
    """Let qwen-omni-utils read a video's audio track where no ``ffmpeg`` program is installed.

    ``qwen_omni_utils.process_mm_info(..., use_audio_in_video=True)`` decodes the track through
    ``audioread.ffdec.FFmpegAudioFile``, which runs the ``ffmpeg`` program. Inside this block, when that
    program is missing, the class is replaced by one that decodes with PyAV and yields the same interleaved
    16-bit buffers at the native rate and channel count. Yields whether the stand-in is in use.
    """
    import audioread.ffdec

    if audioread.ffdec.available():
        yield False
        return
    saved = audioread.ffdec.FFmpegAudioFile
    audioread.ffdec.FFmpegAudioFile = _pyav_audio_file_class()
    try:
        yield True
    finally:
        audioread.ffdec.FFmpegAudioFile = saved


@functools.lru_cache(maxsize=1)
def _pyav_audio_file_class():
    import audioread.rawread

    # librosa only treats instances of an available audioread backend as open readers; RawAudioFile always is.
    class PyAVAudioFile(audioread.rawread.RawAudioFile):
        def __init__(self, path):
            import av

            self._container = av.open(str(path))
            self._stream = self._container.streams.audio[0]

        @property
        def samplerate(self):
            return self._stream.codec_context.sample_rate

        @property
        def channels(self):
            return self._stream.codec_context.channels

        @property
        def duration(self):
            stream = self._stream
            return float(stream.duration * stream.time_base) if stream.duration else 0.0

        def read_data(self, block_samples=1024):
            import av

            resampler = av.AudioResampler(format="s16", layout=self._stream.codec_context.layout, rate=self.samplerate)
            for frame in self._container.decode(self._stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().tobytes()
            for out in resampler.resample(None):
                yield out.to_ndarray().tobytes()

        def close(self):
            self._container.close()

        def __iter__(self):
            return self.read_data()

    return PyAVAudioFile
