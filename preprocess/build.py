"""Orchestration: read the source, plan shards, decode clips in worker processes, write shards, resume.

Plan. Samples are grouped by clip (video + audio file) so each clip is decoded and stored once; clips are
sorted by path and cut into shards of ``shard_size`` clips, so the assignment is the same on every run and
every machine. With ``num_shards=K, shard_index=I`` this run writes the shards ``n`` with ``n % K == I``.

Atomic and resumable. A shard is written to a hidden temporary file and renamed when complete; then a small
state file ``_state/shard-NNNNN.json`` records a hash of the shard's plan (options, clips, file sizes, QA
text), its checksum, counts and the failures of its clips. A re-run skips every shard whose state matches
its plan and whose file still matches its checksum, so a killed run (even ``kill -9``) resumes where it
stopped and ends with the same shards as a clean run; a shard whose inputs changed (a video downloaded
since) or whose file was damaged is rebuilt. When every shard of the plan
is done, ``manifest.json`` and ``failures.jsonl`` are written; with several machines, the last one to
finish writes them, or any of them re-run after all parts are copied into one folder.

Workers are spawned processes (``concurrent.futures`` with the spawn context). A clip that kills its worker
(a decoder crash, out of memory) is retried alone in a fresh pool and, if it kills that one too, becomes a
failure; the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from . import shards as fmt
from .benchmarks import BENCHMARKS
from .media import VideoOptions
from .sources import SourceData, SourceError, read_jsonl, read_siq2

RUN_CONFIG_NAME = "run.json"
_SHARD_RE = re.compile(r"^shard-(\d{5})\.parquet$")


class PreprocessError(Exception):
    """The run cannot start or continue (bad arguments, unreadable source, a conflicting output folder)."""


@dataclass
class BuildOptions:
    """Everything ``python -m preprocess`` accepts. ``workers=0`` decodes in this process (for debugging)."""

    source: str
    output: Path
    root: Path | None = None
    split: str = "train"
    manifest: Path | None = None
    video: VideoOptions = field(default_factory=VideoOptions)
    jpeg_quality: int = 90
    workers: int | None = None
    shard_size: int = 32
    num_shards: int = 1
    shard_index: int = 0
    overwrite: bool = False
    require_audio: bool = False
    progress: bool = True

    def validate(self) -> None:
        if self.source not in ("siq2", "jsonl", *BENCHMARKS):
            raise PreprocessError(f"--source must be one of siq2, jsonl, {', '.join(BENCHMARKS)}; got {self.source!r}")
        if self.source == "siq2" and self.root is None:
            raise PreprocessError("--source siq2 needs --root DIR (the folder holding qa/ and video/)")
        if self.source in BENCHMARKS and self.root is None:
            raise PreprocessError(f"--source {self.source} needs --root DIR:\n{BENCHMARKS[self.source].layout}")
        if self.source == "jsonl" and self.manifest is None:
            raise PreprocessError("--source jsonl needs --manifest FILE")
        v = self.video
        if not v.fps > 0:
            raise PreprocessError(f"--fps must be positive, got {v.fps}")
        for name in ("min_pixels", "max_pixels", "total_pixels", "min_frames", "max_frames"):
            value = getattr(v, name)
            if value is not None and not value > 0:
                raise PreprocessError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if v.min_pixels is not None and v.max_pixels is not None and v.min_pixels > v.max_pixels:
            raise PreprocessError(f"--min-pixels ({v.min_pixels}) is larger than --max-pixels ({v.max_pixels})")
        if v.min_frames is not None and v.max_frames is not None and v.min_frames > v.max_frames:
            raise PreprocessError(f"--min-frames ({v.min_frames}) is larger than --max-frames ({v.max_frames})")
        if not 90 <= self.jpeg_quality <= 100:
            raise PreprocessError(f"--jpeg-quality must be 90-100, got {self.jpeg_quality}")
        if self.workers is not None and self.workers < 0:
            raise PreprocessError(f"--workers must be 0 or more, got {self.workers}")
        if self.shard_size < 1:
            raise PreprocessError(f"--shard-size must be at least 1, got {self.shard_size}")
        if self.num_shards < 1:
            raise PreprocessError(f"--num-shards must be at least 1, got {self.num_shards}")
        if not 0 <= self.shard_index < self.num_shards:
            raise PreprocessError(f"--shard-index must be in 0..{self.num_shards - 1}, got {self.shard_index}")
        if self.output.exists() and not self.output.is_dir():
            raise PreprocessError(f"--output {self.output} exists and is not a folder")


@dataclass
class Clip:
    video: str
    audio: str | None
    samples: list
    video_size: int
    audio_size: int


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --- planning -------------------------------------------------------------------------------------------

def _read_source(options: BuildOptions) -> SourceData:
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
    groups: dict[tuple[str, str | None], list] = {}
    for sample in data.samples:
        groups.setdefault((sample.video, sample.audio), []).append(sample)
    clips = []
    for (video, audio) in sorted(groups, key=lambda k: (k[0], k[1] or "")):
        clips.append(Clip(video=video, audio=audio, samples=groups[(video, audio)],
                          video_size=_size(data.base / video),
                          audio_size=_size(data.base / audio) if audio else -1))
    return clips


def content_options(options: BuildOptions) -> dict:
    """The options that change what a shard holds (not where or how fast it is made)."""
    split_counts = options.source == "siq2" or getattr(BENCHMARKS.get(options.source), "uses_split", False)
    return {"format_version": fmt.FORMAT_VERSION, "source": options.source, "split": options.split
            if split_counts else None, **options.video.to_dict(),
            "jpeg_quality": options.jpeg_quality, "require_audio": options.require_audio,
            "shard_size": options.shard_size}


def shard_plan_hash(config: dict, clips: list[Clip]) -> str:
    body = {"config": config, "clips": [
        {"video": c.video, "audio": c.audio, "video_size": c.video_size, "audio_size": c.audio_size,
         "samples": [s.record() for s in c.samples]} for c in clips]}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


# --- workers --------------------------------------------------------------------------------------------

def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(parent: int) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def process_clip(task: dict) -> dict:
    """Decode one clip and encode its media columns; never raises (a failure is ``{"ok": False, ...}``)."""
    import torch

    from .media import MediaError, decode_clip

    if torch.get_num_threads() != task["threads"]:
        torch.set_num_threads(task["threads"])
    try:
        decoded = decode_clip(task["video"], task["audio"], VideoOptions(**task["video_options"]),
                              threads=task["threads"])
        if task["require_audio"] and decoded.audio is None:
            return {"ok": False, "reason": "no audio: the video has no audio track and there is no audio file "
                                           "(--require-audio)"}
        return {"ok": True, "media": fmt.encode_media(decoded, task["jpeg_quality"])}
    except MediaError as exc:
        return {"ok": False, "reason": str(exc)}
    except MemoryError:
        return {"ok": False, "reason": "out of memory while decoding this video"}
    except Exception as exc:
        return {"ok": False, "reason": f"unexpected error while decoding: {type(exc).__name__}: {exc}"}


_CRASH_REASON = "the decoder crashed (its worker process died) on this video twice; the file is probably damaged"


def run_tasks(tasks: list[tuple[int, dict]], workers: int, may_submit=lambda i: True, fn=process_clip):
    """Yield ``(i, fn(task))`` for each ``(i, task)`` as results arrive (any order), ``workers`` at a time.

    ``may_submit(i)`` holds back task ``i`` (the caller's bound on results waiting to be written in order);
    it must be true for the smallest unfinished ``i``.
    """
    if workers == 0:
        for i, task in tasks:
            yield i, fn(task)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")
    queue, suspects = deque(tasks), deque()
    executor, executor_size, inflight = None, 0, {}
    try:
        while queue or suspects or inflight:
            size = 1 if suspects else workers
            if executor is not None and executor_size != size and not inflight:
                executor.shutdown(wait=True)
                executor = None
            if executor is None:
                executor = ProcessPoolExecutor(max_workers=size, mp_context=context, initializer=_init_worker,
                                               initargs=(os.getpid(),))
                executor_size = size
            source, limit = (suspects, 1) if executor_size == 1 and suspects else (queue, 2 * workers)
            while source and len(inflight) < limit and may_submit(source[0][0]):
                i, task = source.popleft()
                inflight[executor.submit(fn, task)] = (i, task)
            if not inflight:
                continue
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                i, task = inflight.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    broken = True
                    if executor_size == 1 and task.get("_suspect"):
                        yield i, {"ok": False, "reason": _CRASH_REASON}
                    else:
                        suspects.append((i, {**task, "_suspect": True}))
                    continue
                yield i, result
            if broken:
                for future, (i, task) in inflight.items():
                    suspects.append((i, {**task, "_suspect": True}))
                inflight.clear()
                executor.shutdown(wait=False, cancel_futures=True)
                executor = None
    finally:
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


# --- output folder --------------------------------------------------------------------------------------

def _state_path(out: Path, index: int) -> Path:
    return out / fmt.STATE_DIR / f"shard-{index:05d}.json"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _shard_done(out: Path, index: int, plan: str, verify: bool = False) -> dict | None:
    """The state of a finished shard that matches ``plan`` (and, with ``verify``, its checksum), else None."""
    state = _read_json(_state_path(out, index))
    if not isinstance(state, dict) or state.get("plan") != plan:
        return None
    if state.get("file"):
        path = out / state["file"]
        if not path.is_file() or path.stat().st_size != state.get("bytes"):
            return None
        if verify and fmt.sha256_file(path) != state.get("sha256"):
            return None
    return state


def _existing_shards(out: Path) -> dict[int, Path]:
    found = {}
    for path in out.glob("shard-*.parquet"):
        match = _SHARD_RE.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def _prepare_output(options: BuildOptions, config: dict, mine: list[int], n_shards: int) -> None:
    out = options.output
    try:
        (out / fmt.STATE_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PreprocessError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    run_path = out / fmt.STATE_DIR / RUN_CONFIG_NAME
    previous = _read_json(run_path)
    if options.overwrite:
        owned = set(mine) | {i for i in _existing_shards(out) if i >= n_shards and i % options.num_shards
                             == options.shard_index}
        for index in owned:
            (out / fmt.shard_name(index)).unlink(missing_ok=True)
            _state_path(out, index).unlink(missing_ok=True)
        for name in (fmt.MANIFEST_NAME, fmt.FAILURES_NAME):
            (out / name).unlink(missing_ok=True)
    elif previous is not None and previous != config:
        changed = sorted(k for k in set(previous) | set(config) if previous.get(k) != config.get(k))
        raise PreprocessError(
            f"{out} holds output made with different options ({', '.join(changed)}); pass --overwrite to "
            "replace it or choose another --output")
    elif previous is None and (out / fmt.MANIFEST_NAME).exists():
        raise PreprocessError(f"{out} holds output this version cannot resume; pass --overwrite to replace it")
    fmt.write_json_atomic(run_path, config)
    for index in mine:
        fmt.partial_path(out / fmt.shard_name(index)).unlink(missing_ok=True)


# --- the run --------------------------------------------------------------------------------------------

@dataclass
class _Open:
    index: int
    remaining: int
    writer: object = None
    failures: list = field(default_factory=list)
    clips_failed: int = 0
    with_audio: int = 0
    without_audio: int = 0
    clip_seconds: float = 0.0


def build(options: BuildOptions) -> dict:
    """Run preprocessing; returns the summary (the manifest's counts plus timing). Raises
    ``PreprocessError`` for unusable arguments or inputs; bad samples become failure lines instead."""
    start = time.monotonic()
    options.validate()
    data = _read_source(options)
    clips = plan_clips(data)
    config = content_options(options)
    size = options.shard_size
    n_shards = (len(clips) + size - 1) // size
    shard_clips = [clips[n * size:(n + 1) * size] for n in range(n_shards)]
    plans = [shard_plan_hash(config, c) for c in shard_clips]
    mine = [n for n in range(n_shards) if n % options.num_shards == options.shard_index]
    out = options.output
    _prepare_output(options, config, mine, n_shards)

    todo_shards = [n for n in mine if _shard_done(out, n, plans[n], verify=True) is None]
    workers = default_workers() if options.workers is None else options.workers
    threads = max(1, default_workers() // max(1, workers))
    base = Path(data.base)
    tasks, clip_shard = [], {}
    for n in todo_shards:
        for k, clip in enumerate(shard_clips[n]):
            i = n * size + k
            clip_shard[i] = n
            tasks.append((i, {
                "video": str(base / clip.video), "audio": str(base / clip.audio) if clip.audio else None,
                "video_options": options.video.to_dict(), "jpeg_quality": options.jpeg_quality,
                "require_audio": options.require_audio, "threads": threads,
            }))
    order = [i for i, _ in tasks]
    stats = _run(options, tasks, order, clip_shard, clips, shard_clips, plans, workers,
                 failed_before=len(data.failures))

    states = {n: _shard_done(out, n, plans[n]) for n in range(n_shards)}
    complete = all(s is not None for s in states.values())
    summary = None
    if complete:
        summary = _finalize(options, data, config, states, n_shards)
    elapsed = time.monotonic() - start
    decoded = stats["clips"]
    timing = (f"{_count(decoded, 'clip')} processed in {elapsed:.1f} s ({decoded / max(elapsed, 1e-9):.2f} clips/s), "
              f"{len(mine) - len(todo_shards)} of {_count(len(mine), 'shard')} already done")
    if summary is not None:
        c = summary["counts"]
        see = f" (see {out / fmt.FAILURES_NAME})" if c["failed"] else ""
        print(f"preprocess: wrote {_count(c['written'], 'sample')} from {_count(c['clips_written'], 'clip')} "
              f"({summary['hours_of_video']:.3f} h of video), {c['failed']} failed{see}; {timing}", flush=True)
    else:
        print(f"preprocess: part {options.shard_index} of {options.num_shards} done; {timing}; manifest.json is "
              "written when every part is done (re-run any part's command once all outputs share one folder)",
              flush=True)
    return {"complete": complete, "seconds": elapsed, "clips_processed": decoded, **(summary or {})}


def _run(options, tasks, order, clip_shard, clips, shard_clips, plans, workers, failed_before) -> dict:
    from tqdm import tqdm

    out = options.output
    size = options.shard_size
    results: dict[int, dict] = {}
    position = 0
    open_shards: dict[int, _Open] = {}
    failed_so_far = failed_before
    lookahead = size + 4 * max(1, workers)
    bar = tqdm(total=len(tasks), unit="clip", file=sys.stderr, disable=not options.progress,
               dynamic_ncols=True, smoothing=0.1)
    try:
        for i, result in run_tasks(tasks, workers,
                                   may_submit=lambda j: position >= len(order) or j - order[position] < lookahead):
            results[i] = result
            if not result["ok"]:
                failed_so_far += len(clips[i].samples)
            bar.update(1)
            bar.set_postfix(failed=failed_so_far, refresh=False)
            while position < len(order) and order[position] in results:
                j = order[position]
                n = clip_shard[j]
                shard = open_shards.get(n)
                if shard is None:
                    shard = open_shards[n] = _Open(index=n, remaining=len(shard_clips[n]))
                _add_clip(out, shard, clips[j], results.pop(j))
                shard.remaining -= 1
                if shard.remaining == 0:
                    _close_shard(out, open_shards.pop(n), plans[n])
                position += 1
    except BaseException:
        for shard in open_shards.values():
            if shard.writer is not None:
                shard.writer.abort()
        raise
    finally:
        bar.close()
    return {"clips": len(tasks)}


def _count(n: int, noun: str) -> str:
    """`1 clip`, `2 clips`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _add_clip(out: Path, shard: _Open, clip: Clip, result: dict) -> None:
    if not result["ok"]:
        shard.clips_failed += 1
        for sample in clip.samples:
            shard.failures.append({"id": sample.id, "path": clip.video, "line": sample.line,
                                   "reason": result["reason"]})
        return
    media = result["media"]
    samples = []
    for sample in clip.samples:
        late = ts_past_the_end(sample.extra.get("ts"), media["duration"])
        if late:
            shard.failures.append({"id": sample.id, "path": clip.video, "line": sample.line, "reason": late})
        else:
            samples.append(sample)
    if not samples:
        return
    if shard.writer is None:
        shard.writer = fmt.ShardWriter(out / fmt.shard_name(shard.index))
    shard.writer.add({"video": clip.video, "audio_path": clip.audio, **media,
                      "samples": [s.record() for s in samples]})
    if media["audio"] is not None:
        shard.with_audio += len(samples)
    else:
        shard.without_audio += len(samples)
    shard.clip_seconds += media["duration"]


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
    return (f"the question's time span ts={ts!r} ends at {end:g} s but the clip is only {duration:.1f} s long, "
            "so the moment it asks about is missing; the video is probably an incomplete download: fetch it again")


def _close_shard(out: Path, shard: _Open, plan: str) -> None:
    info = shard.writer.close() if shard.writer is not None else {"file": None, "rows": 0, "samples": 0,
                                                                   "bytes": 0, "sha256": None}
    fmt.write_json_atomic(_state_path(out, shard.index), {
        "plan": plan, **info, "with_audio": shard.with_audio, "without_audio": shard.without_audio,
        "clip_seconds": shard.clip_seconds, "clips_failed": shard.clips_failed, "failures": shard.failures,
    })


def _finalize(options: BuildOptions, data: SourceData, config: dict, states: dict, n_shards: int) -> dict:
    out = options.output
    for index, path in _existing_shards(out).items():
        if index >= n_shards:
            path.unlink(missing_ok=True)
            _state_path(out, index).unlink(missing_ok=True)
    ordered = [states[n] for n in range(n_shards)]
    media_failures = [f for s in ordered for f in s["failures"]]
    failures = data.failures + media_failures
    clip_seconds = sum(s["clip_seconds"] for s in ordered)
    total_bytes = sum(s["bytes"] for s in ordered)
    written = sum(s["samples"] for s in ordered)
    counts = {
        "samples": data.lines,
        "written": written,
        "failed": len(failures),
        "failed_input": len(data.failures),
        "failed_media": len(media_failures),
        "with_audio": sum(s["with_audio"] for s in ordered),
        "without_audio": sum(s["without_audio"] for s in ordered),
        "clips_written": sum(s["rows"] for s in ordered),
        "clips_failed": sum(s["clips_failed"] for s in ordered),
    }
    from .media import qwen_defaults

    try:
        from importlib.metadata import version
        qwen_version = version("qwen-omni-utils")
    except Exception:
        qwen_version = None
    manifest = {
        "format_version": fmt.FORMAT_VERSION,
        "source": {"kind": data.kind, "qa_file": data.qa_file,
                   "root": str(options.root) if options.source != "jsonl" else None,
                   "manifest": str(options.manifest) if options.source == "jsonl" else None},
        "options": {**config, "num_shards": options.num_shards},
        "qwen_omni_utils": {"version": qwen_version, "defaults": qwen_defaults()},
        "counts": counts,
        "clip_seconds": clip_seconds,
        "hours_of_video": clip_seconds / 3600.0,
        "bytes": total_bytes,
        "bytes_per_clip_second": total_bytes / clip_seconds if clip_seconds else None,
        "sample_rate": fmt.SAMPLE_RATE,
        "shards": [{"file": s["file"], "rows": s["rows"], "samples": s["samples"], "with_audio": s["with_audio"],
                    "bytes": s["bytes"], "sha256": s["sha256"]} for s in ordered if s["file"]],
    }
    fmt.write_json_atomic(out / fmt.FAILURES_NAME, failures, lines=True)
    fmt.write_json_atomic(out / fmt.MANIFEST_NAME, manifest)
    return manifest
