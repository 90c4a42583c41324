"""The plan of a preprocessing run: the source read into samples, the samples grouped into clips, the clips
cut into shards, and the facts of the samples counted before any media is decoded.

Samples are grouped by clip (video + audio file, or image) so each clip is decoded and stored once; clips are
sorted by path and cut into shards of ``shard_size`` clips, so the assignment is the same on every run and
every machine. Each shard's plan hash (options, clips, file sizes, QA text) tells a re-run whether a finished
shard still matches its inputs (``preprocess.output``). Each sample's prompt text is counted here
(``count_text_tokens``: system prompt, question with options, chat template) for the prompt budget, and the
``problem_type`` spellings are counted for the manifest, with one warning for those the accuracy reward does
not know.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .benchmarks import BENCHMARKS
from .budget import TextCounter
from .options import BuildOptions, PreprocessError
from .sources import SourceData, SourceError, read_jsonl, read_siq2


@dataclass
class Clip:
    """One media item (a video with or without a separate audio file, an audio file, or an image) and the
    samples that ask about it."""

    video: str | None
    audio: str | None
    samples: list
    video_size: int
    audio_size: int
    image: str | None = None

    @property
    def modality(self) -> str:
        return "video" if self.video is not None else "image" if self.image is not None else "audio"

    @property
    def path(self) -> str:
        """The media file named in failures and stored as the row's ``video`` (provenance)."""
        return self.video or self.image or self.audio


def read_source(options: BuildOptions) -> SourceData:
    try:
        if options.source == "siq2":
            return read_siq2(options.root, options.split)
        if options.source in BENCHMARKS:
            return BENCHMARKS[options.source].read(options.root, options.split)
        return read_jsonl(options.manifest)
    except SourceError as exc:
        raise PreprocessError(str(exc)) from None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def plan_clips(data: SourceData) -> list[Clip]:
    """Group samples by (video, audio), sorted by path; samples keep their file order within a clip."""
    groups: dict[tuple, list] = {}
    for sample in data.samples:
        groups.setdefault((sample.video, sample.audio, sample.image), []).append(sample)
    clips = []
    for video, audio, image in sorted(groups, key=lambda k: tuple(p or "" for p in k)):
        main = video or image
        clips.append(
            Clip(
                video=video,
                audio=audio,
                image=image,
                samples=groups[(video, audio, image)],
                video_size=_size(data.base / main) if main else -1,
                audio_size=_size(data.base / audio) if audio else -1,
            )
        )
    return clips


def shard_plan_hash(config: dict, clips: list[Clip]) -> str:
    body = {
        "config": config,
        "clips": [
            {
                "video": c.video,
                "audio": c.audio,
                **({"image": c.image} if c.image else {}),
                "video_size": c.video_size,
                "audio_size": c.audio_size,
                "samples": [s.record() for s in c.samples],
            }
            for c in clips
        ],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def count_text_tokens(
    counter: TextCounter, data: SourceData, answer_instructions: dict | None = None
) -> dict[str, int]:
    """Sample id → its prompt's text tokens (system prompt, question with options and its problem type's answer
    instruction, chat template): the text training builds (`answer_instructions`: the config's overrides)."""
    from omni_grpo.models.base import format_question
    from omni_grpo.rewards.instructions import instruction

    counts = {}
    for s in data.samples:
        sample = {"question": s.question, "options": list(s.options), "problem_type": s.problem_type}
        sample["instruction"] = instruction(sample, answer_instructions)
        counts[s.id] = counter.count(format_question(sample))
    return counts


def problem_type_counts(data: SourceData) -> dict:
    """``{"matched": {matcher: n}, "unknown": {spelling: n}}`` over the samples read."""
    from omni_grpo.rewards.accuracy import normalise_problem_type

    matched: dict[str, int] = {}
    unknown: dict[str, int] = {}
    for sample in data.samples:
        kind = normalise_problem_type(sample.problem_type)
        if kind is None:
            unknown[sample.problem_type] = unknown.get(sample.problem_type, 0) + 1
        else:
            matched[kind] = matched.get(kind, 0) + 1
    return {"matched": matched, "unknown": unknown}


def warn_unknown_problem_types(data: SourceData) -> None:
    """One warning line when some samples' ``problem_type`` is not one the accuracy reward knows."""
    from omni_grpo.rewards.accuracy import describe_known_problem_types

    unknown = problem_type_counts(data)["unknown"]
    if unknown:
        listed = ", ".join(f"{k!r} ({n})" for k, n in sorted(unknown.items(), key=lambda kv: -kv[1]))
        print(
            f"preprocess: warning: {sum(unknown.values())} samples have a problem_type the accuracy reward does "
            f"not know: {listed}; it will score them None. Known types: {describe_known_problem_types()}",
            file=sys.stderr,
            flush=True,
        )
