"""Readers of raw datasets: ``siq2`` (the Social-IQ 2.0 layout) and ``jsonl`` (a generic manifest).

Both turn each non-blank line into a ``Sample`` or into one failure record ``{id, path, line, reason}``.
The line parsers (``parse_siq2_line``, ``parse_jsonl_line``) touch no file system and raise nothing but
``LineError``; whole-source problems (a missing root, an unreadable manifest) raise ``SourceError``.

Social-IQ 2.0: ``ROOT/qa/qa_{split}.json`` is JSON Lines despite its name, one object per line with
``qid, q, vid_name, ts, a0..a3, answer_idx`` (some splits add fields such as ``ans_corr``, ``idx_types``,
kept in ``extra``); videos are ``ROOT/video/{vid_name}.mp4`` and, when the download has it, audio is
``ROOT/audio/wav/{vid_name}.wav``. The release reuses a ``qid`` for different questions (val: 3 lines, train:
23, in abwilf/Social-IQ-2.0-Challenge ``siq2/qa/``): every such question is kept, the repeats as
``{qid}#1``, ``{qid}#2``, … in file order, and each sample's ``extra`` keeps the released ``qid``; a line
repeating an earlier one's id *and* content is dropped as a failure line that says so.

Generic manifest: one object per line with ``id``, its media, ``question``, optional ``options`` (list of
strings), ``answer`` and optional ``problem_type``; every other field is kept in ``extra``. The media are one
of: ``video`` (its own sound track, if any, is used), ``video`` + ``audio`` (a separate audio file for the
video), ``audio`` alone (an audio-only question), or ``image``; paths are relative to the manifest's folder.
A path that leaves the manifest's folder (``../x``, or an absolute path elsewhere) is refused. The check is
on the path's text, so a symbolic link inside the folder that points elsewhere (a dataset on another
disk) is followed.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
from dataclasses import dataclass, field, replace
from pathlib import Path

LETTERS = "ABCD"
SIQ2_REQUIRED = ("qid", "q", "vid_name", "a0", "a1", "a2", "a3", "answer_idx")
JSONL_KNOWN = ("id", "video", "audio", "image", "question", "options", "answer", "problem_type", "use_audio_in_video")
SIQ2_LAYOUT = (
    "qa/qa_{split}.json (JSON Lines: qid, q, vid_name, ts, a0..a3, answer_idx), video/{{vid_name}}.mp4 "
    "and, optionally, audio/wav/{{vid_name}}.wav"
)


class SourceError(Exception):
    """The dataset as a whole cannot be read (missing root, unreadable manifest)."""


class LineError(Exception):
    """One QA line cannot be used; the message says why. ``sample_id`` is set when the line had one."""

    def __init__(self, reason: str, sample_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.sample_id = sample_id


@dataclass(frozen=True)
class Sample:
    """One question about one video, audio file or image. Paths are POSIX, relative to the dataset root /
    manifest folder; ``video`` is None for an audio-only or image sample."""

    id: str
    video: str | None
    question: str
    options: tuple[str, ...]
    answer: str
    problem_type: str
    extra: dict = field(default_factory=dict, hash=False, compare=False)
    audio: str | None = None
    line: int = 0
    image: str | None = None
    use_audio_in_video: bool | None = None  # the sample's own flag (jsonl manifest); None: the training config's

    @property
    def modality(self) -> str:
        """``video`` (with or without sound), ``audio`` (alone) or ``image``."""
        return "video" if self.video is not None else "image" if self.image is not None else "audio"

    def record(self) -> dict:
        """The QA fields as stored in a shard (``extra`` as a JSON string)."""
        return {
            "id": self.id,
            "question": self.question,
            "options": list(self.options),
            "answer": self.answer,
            "problem_type": self.problem_type,
            "extra": json.dumps(self.extra, ensure_ascii=False, sort_keys=True),
            "use_audio_in_video": self.use_audio_in_video,
        }


@dataclass
class SourceData:
    """What a reader found: samples in file order, failure records, and where relative paths start."""

    kind: str
    base: Path
    qa_file: str
    samples: list[Sample]
    failures: list[dict]
    lines: int


# --- line parsers ---------------------------------------------------------------------------------------


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _load_object(raw) -> dict:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LineError(f"line is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start})") from None
    text = raw.lstrip("\ufeff")
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise LineError("malformed JSON: nested too deeply") from None
    except ValueError as exc:
        raise LineError(f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise LineError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _check_text(value: str, name: str, sample_id) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise LineError(
            f"field {name!r} contains an invalid character (a lone UTF-16 surrogate escape)", sample_id
        ) from None
    return value


def _text(obj: dict, name: str, sample_id, allow_empty: bool = False) -> str:
    if name not in obj:
        raise LineError(f"missing field {name!r}", sample_id)
    value = obj[name]
    if not isinstance(value, str):
        raise LineError(f"field {name!r} must be a string, got {_type(value)}", sample_id)
    if not allow_empty and not value.strip():
        raise LineError(f"field {name!r} is empty", sample_id)
    return _check_text(value, name, sample_id)


def _id(obj: dict, name: str):
    if name not in obj:
        raise LineError(f"missing field {name!r}")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise LineError(f"field {name!r} must be a string or an integer, got {_type(value)}")
    value = str(value)
    if not value.strip():
        raise LineError(f"field {name!r} is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise LineError(f"field {name!r} contains an invalid character (a lone UTF-16 surrogate escape)") from None
    return value


def _extra(obj: dict, known, sample_id) -> dict:
    extra = {k: v for k, v in obj.items() if k not in known}
    try:
        json.dumps(extra, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError, ValueError):
        raise LineError("an extra field holds an invalid character or is nested too deeply", sample_id) from None
    return extra


def _type(value) -> str:
    return "null" if value is None else type(value).__name__


def relative_path(value, base: str, name: str = "video", sample_id=None) -> str:
    """``value`` as a normalised POSIX path relative to the folder ``base``; refuses paths that leave it."""
    if not isinstance(value, str):
        raise LineError(f"field {name!r} must be a string, got {_type(value)}", sample_id)
    if not value.strip():
        raise LineError(f"field {name!r} is empty", sample_id)
    if "\x00" in value:
        raise LineError(f"field {name!r} contains a NUL character", sample_id)
    _check_text(value, name, sample_id)
    text = value.replace("\\", "/") if os.sep == "\\" else value
    if posixpath.isabs(text) or os.path.isabs(text):
        base_abs = posixpath.normpath(base)
        full = posixpath.normpath(text)
        if full != base_abs and not full.startswith(base_abs.rstrip("/") + "/"):
            raise LineError(
                f"{name} path {value!r} is outside the manifest's folder; only paths inside it are read", sample_id
            )
        rel = posixpath.relpath(full, base_abs)
    else:
        rel = posixpath.normpath(text)
    if rel in (".", "..") or rel.startswith("../"):
        raise LineError(
            f"{name} path {value!r} is outside the manifest's folder; only paths inside it are read", sample_id
        )
    return rel


def parse_siq2_line(raw, line: int = 0) -> Sample:
    """One line of a Social-IQ 2.0 ``qa_{split}.json`` (bytes or str) → ``Sample``; raises ``LineError``."""
    obj = _load_object(raw)
    sample_id = _id(obj, "qid")
    missing = [k for k in SIQ2_REQUIRED if k not in obj]
    if missing:
        raise LineError(f"missing field(s) {', '.join(missing)}", sample_id)
    question = _text(obj, "q", sample_id)
    vid_name = _text(obj, "vid_name", sample_id)
    if "/" in vid_name or "\\" in vid_name or "\x00" in vid_name or vid_name.strip(".") == "":
        raise LineError(f"vid_name {vid_name!r} is not a plain file name", sample_id)
    options = tuple(_text(obj, f"a{i}", sample_id, allow_empty=True) for i in range(4))
    answer_idx = obj["answer_idx"]
    if isinstance(answer_idx, str) and answer_idx.strip().isdigit() and answer_idx.strip().isascii():
        answer_idx = int(answer_idx.strip())
    if isinstance(answer_idx, bool) or not isinstance(answer_idx, int):
        raise LineError(f"answer_idx must be an integer 0-3, got {_type(answer_idx)}", sample_id)
    if not 0 <= answer_idx <= 3:
        raise LineError(f"answer_idx {answer_idx} is out of range (0-3)", sample_id)
    extra = {**_extra(obj, set(SIQ2_REQUIRED) - {"vid_name"} | {"answer_idx"}, sample_id), "qid": sample_id}
    return Sample(
        id=sample_id,
        video=f"video/{vid_name}.mp4",
        question=question,
        options=options,
        answer=LETTERS[answer_idx],
        problem_type="multiple_choice",
        extra=extra,
        line=line,
    )


def parse_jsonl_line(raw, base: str, line: int = 0) -> Sample:
    """One line of a generic manifest (bytes or str) → ``Sample``; ``base`` is the manifest's folder
    (absolute). Raises ``LineError``."""
    obj = _load_object(raw)
    sample_id = _id(obj, "id")
    paths = {
        name: relative_path(obj[name], base, name, sample_id)
        for name in ("video", "audio", "image")
        if obj.get(name) is not None
    }
    if not paths:
        raise LineError("no media: give 'video' (optionally with 'audio'), 'audio' or 'image'", sample_id)
    if "image" in paths and len(paths) > 1:
        raise LineError(
            f"'image' cannot be combined with {' and '.join(repr(k) for k in paths if k != 'image')}: "
            "a sample holds a video (optionally with an audio file), an audio file or an image",
            sample_id,
        )
    video, audio, image = paths.get("video"), paths.get("audio"), paths.get("image")
    question = _text(obj, "question", sample_id)
    options: tuple[str, ...] = ()
    if obj.get("options") is not None:
        raw_options = obj["options"]
        if not isinstance(raw_options, list) or not all(isinstance(o, str) for o in raw_options):
            raise LineError("field 'options' must be a list of strings", sample_id)
        options = tuple(_check_text(o, "options", sample_id) for o in raw_options)
    if "answer" not in obj:
        raise LineError("missing field 'answer'", sample_id)
    answer = obj["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise LineError(f"field 'answer' must be a string or a number, got {_type(answer)}", sample_id)
    answer = _check_text(answer if isinstance(answer, str) else json.dumps(answer), "answer", sample_id)
    problem_type = obj.get("problem_type")
    if problem_type is None:
        problem_type = "multiple_choice" if options else "free_form"
    elif not isinstance(problem_type, str) or not problem_type.strip():
        raise LineError("field 'problem_type' must be a non-empty string", sample_id)
    else:
        _check_text(problem_type, "problem_type", sample_id)
    own_flag = obj.get("use_audio_in_video")
    if own_flag is not None and not isinstance(own_flag, bool):
        raise LineError(f"field 'use_audio_in_video' must be true, false or null, got {_type(own_flag)}", sample_id)
    extra = _extra(obj, JSONL_KNOWN, sample_id)
    return Sample(
        id=sample_id,
        video=video,
        question=question,
        options=options,
        answer=answer,
        problem_type=problem_type,
        extra=extra,
        audio=audio,
        line=line,
        image=image,
        use_audio_in_video=own_flag,
    )


# --- readers --------------------------------------------------------------------------------------------


def _read_lines(path: Path, what: str):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise SourceError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise SourceError(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        raise SourceError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    for number, raw in enumerate(data.split(b"\n"), 1):
        raw = raw.rstrip(b"\r")
        if raw.strip():
            yield number, raw


def _collect(kind, base, records, qa_display: str, parse, number_repeats: bool = False) -> SourceData:
    """``records`` yields ``(number, raw)``; ``parse(raw, number)`` makes a Sample or raises ``LineError``.

    A repeated id is a failure line, except with ``number_repeats``: then a repeat whose content differs
    from every earlier question of that id is kept as ``{id}#{k}`` (``k`` = 1, 2, … in file order, skipping
    ids already taken), and only a true duplicate (same id and same content) is dropped as a failure.
    """
    samples, failures, seen, lines = [], [], {}, 0
    by_released: dict[str, list[tuple[int, Sample]]] = {}
    for number, raw in records:
        lines += 1
        try:
            sample = parse(raw, number)
        except LineError as exc:
            failures.append({"id": exc.sample_id, "path": qa_display, "line": number, "reason": exc.reason})
            continue
        if number_repeats and sample.id in seen:
            earlier = by_released.setdefault(sample.id, [])
            twin = next((line for line, other in earlier if _same_content(sample, other)), None)
            if twin is not None:
                failures.append(
                    {
                        "id": sample.id,
                        "path": qa_display,
                        "line": number,
                        "reason": f"duplicate of line {twin} (same id and content); dropped",
                    }
                )
                continue
            released, k = sample.id, len(earlier)
            while f"{released}#{k}" in seen:
                k += 1
            earlier.append((number, sample))
            sample = replace(sample, id=f"{released}#{k}")
        elif sample.id in seen:
            failures.append(
                {
                    "id": sample.id,
                    "path": qa_display,
                    "line": number,
                    "reason": f"duplicate id (first seen on line {seen[sample.id]}; that one is kept)",
                }
            )
            continue
        else:
            by_released.setdefault(sample.id, []).append((number, sample))
        seen[sample.id] = number
        samples.append(sample)
    return SourceData(kind=kind, base=base, qa_file=qa_display, samples=samples, failures=failures, lines=lines)


def _same_content(a: Sample, b: Sample) -> bool:
    """Whether two samples read from the file ask the same question about the same media."""
    return (a.record(), a.video, a.audio, a.image) == (b.record(), b.video, b.audio, b.image)


def read_siq2(root, split: str = "train") -> SourceData:
    """Read ``ROOT/qa/qa_{split}.json``; each sample's ``audio`` is set where ``audio/wav/{vid}.wav`` exists."""
    root = Path(root)
    if not split or "/" in split or "\\" in split or split.strip(".") == "":
        raise SourceError(f"split {split!r} is not a plain name such as train, val or test")
    qa_display = f"qa/qa_{split}.json"
    if not root.is_dir():
        raise SourceError(
            f"Social-IQ 2.0 root {root} is not a folder; --root must hold " + SIQ2_LAYOUT.format(split=split)
        )
    missing = [p for p in (qa_display, "video") if not (root / p).exists()]
    if missing:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
        shown = ", ".join(found[:8]) + (", …" if len(found) > 8 else "") if found else "nothing"
        splits = sorted(p.name[3:-5] for p in (root / "qa").glob("qa_*.json")) if (root / "qa").is_dir() else []
        hint = f" (qa/ has the splits {', '.join(splits)}: pass --split)" if splits and qa_display in missing else ""
        raise SourceError(
            f"{root} does not have the Social-IQ 2.0 layout: {' and '.join(missing)} not found"
            f"{hint}; expected under --root: {SIQ2_LAYOUT.format(split=split)}; found: {shown}"
        )
    data = _collect(
        "siq2",
        root,
        _read_lines(root / "qa" / f"qa_{split}.json", "QA file"),
        qa_display,
        parse_siq2_line,
        number_repeats=True,
    )
    wavs: dict[str, bool] = {}
    for i, sample in enumerate(data.samples):
        vid_name = sample.video[len("video/") : -len(".mp4")]
        wav = f"audio/wav/{vid_name}.wav"
        if wav not in wavs:
            wavs[wav] = (root / wav).is_file()
        if wavs[wav]:
            data.samples[i] = Sample(**{**sample.__dict__, "audio": wav})
    return data


def read_jsonl(manifest) -> SourceData:
    """Read a generic JSON Lines manifest; paths in it are relative to its folder."""
    manifest = Path(manifest)
    base = os.path.abspath(manifest.parent)
    if os.sep == "\\":
        base = base.replace("\\", "/")
    return _collect(
        "jsonl",
        manifest.parent,
        _read_lines(manifest, "manifest"),
        manifest.name,
        lambda raw, number: parse_jsonl_line(raw, base, number),
    )
