"""The output folder of a run, resumable: which shards are done, the folder made ready for a run, and each
shard filled in order and closed.

A shard is written to a hidden temporary file by ``shards.ShardWriter`` and renamed when complete; then a
small state file ``_state/shard-NNNNN.json`` records the shard's plan hash, its checksum, counts and the
failures of its clips. A re-run skips every shard whose state matches its plan and whose file still matches
its checksum, so a killed run (even ``kill -9``) resumes where it stopped and ends with the same shards as a
clean run; a shard whose inputs changed (a video downloaded since) or whose file was damaged is rebuilt.
``_state/run.json`` holds the content options: a run with other options refuses the folder unless
``--overwrite``. Samples whose question is too long for the budget or whose time span ends after the clip
become failures as their shard is filled.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import shards as fmt
from .options import BuildOptions, PreprocessError
from .plan import Clip

RUN_CONFIG_NAME = "run.json"
_SHARD_RE = re.compile(r"^shard-(\d{5})\.parquet$")


def state_path(out: Path, index: int) -> Path:
    return out / fmt.STATE_DIR / f"shard-{index:05d}.json"


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def shard_done(out: Path, index: int, plan: str, verify: bool = False) -> dict | None:
    """The state of a finished shard that matches ``plan`` (and, with ``verify``, its checksum), else None."""
    state = read_json(state_path(out, index))
    if not isinstance(state, dict) or state.get("plan") != plan:
        return None
    if state.get("file"):
        path = out / state["file"]
        if not path.is_file() or path.stat().st_size != state.get("bytes"):
            return None
        if verify and fmt.sha256_file(path) != state.get("sha256"):
            return None
    return state


def existing_shards(out: Path) -> dict[int, Path]:
    found = {}
    for path in out.glob("shard-*.parquet"):
        match = _SHARD_RE.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def prepare_output(options: BuildOptions, config: dict, mine: list[int], n_shards: int) -> None:
    out = options.output
    try:
        (out / fmt.STATE_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PreprocessError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    run_path = out / fmt.STATE_DIR / RUN_CONFIG_NAME
    previous = read_json(run_path)
    if options.overwrite:
        owned = set(mine) | {
            i for i in existing_shards(out) if i >= n_shards and i % options.num_shards == options.shard_index
        }
        for index in owned:
            (out / fmt.shard_name(index)).unlink(missing_ok=True)
            state_path(out, index).unlink(missing_ok=True)
        for name in (fmt.MANIFEST_NAME, fmt.FAILURES_NAME):
            (out / name).unlink(missing_ok=True)
    elif previous is not None and previous != config:
        changed = sorted(k for k in set(previous) | set(config) if previous.get(k) != config.get(k))
        raise PreprocessError(
            f"{out} holds output made with different options ({', '.join(changed)}); pass --overwrite to "
            "replace it or choose another --output"
        )
    elif previous is None and (out / fmt.MANIFEST_NAME).exists():
        raise PreprocessError(f"{out} holds output this version cannot resume; pass --overwrite to replace it")
    fmt.write_json_atomic(run_path, config)
    for index in mine:
        fmt.partial_path(out / fmt.shard_name(index)).unlink(missing_ok=True)


@dataclass
class OpenShard:
    index: int
    remaining: int
    writer: object = None
    failures: list = field(default_factory=list)
    clips_failed: int = 0
    with_audio: int = 0
    without_audio: int = 0
    clip_seconds: float = 0.0
    modalities: dict = field(default_factory=dict)  # "video" / "video_only" / "audio" / "image" → samples
    max_prompt_tokens: int = 0


def add_clip(out: Path, shard: OpenShard, clip: Clip, result: dict, text_tokens: dict[str, int], budget: int) -> None:
    if not result["ok"]:
        shard.clips_failed += 1
        for sample in clip.samples:
            shard.failures.append({"id": sample.id, "path": clip.path, "line": sample.line, "reason": result["reason"]})
        return
    media = result["media"]
    samples = []
    for sample in clip.samples:
        late = ts_past_the_end(sample.extra.get("ts"), media["duration"]) if clip.modality != "image" else None
        long = too_long(media["media_tokens"], text_tokens[sample.id], budget)
        if late or long:
            shard.failures.append({"id": sample.id, "path": clip.path, "line": sample.line, "reason": late or long})
        else:
            samples.append(sample)
    if not samples:
        return
    if shard.writer is None:
        shard.writer = fmt.ShardWriter(out / fmt.shard_name(shard.index))
    records = [{**s.record(), "prompt_tokens": media["media_tokens"] + text_tokens[s.id]} for s in samples]
    shard.writer.add({"video": clip.path, "audio_path": clip.audio, **media, "samples": records})
    if media["audio"] is not None:
        shard.with_audio += len(samples)
    else:
        shard.without_audio += len(samples)
    kind = "video_only" if clip.modality == "video" and media["audio"] is None else clip.modality
    shard.modalities[kind] = shard.modalities.get(kind, 0) + len(samples)
    shard.max_prompt_tokens = max([shard.max_prompt_tokens] + [r["prompt_tokens"] for r in records])
    shard.clip_seconds += media["duration"]


def too_long(media_tokens: int, text_tokens: int, budget: int) -> str | None:
    """Why a sample whose prompt is over the budget cannot be used (its question is too long), or None."""
    if not budget or media_tokens + text_tokens <= budget:
        return None
    return (
        f"the prompt is {media_tokens + text_tokens} tokens, over --max-prompt-tokens {budget}: the question, its "
        f"options and the system prompt take {text_tokens} tokens and this file's media {media_tokens} (planned "
        "for its shorter questions); shorten the question or raise --max-prompt-tokens (and max_prompt_length "
        "of the training config to match)"
    )


TS_SLACK_S = 1.0  # `ts` is given in whole seconds; real clips end a few frames short of a round number
_TS_SPAN = re.compile(r"^\s*[\d:.]+\s*-\s*((?:\d+:){0,2}\d+(?:\.\d+)?)\s*$")


def ts_past_the_end(ts, duration: float) -> str | None:
    """Why a question whose time span ``ts`` ("MM:SS-MM:SS", "H:MM:SS-H:MM:SS" or seconds) ends after a clip of
    ``duration`` seconds cannot be trained on, or None (also for a missing or unparseable ``ts``)."""
    match = _TS_SPAN.match(ts) if isinstance(ts, str) else None
    if match is None:
        return None
    end = 0.0
    for part in match.group(1).split(":"):
        end = end * 60 + float(part)
    if end <= duration + TS_SLACK_S:
        return None
    return (
        f"the question's time span ts={ts!r} ends at {end:g} s but the clip is only {duration:.1f} s long, "
        "so the moment it asks about is missing; the video is probably an incomplete download: fetch it again"
    )


def close_shard(out: Path, shard: OpenShard, plan: str) -> None:
    info = (
        shard.writer.close()
        if shard.writer is not None
        else {"file": None, "rows": 0, "samples": 0, "bytes": 0, "sha256": None}
    )
    fmt.write_json_atomic(
        state_path(out, shard.index),
        {
            "plan": plan,
            **info,
            "with_audio": shard.with_audio,
            "without_audio": shard.without_audio,
            "clip_seconds": shard.clip_seconds,
            "clips_failed": shard.clips_failed,
            "failures": shard.failures,
            "modalities": shard.modalities,
            "max_prompt_tokens": shard.max_prompt_tokens,
        },
    )
