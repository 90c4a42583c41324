"""Decode one video into the frames and 16 kHz audio that Qwen-Omni would see.

Frames: the same indices, count and resized size as ``qwen_omni_utils.fetch_video`` with its decord
backend (the one it picks when decord is installed and torchcodec is not):

* ``total_frames`` is the number of packets in the video stream (decord's ``len(VideoReader)``) and
  ``video_fps`` the stream's average frame rate (decord's ``get_avg_fps()``);
* ``nframes`` comes from qwen-omni-utils' own ``smart_nframes`` and the indices from
  ``torch.linspace(0, total_frames - 1, nframes).round()``, as in ``_read_video_decord``;
* the size comes from its ``smart_resize`` with ``max_pixels`` derived from ``total_pixels`` exactly as in
  ``fetch_video``; the resize is the same torchvision bicubic, antialiased resize.

Departures: frames are decoded with PyAV (errors become a ``MediaError`` instead of a crash), and a video
whose stream ends before a needed frame is rejected, where decord would return a different frame.

Audio: what ``process_mm_info(..., use_audio_in_video=True)`` loads for the whole video (every channel
averaged to mono, resampled to 16 kHz with soxr "HQ" and librosa's length rule), taken from a separate audio
file when the dataset ships one, else from the video's first audio track (decoded with PyAV, so no ffmpeg
program is needed). Departure: the audio is cut at the end of the video stream
(``total_frames / video_fps`` seconds), so a longer wav or the encoder's padding at the end of an AAC track
does not outlast the frames.

Prompt budget (``budget``, see ``preprocess.budget``): when qwen-omni-utils' frames would make the prompt
longer than the budget, fewer and smaller frames are taken (still spread uniformly over the whole clip); the
audio is kept whole. ``DecodedClip.media_tokens`` is the count the processor emits.

Family (``family``): frames and images are sized on the model family's pixel grid (``budget.PIXEL_GRID``: 28
pixels for Qwen2.5-Omni as in qwen-omni-utils, 32 for Qwen3-Omni, with qwen-omni-utils' pixel limits), so
that the family's processor takes them as they are and the counts are that family's.

Other media: ``decode_audio_only`` reads an audio file alone (wav, flac, ogg with libsndfile; mp3, m4a and
anything else PyAV decodes), ``load_image`` an image (resized as qwen-omni-utils' ``fetch_image``: PIL
bicubic to ``smart_resize``'s size with its image pixel limits, shrunk further under a budget).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .budget import DEFAULT_FAMILY, BudgetError, PromptBudget, fit_video, grid_tokens, media_tokens, pixel_grid

SAMPLE_RATE = 16000
DEFAULT_FPS = 2.0


class MediaError(Exception):
    """A video or audio file that cannot be used; the message says why in words a person understands."""


class OverBudgetError(MediaError):
    """Media that do not fit the prompt budget with the text planned for (a shorter question may fit)."""


@dataclass(frozen=True)
class VideoOptions:
    """Frame sampling options with qwen-omni-utils' meaning; ``None`` means its default."""

    fps: float = DEFAULT_FPS
    min_pixels: int | None = None
    max_pixels: int | None = None
    total_pixels: float | None = None
    min_frames: int | None = None
    max_frames: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DecodedClip:
    """One sample's media decoded for the model. ``modality``: ``video`` (``frames`` uint8 ``[T, H, W, 3]``,
    ``audio`` its sound or None), ``audio`` (``frames`` None) or ``image`` (``frames`` ``[1, H, W, 3]``,
    ``fps`` None). ``audio`` is float32 mono 16 kHz; ``media_tokens`` the prompt tokens of these media."""

    frames: np.ndarray | None
    frame_indices: list[int]
    fps: float | None
    source_fps: float | None
    source_frames: int
    source_size: tuple[int, int] | None
    audio: np.ndarray | None
    audio_source: str
    modality: str = "video"
    media_tokens: int = 0

    @property
    def duration(self) -> float:
        """Seconds of video (of audio for an audio-only sample; 0 for an image)."""
        if self.modality == "audio":
            return self.audio.shape[0] / SAMPLE_RATE
        if self.modality == "image":
            return 0.0
        return self.source_frames / self.source_fps


def _vision_process():
    from qwen_omni_utils.v2_5 import vision_process

    return vision_process


def qwen_defaults() -> dict:
    """The video defaults of the installed qwen-omni-utils (0.0.8 names them, 0.0.9 derives them)."""
    vp = _vision_process()
    if hasattr(vp, "VIDEO_MIN_PIXELS"):
        factor = vp.IMAGE_FACTOR
        min_pixels, max_pixels, total_pixels = vp.VIDEO_MIN_PIXELS, vp.VIDEO_MAX_PIXELS, vp.VIDEO_TOTAL_PIXELS
    else:
        factor = 14 * vp.SPATIAL_MERGE_SIZE
        min_pixels = vp.VIDEO_MIN_TOKEN_NUM * factor * factor
        max_pixels = vp.VIDEO_MAX_TOKEN_NUM * factor * factor
        total_pixels = vp.MODEL_SEQ_LEN * factor * factor * 0.9
    return {
        "image_factor": factor,
        "frame_factor": vp.FRAME_FACTOR,
        "fps": vp.FPS,
        "min_frames": vp.FPS_MIN_FRAMES,
        "max_frames": vp.FPS_MAX_FRAMES,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "total_pixels": total_pixels,
    }


def _ele(options: VideoOptions) -> dict:
    ele = {"fps": options.fps}
    for key in ("min_pixels", "max_pixels", "total_pixels", "min_frames", "max_frames"):
        value = getattr(options, key)
        if value is not None:
            ele[key] = value
    return ele


def sample_indices(total_frames: int, video_fps: float, options: VideoOptions) -> tuple[list[int], float]:
    """Frame indices and their frame rate, as qwen-omni-utils' decord reader picks them."""
    import torch

    vp = _vision_process()
    try:
        nframes = vp.smart_nframes(_ele(options), total_frames=total_frames, video_fps=video_fps)
    except ValueError as exc:
        raise MediaError(
            f"video too short for the model: {total_frames} frame(s) at {video_fps:.3g} fps (qwen-omni-utils: {exc})"
        ) from None
    indices = torch.linspace(0, total_frames - 1, nframes).round().long().tolist()
    return indices, nframes / max(total_frames, 1e-6) * video_fps


def resized_size(
    height: int, width: int, nframes: int, options: VideoOptions, family: str = DEFAULT_FAMILY
) -> tuple[int, int]:
    """``(H, W)`` of the sampled frames, as qwen-omni-utils' ``fetch_video`` computes it, on ``family``'s pixel
    grid (its pixel limits kept)."""
    vp = _vision_process()
    defaults = qwen_defaults()
    min_pixels = options.min_pixels if options.min_pixels is not None else defaults["min_pixels"]
    total_pixels = options.total_pixels if options.total_pixels is not None else defaults["total_pixels"]
    max_pixels = max(min(defaults["max_pixels"], total_pixels / nframes * vp.FRAME_FACTOR), int(min_pixels * 1.05))
    if options.max_pixels is not None:
        max_pixels = min(options.max_pixels, max_pixels)
    try:
        return vp.smart_resize(height, width, factor=pixel_grid(family), min_pixels=min_pixels, max_pixels=max_pixels)
    except (ValueError, AssertionError) as exc:
        raise MediaError(f"cannot resize a {width}x{height} video with these pixel limits: {exc}") from None


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic, antialiased resize of uint8 ``[T, H, W, 3]`` to ``size`` (torchvision, as fetch_video)."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)
    out = F.resize(video, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
    return out.permute(0, 2, 3, 1).contiguous().numpy()


def to_16k_mono(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """float ``[channels, n]`` at ``sample_rate`` → float32 mono at 16 kHz, as ``librosa.load(sr=16000)``."""
    import soxr

    mono = np.asarray(samples, dtype=np.float32)
    if mono.ndim == 2:
        mono = mono.mean(axis=0)
    if sample_rate == SAMPLE_RATE:
        return np.ascontiguousarray(mono, dtype=np.float32)
    n_out = int(math.ceil(mono.shape[0] * SAMPLE_RATE / sample_rate))
    out = soxr.resample(mono, sample_rate, SAMPLE_RATE, quality="soxr_hq") if mono.size else mono
    out = np.asarray(out, dtype=np.float32)[:n_out]
    if out.shape[0] < n_out:
        out = np.pad(out, (0, n_out - out.shape[0]))
    return out


SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")


def load_audio_file(path) -> np.ndarray:
    """An audio file (any rate, channel count or bit depth) as float32 mono 16 kHz: wav/flac/ogg/aiff with
    libsndfile, anything else (mp3, m4a, the audio track of a video) with PyAV."""
    import soundfile

    path = Path(path)
    _check_file(path, "audio")
    if path.suffix.lower() not in SOUNDFILE_SUFFIXES:
        return to_16k_mono(*_read_audio_pyav(path))
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise MediaError(f"cannot read audio file {path.name}: {_short(exc)}") from None
    return to_16k_mono(data.T, rate)


def _read_audio_pyav(path: Path):
    """The first audio track of ``path`` as ``(float32 [channels, n], sample_rate)``."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError(f"{path.name} has no audio track")
            astream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp")
            chunks, rate = [], None
            for frame in container.decode(astream):
                rate = frame.sample_rate
                chunks.extend(out.to_ndarray() for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray() for out in resampler.resample(None))
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError(
            f"cannot read audio file {path.name} ({_short(exc)}); the file is damaged, truncated or not audio"
        ) from None
    if not chunks:
        raise MediaError(f"audio file {path.name} holds no audio samples")
    return np.concatenate(chunks, axis=1), rate


def decode_audio_only(audio_path, budget: PromptBudget | None = None, family: str = DEFAULT_FAMILY) -> DecodedClip:
    """An audio-only sample: the whole file as 16 kHz mono (never cut; too long for ``budget`` is an error)."""
    audio = load_audio_file(audio_path)
    if audio.shape[0] == 0:
        raise MediaError(f"audio file {Path(audio_path).name} holds no audio samples")
    tokens = media_tokens("audio", audio_samples=audio.shape[0], family=family)
    if budget is not None and budget.text_tokens + tokens > budget.max_tokens:
        raise OverBudgetError(
            _over_budget(
                Path(audio_path).name,
                budget,
                f"needs {budget.text_tokens + tokens} tokens ({tokens} for "
                f"{audio.shape[0] / SAMPLE_RATE:.1f} s of audio, {budget.text_tokens} for text)",
            )
        )
    return DecodedClip(
        frames=None,
        frame_indices=[],
        fps=None,
        source_fps=None,
        source_frames=0,
        source_size=None,
        audio=audio,
        audio_source="file",
        modality="audio",
        media_tokens=tokens,
    )


def load_image(image_path, budget: PromptBudget | None = None, family: str = DEFAULT_FAMILY) -> DecodedClip:
    """An image sample: RGB, resized as qwen-omni-utils' ``fetch_image`` (within its image pixel limits) on
    ``family``'s pixel grid (28 or 32 pixels), smaller when ``budget`` requires it."""
    from PIL import Image

    path = Path(image_path)
    _check_file(path, "image")
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except Exception as exc:
        raise MediaError(
            f"cannot read image {path.name} ({_short(exc)}); the file is damaged or not an image"
        ) from None
    vp = _vision_process()
    factor = qwen_defaults()["image_factor"]
    min_pixels, max_pixels = vp.IMAGE_MIN_TOKEN_NUM * factor**2, vp.IMAGE_MAX_TOKEN_NUM * factor**2
    factor = pixel_grid(family)
    width, height = image.size
    if budget is not None:
        room = budget.max_tokens - budget.text_tokens
        if room < 1:
            raise OverBudgetError(_over_budget(path.name, budget, f"its text alone takes {budget.text_tokens} tokens"))
        max_pixels = min(max_pixels, room * factor * factor)
        min_pixels = min(min_pixels, factor * factor)
    size = _grid_size(height, width, min_pixels, max_pixels, f"image {path.name}", family)
    tokens = grid_tokens(*size, family)
    if budget is not None and budget.text_tokens + tokens > budget.max_tokens:
        raise OverBudgetError(
            _over_budget(path.name, budget, f"its smallest size {size[1]}x{size[0]} needs {tokens} tokens")
        )
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), resample=Image.BICUBIC)
    frames = np.asarray(image, dtype=np.uint8)[None]
    return DecodedClip(
        frames=frames,
        frame_indices=[0],
        fps=None,
        source_fps=None,
        source_frames=1,
        source_size=(height, width),
        audio=None,
        audio_source="none",
        modality="image",
        media_tokens=tokens,
    )


def _grid_size(
    height: int, width: int, min_pixels: float, max_pixels: float, what: str, family: str = DEFAULT_FAMILY
) -> tuple[int, int]:
    """``smart_resize`` on ``family``'s pixel grid, each side at least one cell; MediaError instead of its errors."""
    vp = _vision_process()
    factor = pixel_grid(family)
    try:
        h, w = vp.smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    except (ValueError, AssertionError) as exc:
        raise MediaError(f"cannot resize a {width}x{height} {what} with these pixel limits: {exc}") from None
    return max(h, factor), max(w, factor)


def _over_budget(name: str, budget: PromptBudget, why: str) -> str:
    return (
        f"{name} does not fit the prompt budget of {budget.max_tokens} tokens: {why}. Raise "
        "--max-prompt-tokens (and max_prompt_length of the training config to match), or shorten the clip"
    )


def min_frames(options: VideoOptions) -> int:
    """The fewest frames a clip may get (``--min-frames`` or qwen-omni-utils' default), even."""
    n = options.min_frames if options.min_frames is not None else qwen_defaults()["min_frames"]
    return int(math.ceil(n / 2) * 2)


def decode_clip(
    video_path,
    audio_path=None,
    options: VideoOptions = VideoOptions(),
    threads: int = 1,
    budget: PromptBudget | None = None,
    family: str = DEFAULT_FAMILY,
) -> DecodedClip:
    """Decode ``video_path`` into sampled, resized frames and 16 kHz audio (from ``audio_path`` if given).

    Two passes over the file: the first counts the video packets (decord's frame count), the second decodes
    the needed frames and the audio track, so memory does not grow with the video's length. Frames are sized on
    ``family``'s pixel grid. With ``budget`` the frames are planned so that the prompt fits it (see
    ``preprocess.budget.fit_video``).
    Raises ``MediaError`` for anything that makes the file unusable.
    """
    video_path = Path(video_path)
    name = video_path.name
    _check_file(video_path, "video")
    file_audio = load_audio_file(audio_path) if audio_path is not None else None
    with _open_video(video_path) as container:
        vstream = container.streams.video[0]
        source_size = (vstream.codec_context.height, vstream.codec_context.width)
        has_track = bool(container.streams.audio)
        total_frames = discarded = 0
        try:
            for packet in container.demux(vstream):
                total_frames += packet.size > 0
                discarded += packet.size > 0 and packet.is_discard
        except Exception as exc:
            raise MediaError(
                f"{name} is damaged or truncated after {total_frames} video packets ({_short(exc)})"
            ) from None
        rate = vstream.average_rate or vstream.guessed_rate
    if total_frames == 0:
        raise MediaError(f"{name} has a video stream with no frames")
    if not rate or float(rate) <= 0:
        raise MediaError(f"{name} has no usable frame rate")
    video_fps = float(rate)
    indices, sample_fps = sample_indices(total_frames, video_fps, options)
    keep = int(round(total_frames / video_fps * SAMPLE_RATE))
    size = None
    if budget is not None and min(source_size) > 0:
        size = resized_size(*source_size, len(indices), options, family)
        audio_bound = min(keep, file_audio.shape[0]) if file_audio is not None else keep if has_track else 0
        sound = media_tokens("video", audio_samples=audio_bound, family=family)
        cell = pixel_grid(family) ** 2  # the smallest frame: one cell of the grid
        try:
            n, size = fit_video(
                len(indices),
                size,
                source_size,
                budget.text_tokens + sound,
                budget,
                min_frames(options),
                lambda h, w, pixels: _grid_size(h, w, cell, pixels, "video", family),
            )
        except BudgetError as exc:
            raise OverBudgetError(
                _over_budget(
                    name,
                    budget,
                    f"{exc}, {sound} for its {audio_bound / SAMPLE_RATE:.1f} s "
                    f"of audio, {budget.text_tokens} for the text",
                )
            ) from None
        if n != len(indices):
            import torch

            indices = torch.linspace(0, total_frames - 1, n).round().long().tolist()
            sample_fps = n / total_frames * video_fps
    with _open_video(video_path) as container:
        frames, track = _decode(
            container, indices, audio=file_audio is None, threads=threads, name=name, discarded=discarded
        )
    height, width = frames.shape[1:3]
    if size is None:
        size = resized_size(height, width, len(indices), options, family)
    frames = resize_frames(frames, size)
    if file_audio is not None:
        audio, audio_source = file_audio[:keep], "file"
    elif track is not None:
        audio, audio_source = to_16k_mono(*track)[:keep], "video"
    else:
        audio, audio_source = None, "none"
    tokens = media_tokens(
        "video", len(indices), *size, audio_samples=None if audio is None else audio.shape[0], family=family
    )
    return DecodedClip(
        frames=frames,
        frame_indices=indices,
        fps=float(sample_fps),
        source_fps=video_fps,
        source_frames=total_frames,
        source_size=(height, width),
        audio=audio,
        audio_source=audio_source,
        media_tokens=tokens,
    )


# Video files opened for decoding in this process. Training reads shards only; the trainer logs the
# increase of this counter (in its own process and in its loader workers) as `counters/video_decodes`.
VIDEO_DECODES = 0


def _open_video(path: Path):
    import av

    global VIDEO_DECODES
    VIDEO_DECODES += 1
    try:
        container = av.open(str(path))
    except Exception as exc:
        raise MediaError(
            f"cannot open {path.name} as a video ({_short(exc)}); the file is truncated, damaged or not a video"
        ) from None
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path.name} has no video stream")
    return container


def _decode(container, indices: list[int], audio: bool, threads: int, name: str, discarded: int = 0):
    """The frames at ``indices`` (uint8 ``[T, H, W, 3]``, presentation order) and, if ``audio``, the first
    audio track as ``(float32 [channels, n], sample_rate)`` (``None`` when there is none).

    The last ``discarded`` packets may yield no frame (packets an edit list trims: decord counts them and
    returns the last decoded frame for them, and so does this)."""
    import av

    vstream = container.streams.video[0]
    vstream.thread_type = "AUTO" if threads > 1 else "SLICE"
    vstream.thread_count = max(1, threads)
    astream = container.streams.audio[0] if audio and container.streams.audio else None
    slots: dict[int, list[int]] = {}
    for slot, index in enumerate(indices):
        slots.setdefault(index, []).append(slot)
    frames: list[np.ndarray | None] = [None] * len(indices)
    chunks, audio_rate = [], None
    resampler = av.AudioResampler(format="fltp") if astream is not None else None
    position, last = 0, None

    def take(decoded):
        nonlocal position, last
        for frame in decoded:
            for slot in slots.get(position, ()):
                frames[slot] = frame.to_ndarray(format="rgb24")
            position, last = position + 1, frame

    where = "video"
    try:
        for packet in container.demux([vstream] + ([astream] if astream is not None else [])):
            if packet.stream.type == "video":
                where = f"video frame {position}"
                take(vstream.decode(packet if packet.size else None))
            else:
                where = "audio track"
                for frame in packet.decode():  # the empty packet at the end flushes the decoder
                    audio_rate = frame.sample_rate
                    chunks.extend(out.to_ndarray() for out in resampler.resample(frame))
        if resampler is not None:
            chunks.extend(out.to_ndarray() for out in resampler.resample(None))
    except Exception as exc:
        raise MediaError(
            f"{name}: the {where} cannot be decoded ({_short(exc)}); the file is damaged or truncated"
        ) from None
    missing = [slot for slot, frame in enumerate(frames) if frame is None]
    if missing and last is not None and all(indices[slot] < position + discarded for slot in missing):
        for slot in missing:
            frames[slot] = last.to_ndarray(format="rgb24")
    if any(frame is None for frame in frames):
        raise MediaError(
            f"{name}: only {position} frames could be decoded, frame {max(indices)} is needed; "
            "the file is damaged or truncated"
        )
    track = (np.concatenate(chunks, axis=1), audio_rate) if chunks else None
    return np.stack(frames), track


def _check_file(path: Path, kind: str) -> None:
    if not path.exists():
        raise MediaError(f"{kind} file not found: {path.name}")
    if not path.is_file():
        raise MediaError(f"{kind} path is not a file: {path.name}")
    if os.path.getsize(path) == 0:
        raise MediaError(f"{kind} file is empty (0 bytes): {path.name}")


def _short(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
