"""Readers of the published omni benchmarks (``dailyomni``, ``worldsense``, ``intentbench``, ``avqa``) and of the
training records of HumanOmniV2 / R1-Omni / Video-R1 (``r1``, also named ``humanomniv2``).

Each reads a benchmark's released annotation file and video folder as its authors publish them and turns
every question into a ``sources.Sample`` or into one failure record ``{id, path, line, reason}``, like the
readers in ``sources``. The benchmark's own categories (task type, domain, duration, …) stay in the
sample's ``extra`` so an evaluation can group by them. Multiple-choice answers become letters with
``problem_type: multiple_choice``; an option's own leading label ("A. ", "(B) ") is removed because the
prompt letters the options itself. A missing video is not an error here: decoding reports it as a failure
line. A root without the expected annotation file or video folder raises ``SourceError`` whose message
draws the expected layout. These files are JSON documents, not JSON Lines, so a failure's ``line`` is the
record's position in the file (1-based), not a text line.

Where each field comes from, and what could not be verified from public material, is in
``docs/benchmarks.md``; the unverified points are repeated in each reader's docstring.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .sources import (
    LineError,
    Sample,
    SourceData,
    SourceError,
    _check_text,
    _collect,
    _extra,
    _finite_float,
    _id,
    _reject_constant,
    _text,
    _type,
)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LABEL = re.compile(r"^\s*[(\[]?([A-Za-z])\s*[)\].:]\s*")
_ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_LETTER_FORM = re.compile(r"[(\[]?([A-Za-z])[)\]]?\.?")


@dataclass(frozen=True)
class Benchmark:
    """One ``--source``: its reader, the layout it expects (shown in errors) and whether ``--split`` counts."""

    name: str
    title: str
    layout: str
    read: Callable[[Path, str], SourceData]
    uses_split: bool = False


# --- shared field rules ---------------------------------------------------------------------------------


def _options(raw, sample_id, name: str) -> tuple[str, ...]:
    """A list of option strings; the labels "A. " … are dropped when every option carries its own letter."""
    if not isinstance(raw, list) or not raw or not all(isinstance(o, str) for o in raw):
        raise LineError(f"field {name!r} must be a non-empty list of strings, got {_type(raw)}", sample_id)
    if len(raw) > len(LETTERS):
        raise LineError(f"field {name!r} has {len(raw)} options; at most {len(LETTERS)} can be lettered", sample_id)
    options = [_check_text(o, name, sample_id) for o in raw]
    labels = [_LABEL.match(o) for o in options]
    if all(m is not None and m.group(1).upper() == LETTERS[i] for i, m in enumerate(labels)):
        options = [o[m.end() :] for o, m in zip(options, labels)]
    if any(not o.strip() for o in options):
        raise LineError(f"field {name!r} has an empty option", sample_id)
    return tuple(options)


def _letter(value, n_options: int, sample_id, name: str) -> str:
    """A gold letter ("B", "b", "(B)", "B.") naming one of ``n_options`` options."""
    text = value.strip() if isinstance(value, str) else None
    match = _LETTER_FORM.fullmatch(text) if text else None
    if match is None:
        raise LineError(f"field {name!r} must be an option letter, got {value!r}", sample_id)
    letter = match.group(1).upper()
    if LETTERS.index(letter) >= n_options:
        raise LineError(f"answer {letter} is not one of the {n_options} options", sample_id)
    return letter


def _index_letter(value, n_options: int, sample_id, name: str) -> str:
    """A gold 0-based option index (an integer or a digit string) as a letter."""
    if isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise LineError(f"field {name!r} must be an option index, got {_type(value)}", sample_id)
    if not 0 <= value < n_options:
        raise LineError(f"{name} {value} is out of range (0-{n_options - 1})", sample_id)
    return LETTERS[value]


def _named_id(obj: dict, name: str, sample_id) -> str:
    """``sources._id`` (a string or integer field) with the failure tied to ``sample_id`` when it is known."""
    try:
        return _id(obj, name)
    except LineError as exc:
        raise LineError(exc.reason, sample_id) from None


def _plain_name(value: str, name: str, sample_id) -> str:
    if "/" in value or "\\" in value or "\x00" in value or value.strip(".") == "":
        raise LineError(f"{name} {value!r} is not a plain file name", sample_id)
    return value


def _relative(value: str, name: str, sample_id) -> str:
    """A path inside the dataset folder (POSIX, no ``..``, not absolute)."""
    text = _check_text(value, name, sample_id).replace("\\", "/").strip()
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or text.startswith("/") or ".." in parts or "\x00" in text:
        raise LineError(f"{name} path {value!r} must be a relative path inside the dataset folder", sample_id)
    return "/".join(parts)


# --- whole-file rules -----------------------------------------------------------------------------------


def _layout_error(message: str, bench: Benchmark) -> SourceError:
    return SourceError(f"{message}\nexpected layout for --source {bench.name} ({bench.title}):\n{bench.layout}")


def _load(root: Path, qa_name: str, folders: tuple[str, ...], bench: Benchmark):
    """The parsed annotation file ``root/qa_name``, after checking that ``folders`` exist under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise _layout_error(f"{bench.title} root {root} is not a folder", bench)
    path = root / qa_name
    if not path.is_file():
        raise _layout_error(f"{bench.title}: annotation file {path} does not exist", bench)
    for folder in folders:
        if not (root / folder).is_dir():
            raise _layout_error(
                f"{bench.title}: video folder {root / folder} does not exist (are the videos extracted?)", bench
            )
    try:
        text = path.read_bytes().decode("utf-8").lstrip("\ufeff")
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SourceError(
            f"{path} is not a valid JSON document ({exc}); {bench.title} ships {qa_name} as one JSON document"
        ) from None


def _records(data, qa_name: str) -> Iterator[tuple[int, tuple[str | None, object]]]:
    """``(number, (key, record))`` for a JSON list (key None) or a JSON object keyed by entry name."""
    if isinstance(data, list):
        items = [(None, r) for r in data]
    elif isinstance(data, dict):
        items = list(data.items())
    else:
        raise SourceError(f"{qa_name} must hold a JSON list or object of records, got {_type(data)}")
    yield from enumerate(items, 1)


def _record(raw, key=None) -> dict:
    """The record ``raw`` (a JSON object); ``key`` is its entry name in an object-shaped file, if any."""
    if key is not None:
        _check_text(key, "entry name", None)
    if not isinstance(raw, dict):
        raise LineError(f"expected a JSON object, got {_type(raw)}", key)
    return raw


# --- Daily-Omni -----------------------------------------------------------------------------------------

DAILYOMNI_KNOWN = ("Question", "Choice", "Answer")


def read_dailyomni(root, split: str = "") -> SourceData:
    """Daily-Omni (Hugging Face ``liarliar/Daily-Omni``): ``ROOT/qa.json`` and the extracted ``Videos.tar``.

    Each record: ``Question``, ``Choice`` (option strings, "A. …"), ``Answer`` (a letter), ``video_id`` and
    the categories ``Type`` (task type), ``video_category``, ``video_duration`` ("30s"/"60s") and whatever
    else the record holds, all kept in ``extra``. Video: ``Videos/{video_id}/{video_id}_video.mp4``; its
    own audio track is used. ``--split`` is ignored (one test set).

    Unverified: the release has no question id; the id is the entry's key when ``qa.json`` is a JSON object
    keyed by entry (one public loader describes it so), else ``{video_id}#{k}`` with ``k`` the question's
    0-based rank among that video's questions in file order.
    """
    bench = BENCHMARKS["dailyomni"]
    data = _load(Path(root), "qa.json", ("Videos",), bench)
    per_video: dict[str, int] = {}

    def parse(item, number):
        key, raw = item
        obj = _record(raw, key)
        video_id = _plain_name(_named_id(obj, "video_id", key), "video_id", key)
        sample_id = key
        if sample_id is None:
            sample_id = f"{video_id}#{per_video.get(video_id, 0)}"
            per_video[video_id] = per_video.get(video_id, 0) + 1
        question = _text(obj, "Question", sample_id)
        options = _options(obj.get("Choice"), sample_id, "Choice")
        answer = _letter(obj.get("Answer"), len(options), sample_id, "Answer")
        return Sample(
            id=sample_id,
            video=f"Videos/{video_id}/{video_id}_video.mp4",
            question=question,
            options=options,
            answer=answer,
            problem_type="multiple_choice",
            extra=_extra(obj, DAILYOMNI_KNOWN, sample_id),
            line=number,
        )

    return _collect("dailyomni", Path(root), _records(data, "qa.json"), "qa.json", parse)


# --- WorldSense -----------------------------------------------------------------------------------------

WORLDSENSE_TASK_KNOWN = ("question", "candidates", "answer")
WORLDSENSE_VIDEO_DROPPED = ("video_caption",)


def read_worldsense(root, split: str = "") -> SourceData:
    """WorldSense (Hugging Face ``honglyhly/WorldSense``): ``ROOT/worldsense_qa.json`` and ``ROOT/videos/``.

    ``worldsense_qa.json`` is one JSON object keyed by video id; each video holds ``duration``, ``domain``,
    ``sub_category``, ``audio_class`` (a list), ``video_caption`` and one entry per question under a key
    containing "task", with ``question``, ``candidates`` ("A. …"), ``answer`` (a letter), ``task_domain``
    and ``task_type``. Sample id ``{video}_{task key}``; ``extra`` keeps ``video_id``, the video's fields
    except ``video_caption`` (a description of the clip, not a category) and the question's other fields.
    Video: ``videos/{video}.mp4``, the released ``worldsense_videos*.zip`` archives extracted flat (as
    VLMEvalKit does); its own audio track is used. ``--split`` is ignored (one test set).

    Unverified: the folder layout inside the zip archives (VLMEvalKit keeps only each member's file name).
    """
    bench = BENCHMARKS["worldsense"]
    data = _load(Path(root), "worldsense_qa.json", ("videos",), bench)
    if not isinstance(data, dict):
        raise SourceError(f"worldsense_qa.json must be a JSON object keyed by video id, got {_type(data)}")

    def questions() -> Iterator[tuple[int, tuple[str, str, dict, object]]]:
        number = 0
        for video, entry in data.items():
            if not isinstance(entry, dict):
                number += 1
                yield number, (video, None, {}, entry)
                continue
            shared = {k: v for k, v in entry.items() if "task" not in k and k not in WORLDSENSE_VIDEO_DROPPED}
            for task in (k for k in entry if "task" in k):
                number += 1
                yield number, (video, task, shared, entry[task])

    def parse(item, number):
        video, task, shared, raw = item
        _check_text(video, "video id", None)
        if task is None:
            raise LineError(f"video entry must be a JSON object, got {_type(raw)}", video)
        sample_id = f"{video}_{task}"
        _plain_name(video, "video id", sample_id)
        obj = _record(raw, sample_id)
        question = _text(obj, "question", sample_id)
        options = _options(obj.get("candidates"), sample_id, "candidates")
        answer = _letter(obj.get("answer"), len(options), sample_id, "answer")
        extra = {"video_id": video, **_extra(shared, (), sample_id), **_extra(obj, WORLDSENSE_TASK_KNOWN, sample_id)}
        return Sample(
            id=sample_id,
            video=f"videos/{video}.mp4",
            question=question,
            options=options,
            answer=answer,
            problem_type="multiple_choice",
            extra=extra,
            line=number,
        )

    return _collect("worldsense", Path(root), questions(), "worldsense_qa.json", parse)


# --- IntentBench ----------------------------------------------------------------------------------------

INTENTBENCH_TYPES = {"multiple choice": "multiple_choice", "emer_ov_mc": "multi_label", "judge": "yes_no"}
INTENTBENCH_KNOWN = ("problem", "options", "solution", "answer", "problem_type", "video", "path")
INTENTBENCH_IDS = ("qid", "problem_id", "id")


def _intentbench_id(obj: dict, number: int) -> str:
    for name in INTENTBENCH_IDS:
        if name in obj:
            return _id(obj, name)
    return str(number)


def read_intentbench(root, split: str = "") -> SourceData:
    """IntentBench (Hugging Face ``PhilipC/IntentBench``): ``ROOT/qa.json`` and the extracted ``videos.zip``.

    Records in HumanOmniV2's schema: ``problem``, ``options`` ("A. …"), ``solution`` (the answer inside
    ``<answer>…</answer>``; a plain ``answer`` field is read when there is no ``solution``),
    ``problem_type`` and ``video`` (or ``path``). Problem types: "multiple choice" → ``multiple_choice``
    (one letter), "emer_ov_mc" → ``multi_label`` (letters such as "B,E"), "judge" → ``yes_no``; any other
    type is a failure line. ``extra`` keeps every other field (the question category ``Type``,
    ``data_type``, …) and the benchmark's own type as ``source_problem_type``. ``--split`` is ignored.

    Unverified: the id field (``qid``, then ``problem_id``, ``id``; else the record number) and where the
    ``video`` paths start: HumanOmniV2's eval joins them to ``IntentBench/videos``, another public script to
    ``IntentBench``; ``videos/{video}`` is used when it exists, else ``{video}``.
    """
    root = Path(root)
    data = _load(root, "qa.json", ("videos",), BENCHMARKS["intentbench"])

    def parse(item, number):
        key, raw = item
        obj = _record(raw, key)
        sample_id = key if key is not None else _intentbench_id(obj, number)
        source_type = _text(obj, "problem_type", sample_id)
        problem_type = INTENTBENCH_TYPES.get(source_type.strip())
        if problem_type is None:
            raise LineError(
                f"problem_type {source_type!r} is not one IntentBench uses ({', '.join(INTENTBENCH_TYPES)})", sample_id
            )
        question = _text(obj, "problem", sample_id)
        needs_options = problem_type != "yes_no" or obj.get("options")
        listed = _options(obj.get("options"), sample_id, "options") if needs_options else ()
        options = () if problem_type == "yes_no" else listed
        answer = _intentbench_answer(obj, problem_type, listed, sample_id)
        path = obj.get("video", obj.get("path"))
        if isinstance(path, dict):
            raise LineError(
                f"the sample is not a video (its path lists separate media: {', '.join(sorted(map(str, path)))})",
                sample_id,
            )
        if not isinstance(path, str) or not path.strip():
            raise LineError("missing field 'video' (or 'path')", sample_id)
        rel = _relative(path, "video", sample_id)
        video = f"videos/{rel}" if (root / "videos" / rel).is_file() or not (root / rel).is_file() else rel
        extra = {**_extra(obj, INTENTBENCH_KNOWN, sample_id), "source_problem_type": source_type}
        return Sample(
            id=sample_id,
            video=video,
            question=question,
            options=options,
            answer=answer,
            problem_type=problem_type,
            extra=extra,
            line=number,
        )

    return _collect("intentbench", root, _records(data, "qa.json"), "qa.json", parse)


def _intentbench_answer(obj: dict, problem_type: str, options: tuple[str, ...], sample_id) -> str:
    """The gold answer: a letter, sorted letters "B,E", or yes/no (a judge record that letters its Yes/No
    options may give the letter)."""
    if "solution" in obj:
        solution = _text(obj, "solution", sample_id)
        tagged = _ANSWER_TAG.findall(solution)
        text = tagged[-1] if tagged else solution
    else:
        text = _text(obj, "answer", sample_id)
    if problem_type == "multiple_choice":
        return _letter(text, len(options), sample_id, "solution")
    if problem_type == "multi_label":
        parts = [p for p in re.split(r"[\s,;]+", text) if p]
        if not parts:
            raise LineError("the answer names no option letter", sample_id)
        return ",".join(sorted({_letter(p, len(options), sample_id, "solution") for p in parts}))
    if options and _LETTER_FORM.fullmatch(text.strip()):
        text = options[LETTERS.index(_letter(text, len(options), sample_id, "solution"))]
    word = text.strip().strip(".").lower()
    if word not in ("yes", "no"):
        raise LineError(f"a judge answer must be Yes or No, got {text!r}", sample_id)
    return word


# --- AVQA -----------------------------------------------------------------------------------------------

AVQA_KNOWN = ("question_text", "multi_choice", "answer")
AVQA_NULL_OPTION = "null"


def read_avqa(root, split: str = "train") -> SourceData:
    """AVQA (Yang et al., ACM MM 2022; repository AlyssaYoung/AVQA): ``ROOT/annotation/{split}_qa.json`` and
    ``ROOT/video/{video_name}.mp4`` (the authors' ``data/`` folder), splits ``train`` and ``val``.

    Each record: ``question_text``, ``multi_choice`` (four option strings), ``answer`` (0-based index of
    the correct option), ``video_name``, ``video_id`` and the category ``question_type`` (Which, Come From,
    Happening, Where, Why, Before Next, When, Used For); every field but the question, options and answer
    is kept in ``extra``. The video's own audio track is used.

    Unverified: the id field: ``id`` when the record has one, else ``{split}-{k}`` with ``k`` the record's
    0-based position (the authors' preprocessing numbers questions so); and the folder layout of the
    dataset website's download (the one here is the authors' repository's). AVQA-R1-6K (EchoInk-R1) is a
    different release of image + audio pairs, which this video pipeline cannot decode.

    A ``null`` option becomes the text "null", as the authors' text preprocessing encodes it, and its
    letter is listed in ``extra["null_options"]``; a record whose *correct* option is null is a failure
    line naming the record and the option.
    """
    if not split or "/" in split or "\\" in split or split.strip(".") == "":
        raise SourceError(f"split {split!r} is not a plain name such as train or val")
    qa_name = f"annotation/{split}_qa.json"
    data = _load(Path(root), qa_name, ("video",), BENCHMARKS["avqa"])

    def parse(item, number):
        _, raw = item
        obj = _record(raw)
        sample_id = _id(obj, "id") if "id" in obj else f"{split}-{number - 1}"
        video_name = _plain_name(_named_id(obj, "video_name", sample_id), "video_name", sample_id)
        question = _text(obj, "question_text", sample_id)
        raw = obj.get("multi_choice")
        nulls = [LETTERS[i] for i, o in enumerate(raw) if o is None] if isinstance(raw, list) else []
        if nulls:  # the authors' text preprocessing encodes a null candidate as the word "null"
            raw = [AVQA_NULL_OPTION if o is None else o for o in raw]
        options = _options(raw, sample_id, "multi_choice")
        if "answer" not in obj:
            raise LineError("missing field 'answer'", sample_id)
        answer = _index_letter(obj["answer"], len(options), sample_id, "answer")
        if answer in nulls:
            raise LineError(
                f"the correct option {answer} (multi_choice[{LETTERS.index(answer)}]) is null in the "
                "release, so the question has no answer text to choose",
                sample_id,
            )
        extra = _extra(obj, AVQA_KNOWN, sample_id)
        if nulls:
            extra["null_options"] = nulls
        return Sample(
            id=sample_id,
            video=f"video/{video_name}.mp4",
            question=question,
            options=options,
            answer=answer,
            problem_type="multiple_choice",
            extra=extra,
            line=number,
        )

    return _collect("avqa", Path(root), _records(data, qa_name), qa_name, parse)


# --- HumanOmniV2 / R1-Omni / Video-R1 training records ---------------------------------------------------

R1_TYPES = {
    "multiple choice": "multiple_choice",
    "emer_ov_mc": "multi_label",
    "judge": "yes_no",
    "numerical": "numeric",
    "regression": "numeric",
    "OCR": "free_text",
    "free-form": "free_text",
}
R1_KNOWN = ("problem", "options", "solution", "answer", "problem_type", "path", "video", "process")
R1_IDS = ("problem_id", "qid", "id")
R1_MEDIA = {"video": "video", "image": "image", "audio": "audio"}


def read_r1(root, split: str = "") -> SourceData:
    """Training records of HumanOmniV2, R1-Omni and Video-R1: ``--root ROOT --split FILE``.

    ``FILE`` (absolute, or relative to ``ROOT``) is a JSON list or JSON Lines file of records with
    ``problem``, ``options`` (option strings, "A. …"; empty or absent for open questions), ``solution``
    (the answer inside ``<answer>…</answer>``, possibly after reasoning; a plain ``answer`` field is read
    when there is no ``solution``), ``problem_type``, ``data_type`` (``video``, ``image`` or ``audio``) and
    ``path`` (relative to ``ROOT``; a leading "./" as Video-R1 writes it is fine; HumanOmniV2 ``video`` is
    read when there is no ``path``). Problem types: "multiple choice" → ``multiple_choice``, "emer_ov_mc" →
    ``multi_label``, "judge" → ``yes_no``, "numerical" and "regression" → ``numeric``, "OCR" and
    "free-form" → ``free_text``; any other type is a failure line, as is a record whose ``path`` lists
    several media (image + audio). The id is ``problem_id`` (Video-R1), else ``qid`` or ``id``, else
    ``{file stem}-{k}`` (``k`` the 0-based position). ``extra`` keeps every other field but the
    reasoning text ``process``, plus ``source_problem_type``.
    """
    root = Path(root)
    bench = BENCHMARKS["r1"]
    if not root.is_dir():
        raise _layout_error(f"data root {root} is not a folder", bench)
    if not split or split == "train":
        found = sorted(p.name for p in root.iterdir() if p.suffix in (".json", ".jsonl"))
        raise _layout_error(
            "--source r1 needs --split FILE, the records' .json or .jsonl file (absolute or "
            f"relative to --root); {root} holds {', '.join(found) if found else 'no such file'}",
            bench,
        )
    path = Path(split) if Path(split).is_absolute() else root / split
    if not path.is_file():
        raise _layout_error(f"records file {path} does not exist", bench)
    stem = path.name.rsplit(".", 1)[0]
    try:
        text = path.read_bytes().decode("utf-8").lstrip("\ufeff")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from None
    if path.suffix == ".jsonl":
        records = ((n, (None, line)) for n, line in enumerate(text.splitlines(), 1) if line.strip())
    else:
        try:
            data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        except (ValueError, RecursionError) as exc:
            raise SourceError(
                f"{path} is not a valid JSON document ({exc}); give a JSON list of records, or "
                "JSON Lines with the .jsonl suffix"
            ) from None
        if not isinstance(data, list):
            raise SourceError(f"{path} must hold a JSON list of records, got {_type(data)}")
        records = ((n, (None, r)) for n, r in enumerate(data, 1))

    def parse(item, number):
        _, raw = item
        if isinstance(raw, str):
            try:
                raw = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
            except (ValueError, RecursionError) as exc:
                raise LineError(f"malformed JSON: {exc}") from None
        obj = _record(raw)
        name = next((n for n in R1_IDS if n in obj), None)
        sample_id = _id(obj, name) if name else f"{stem}-{number - 1}"
        source_type = _text(obj, "problem_type", sample_id)
        problem_type = R1_TYPES.get(source_type.strip())
        if problem_type is None:
            raise LineError(
                f"problem_type {source_type!r} has no matcher here (known: {', '.join(R1_TYPES)})", sample_id
            )
        question = _text(obj, "problem", sample_id)
        raw_options = obj.get("options")
        listed = _options(raw_options, sample_id, "options") if raw_options else ()
        if problem_type in ("multiple_choice", "multi_label") and not listed:
            raise LineError(f"a {source_type!r} record needs 'options'", sample_id)
        options = listed if problem_type in ("multiple_choice", "multi_label") else ()
        if problem_type in ("multiple_choice", "multi_label", "yes_no"):
            answer = _intentbench_answer(obj, problem_type, listed, sample_id)
        else:
            answer = _tagged_answer(obj, sample_id)
        media = obj.get("path", obj.get("video"))
        if isinstance(media, dict):
            raise LineError(
                "the record's path lists several media "
                f"({', '.join(sorted(map(str, media)))}); a sample holds one video, image or audio file",
                sample_id,
            )
        if not isinstance(media, str) or not media.strip():
            raise LineError("missing field 'path'", sample_id)
        rel = _relative(media, "path", sample_id)
        data_type = obj.get("data_type", "video")
        kind = R1_MEDIA.get(data_type) if isinstance(data_type, str) else None
        if kind is None:
            raise LineError(f"data_type {data_type!r} is not one of {', '.join(R1_MEDIA)}", sample_id)
        extra = {**_extra(obj, R1_KNOWN, sample_id), "source_problem_type": source_type}
        return Sample(
            id=sample_id,
            video=rel if kind == "video" else None,
            question=question,
            options=options,
            answer=answer,
            problem_type=problem_type,
            extra=extra,
            line=number,
            image=rel if kind == "image" else None,
            audio=rel if kind == "audio" else None,
        )

    return _collect("r1", root, records, str(split), parse)


def _tagged_answer(obj: dict, sample_id) -> str:
    """The text inside the last ``<answer>…</answer>`` of ``solution`` (else ``solution`` or ``answer`` as is)."""
    if "solution" in obj:
        solution = obj["solution"]
        if isinstance(solution, (int, float)) and not isinstance(solution, bool):
            return json.dumps(solution)
        solution = _text(obj, "solution", sample_id)
        tagged = _ANSWER_TAG.findall(solution)
        text = tagged[-1] if tagged else solution
    else:
        text = _text(obj, "answer", sample_id)
    if not text.strip():
        raise LineError("the answer inside <answer>…</answer> is empty", sample_id)
    return text.strip()


BENCHMARKS: dict[str, Benchmark] = {
    "dailyomni": Benchmark(
        "dailyomni",
        "Daily-Omni",
        "  ROOT/qa.json\n  ROOT/Videos/{video_id}/{video_id}_video.mp4   (extract Videos.tar in ROOT)",
        read_dailyomni,
    ),
    "worldsense": Benchmark(
        "worldsense",
        "WorldSense",
        "  ROOT/worldsense_qa.json\n  ROOT/videos/{video}.mp4"
        "   (extract worldsense_videos*.zip into ROOT/videos/, flat)",
        read_worldsense,
    ),
    "intentbench": Benchmark(
        "intentbench",
        "IntentBench",
        "  ROOT/qa.json\n  ROOT/videos/...   (extract "
        "videos.zip in ROOT; each record's 'video' path is read under ROOT/videos/)",
        read_intentbench,
    ),
    "avqa": Benchmark(
        "avqa",
        "AVQA",
        "  ROOT/annotation/{split}_qa.json   (split: train or val)\n  ROOT/video/{video_name}.mp4",
        read_avqa,
        uses_split=True,
    ),
    "r1": Benchmark(
        "r1",
        "HumanOmniV2 / R1-Omni / Video-R1 records",
        "  --split FILE   (the records' .json or "
        ".jsonl, absolute or relative to ROOT)\n  ROOT/{path}    (each record's 'path', e.g. "
        "./LLaVA-Video-178K/x.mp4)",
        read_r1,
        uses_split=True,
    ),
}
BENCHMARKS["humanomniv2"] = BENCHMARKS["r1"]
