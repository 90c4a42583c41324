"""The shard format: one writer, one reader, a version field.

An output folder holds

* ``shard-NNNNN.parquet``: one row (and one row group) per media item (a video clip, an audio file or an
  image), so that reading one sample reads one row group, memory-mapped. Columns: ``modality``
  (``video``, ``audio`` or ``image``), ``frames`` (one JPEG per sampled frame; an image is one frame; empty
  for audio), ``audio`` (FLAC, 16 kHz mono 16-bit, null when there is none), the sampling facts
  (``frame_indices``, ``fps``, ``height``, ``width``, ``source_*``; null where they do not apply),
  ``media_tokens`` (the prompt tokens of these media), provenance (``video`` = the media file's path,
  ``audio_path``, ``audio_source``) and ``samples``: the questions asked about the item (``id, question,
  options, answer, problem_type, extra, prompt_tokens, use_audio_in_video`` with ``extra`` a JSON string,
  ``prompt_tokens`` the whole prompt's length: media + system prompt + question + chat template, and
  ``use_audio_in_video`` the sample's own flag from the manifest, null for the training config's). An item is stored
  once however many questions it has (Social-IQ 2.0 asks about six per video). The file's key-value metadata
  carries ``omni_grpo.format_version``.
* ``manifest.json``: format version, options, counts, samples per modality (``modalities``: ``video``,
  ``video_only``, ``audio``, ``image``), ``problem_types`` (matched / unknown spellings), ``prompt_tokens``
  (``budget``, ``longest``, ``exact``: counted with the model's tokenizer rather than estimated), and per
  shard its row and sample counts, longest prompt, size and sha256. Written last, so its presence means the
  run finished.
* ``failures.jsonl``: one line per sample that was not written.
* ``_state/``: what resuming needs (one small JSON file per finished shard).

No pickle anywhere: Parquet, JPEG, FLAC and JSON only.

Versions: 2 added ``modality``, ``media_tokens`` and ``prompt_tokens``; 3 added the samples'
``use_audio_in_video``. Version 1 and 2 folders are still read (version 1: every row a video, ``prompt_tokens``
None; both: ``use_audio_in_video`` None).
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
SAMPLE_RATE = 16000
MANIFEST_NAME = "manifest.json"
FAILURES_NAME = "failures.jsonl"
STATE_DIR = "_state"
VERSION_KEY = b"omni_grpo.format_version"
MEDIA_COLUMNS = ["frames", "frame_indices", "fps", "audio", "video", "audio_source"]
MEDIA_COLUMNS_V2 = MEDIA_COLUMNS + ["modality"]


class ShardCorruptError(Exception):
    """A shard whose bytes do not match the manifest (or that cannot be read at all)."""


class ShardFormatError(ValueError):
    """An output folder that is not a finished preprocess output of this format version."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def schema():
    import pyarrow as pa

    sample = pa.struct(
        [
            ("id", pa.string()),
            ("question", pa.string()),
            ("options", pa.list_(pa.string())),
            ("answer", pa.string()),
            ("problem_type", pa.string()),
            ("extra", pa.string()),
            ("prompt_tokens", pa.int32()),
            ("use_audio_in_video", pa.bool_()),
        ]
    )
    return pa.schema(
        [
            ("modality", pa.string()),
            ("media_tokens", pa.int32()),
            ("video", pa.string()),
            ("audio_path", pa.string()),
            ("audio_source", pa.string()),
            ("frames", pa.list_(pa.binary())),
            ("frame_indices", pa.list_(pa.int32())),
            ("fps", pa.float64()),
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("source_fps", pa.float64()),
            ("source_frames", pa.int32()),
            ("source_height", pa.int32()),
            ("source_width", pa.int32()),
            ("duration", pa.float64()),
            ("audio", pa.binary()),
            ("audio_samples", pa.int64()),
            ("sample_rate", pa.int32()),
            ("samples", pa.list_(sample)),
        ],
        metadata={VERSION_KEY: str(FORMAT_VERSION).encode()},
    )


# --- media codecs ---------------------------------------------------------------------------------------


def encode_frames(frames: np.ndarray, quality: int = 90) -> list[bytes]:
    """uint8 ``[T, H, W, 3]`` → one baseline JPEG per frame (4:4:4, so colour edges survive)."""
    from PIL import Image

    out = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality, subsampling=0)
        out.append(buf.getvalue())
    return out


def decode_frames(blobs: Sequence[bytes], executor=None) -> np.ndarray:
    """JPEG blobs → uint8 ``[T, H, W, 3]``; with a thread pool ``executor``, frames decode in parallel
    (Pillow releases the GIL while decoding)."""
    images = list(executor.map(_decode_jpeg, blobs)) if executor is not None else [_decode_jpeg(b) for b in blobs]
    return np.stack(images)


def _decode_jpeg(blob: bytes) -> np.ndarray:
    from PIL import Image

    image = Image.open(io.BytesIO(blob))
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def encode_audio(audio: np.ndarray) -> bytes:
    """float32 mono 16 kHz → FLAC (16-bit)."""
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_audio(blob: bytes) -> np.ndarray:
    """FLAC → float32 mono."""
    import soundfile

    data, _ = soundfile.read(io.BytesIO(blob), dtype="float32")
    return data


def encode_media(decoded, jpeg_quality: int = 90) -> dict:
    """A ``preprocess.media.DecodedClip`` → the media columns of one row (plain Python values)."""
    height, width = decoded.frames.shape[1:3] if decoded.frames is not None else (None, None)
    audio = decoded.audio
    source = decoded.source_size or (None, None)
    return {
        "modality": decoded.modality,
        "media_tokens": decoded.media_tokens,
        "audio_source": decoded.audio_source,
        "frames": [] if decoded.frames is None else encode_frames(decoded.frames, jpeg_quality),
        "frame_indices": list(decoded.frame_indices),
        "fps": decoded.fps,
        "height": height,
        "width": width,
        "source_fps": decoded.source_fps,
        "source_frames": decoded.source_frames,
        "source_height": source[0],
        "source_width": source[1],
        "duration": decoded.duration,
        "audio": None if audio is None else encode_audio(audio),
        "audio_samples": None if audio is None else int(audio.shape[0]),
        "sample_rate": SAMPLE_RATE,
    }


# --- writer ---------------------------------------------------------------------------------------------


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path, data, lines: bool = False) -> None:
    """Write JSON (or JSON Lines when ``lines``) to a temporary name, fsync, then rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", encoding="utf-8") as f:
        if lines:
            for item in data:
                f.write(json.dumps(item, sort_keys=True) + "\n")
        else:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def partial_path(path) -> Path:
    """Where a shard is written until it is complete (hidden, and not matching ``*.parquet``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


class ShardWriter:
    """Writes one shard: rows go to a hidden temporary file that ``close`` renames into place.

    A writer that is never closed (killed process) leaves only the hidden ``.shard-NNNNN.parquet.partial``.
    """

    def __init__(self, path):
        import pyarrow.parquet as pq

        self.path = Path(path)
        self._tmp = partial_path(self.path)
        self._schema = schema()
        self._writer = pq.ParquetWriter(
            str(self._tmp),
            self._schema,
            compression={name: ("NONE" if name in ("frames", "audio") else "ZSTD") for name in self._schema.names},
            use_dictionary=False,
            write_statistics=False,
        )
        self.rows = 0
        self.samples = 0

    def add(self, row: dict) -> None:
        """Append one clip (a dict with every schema column) as its own row group."""
        import pyarrow as pa

        table = pa.Table.from_pylist([row], schema=self._schema)
        self._writer.write_table(table)
        self.rows += 1
        self.samples += len(row["samples"])

    def close(self) -> dict:
        """Finish the file, fsync it, rename it into place; returns ``{file, rows, samples, bytes, sha256}``."""
        self._writer.close()
        with open(self._tmp, "rb") as f:
            os.fsync(f.fileno())
        info = {
            "file": self.path.name,
            "rows": self.rows,
            "samples": self.samples,
            "bytes": os.path.getsize(self._tmp),
            "sha256": sha256_file(self._tmp),
        }
        os.replace(self._tmp, self.path)
        return info

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self._tmp.unlink(missing_ok=True)


# --- reader ---------------------------------------------------------------------------------------------


def read_manifest(out) -> dict:
    """The ``manifest.json`` of a finished output folder; raises ``ShardFormatError`` with what to do."""
    out = Path(out)
    path = out / MANIFEST_NAME
    if not path.is_file():
        if (out / STATE_DIR).is_dir():
            raise ShardFormatError(
                f"{out} has no {MANIFEST_NAME}: its preprocess run has not finished; "
                "re-run the same preprocess command to finish it"
            )
        raise ShardFormatError(f"{out} has no {MANIFEST_NAME}: it is not a preprocess output folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ShardFormatError(f"cannot read {path}: {exc}; re-run preprocess with --overwrite") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version not in READABLE_VERSIONS:
        raise ShardFormatError(
            f"{path} has format version {version!r}, this reader reads version "
            f"{FORMAT_VERSION}; re-run preprocess with this version (--overwrite)"
        )
    return manifest


def load(out, verify: bool = True, skip_corrupt: bool = False, decode_threads: int | None = None) -> "ShardDataset":
    """Open a finished output folder as a sequence of training samples.

    ``verify`` checks every shard's sha256 against the manifest (reads each shard once, in threads);
    a mismatch, a missing shard or an unreadable footer raises ``ShardCorruptError``, or, with
    ``skip_corrupt``, drops that shard and records ``(file, n_samples)`` in ``.skipped``.
    ``decode_threads``: threads decoding one sample's JPEG frames (default: up to 4, by core count; pass 1
    inside many DataLoader workers).
    """
    return ShardDataset(out, verify=verify, skip_corrupt=skip_corrupt, decode_threads=decode_threads)


class ShardDataset(Sequence):
    """Samples of an output folder. ``ds[i]`` reads one row group; see ``__getitem__`` for the keys."""

    def __init__(self, out, verify: bool = True, skip_corrupt: bool = False, decode_threads: int | None = None):
        self.root = Path(out)
        self.decode_threads = decode_threads if decode_threads is not None else min(4, os.cpu_count() or 1)
        self.manifest = read_manifest(self.root)
        self.skipped: list[tuple[str, int]] = []
        entries = list(self.manifest.get("shards", []))
        problems = self._verify(entries) if verify else {}
        self.files: list[str] = []
        self._samples = []  # per kept shard: pyarrow ListArray of the samples column
        self._versions = []  # per kept shard: its format version
        self._rows = []  # per kept shard: (row → row group) lookup, as cumulative row-group starts
        starts = []  # first global sample index of each (shard, row) block
        self._blocks = []  # (shard position, row, n_samples)
        total = 0
        for entry in entries:
            name = entry["file"]
            problem = problems.get(name)
            if problem is None:
                try:
                    samples, rg_starts, version = self._read_index(self.root / name)
                except Exception as exc:
                    problem = f"cannot be read as Parquet ({exc})"
            if problem is not None:
                if not skip_corrupt:
                    raise ShardCorruptError(
                        f"shard {self.root / name} is corrupt: {problem}. Re-run the same preprocess command "
                        "(it rebuilds shards that fail their checksum; --overwrite rebuilds all), or skip its samples: "
                        "skip_corrupt_shards=true in the training config (skip_corrupt=True for shards.load)"
                    )
                self.skipped.append((name, int(entry.get("samples", 0))))
                continue
            position = len(self.files)
            self.files.append(name)
            self._samples.append(samples)
            self._versions.append(version)
            self._rows.append(rg_starts)
            for row in range(len(samples)):
                n = len(samples[row])
                if n:
                    starts.append(total)
                    self._blocks.append((position, row, n))
                    total += n
        self._starts = starts
        self._len = total
        self._handles: dict[int, object] = {}
        self._executor = None
        self._pid = os.getpid()

    def _verify(self, entries) -> dict[str, str]:
        def check(entry):
            path = self.root / entry["file"]
            if not path.is_file():
                return entry["file"], "the file is missing"
            actual = sha256_file(path)
            if actual != entry.get("sha256"):
                return entry["file"], f"sha256 is {actual}, the manifest says {entry.get('sha256')}"
            return entry["file"], None

        with ThreadPoolExecutor(max_workers=min(8, max(1, len(entries)))) as pool:
            return {name: problem for name, problem in pool.map(check, entries) if problem}

    @staticmethod
    def _read_index(path):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(str(path), memory_map=True)
        version = (pf.schema_arrow.metadata or {}).get(VERSION_KEY)
        if version not in {str(v).encode() for v in READABLE_VERSIONS}:
            raise ValueError(f"format version {version!r}, expected one of {READABLE_VERSIONS}")
        samples = pf.read(columns=["samples"]).column("samples").combine_chunks()
        rg_starts, total = [], 0
        for rg in range(pf.metadata.num_row_groups):
            rg_starts.append(total)
            total += pf.metadata.row_group(rg).num_rows
        return samples, rg_starts, int(version)

    def __len__(self) -> int:
        return self._len

    @property
    def ids(self) -> list[str]:
        """Every sample id, in index order (reads no media)."""
        return [s["id"] for block in self._iter_samples() for s in block]

    @property
    def prompt_tokens(self) -> list[int | None]:
        """Every sample's prompt length in tokens as preprocess counted it, in index order (reads no media;
        None for version-1 shards)."""
        return [s.get("prompt_tokens") for block in self._iter_samples() for s in block]

    def _iter_samples(self):
        for position, row, _ in self._blocks:
            yield self._samples[position][row].as_py()

    def _reset_after_fork(self) -> None:
        if self._pid != os.getpid():
            self._handles, self._executor, self._pid = {}, None, os.getpid()

    def _decoder(self):
        if self.decode_threads <= 1:
            return None
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.decode_threads)
        return self._executor

    def _file(self, position: int):
        import pyarrow.parquet as pq

        handle = self._handles.get(position)
        if handle is None:
            handle = pq.ParquetFile(str(self.root / self.files[position]), memory_map=True)
            self._handles[position] = handle
        return handle

    def __getitem__(self, index):
        """A dict: ``id, question, options (list[str]), answer, problem_type, extra (dict)``,
        ``prompt_tokens`` (int, None for version-1 shards), ``use_audio_in_video`` (the sample's own flag, None:
        the training config's; None before version 3), ``modality`` (``video``, ``audio`` or ``image``),
        ``has_audio`` (bool), ``frames`` (uint8 ``[T, H, W, 3]``; None unless a video), ``fps`` (of the
        sampled frames; None unless a video), ``frame_indices``, ``image`` (uint8 ``[H, W, 3]``; None unless
        an image), ``audio`` (float32 mono at ``sample_rate`` = 16000, None when there is none), ``video``
        (the media file's path) and ``audio_source`` (provenance) and ``shard``."""
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        self._reset_after_fork()
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"sample index {index} out of range for {self._len} samples")
        block = bisect.bisect_right(self._starts, index) - 1
        position, row, _ = self._blocks[block]
        sample = self._samples[position][row][index - self._starts[block]].as_py()
        rg_starts = self._rows[position]
        rg = bisect.bisect_right(rg_starts, row) - 1
        columns = MEDIA_COLUMNS_V2 if self._versions[position] >= 2 else MEDIA_COLUMNS
        table = self._file(position).read_row_group(rg, columns=columns)
        media = {name: table.column(name)[row - rg_starts[rg]].as_py() for name in columns}
        modality = media.get("modality") or "video"
        frames = decode_frames(media["frames"], self._decoder()) if media["frames"] else None
        return {
            "id": sample["id"],
            "question": sample["question"],
            "options": list(sample["options"] or []),
            "answer": sample["answer"],
            "problem_type": sample["problem_type"],
            "extra": json.loads(sample["extra"]) if sample["extra"] else {},
            "prompt_tokens": sample.get("prompt_tokens"),
            "use_audio_in_video": sample.get("use_audio_in_video"),
            "modality": modality,
            "has_audio": media["audio"] is not None,
            "frames": frames if modality == "video" else None,
            "frame_indices": media["frame_indices"],
            "fps": float(media["fps"]) if modality == "video" else None,
            "image": frames[0] if modality == "image" else None,
            "audio": None if media["audio"] is None else decode_audio(media["audio"]),
            "sample_rate": SAMPLE_RATE,
            "video": media["video"],
            "audio_source": media["audio_source"],
            "shard": self.files[position],
        }

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"], state["_executor"] = {}, None
        return state
