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

Prompt budget. Each sample's prompt (media + system prompt + question + chat template) must fit
``max_prompt_tokens`` (the training config's ``max_prompt_length``): the text of every sample is counted here
(``preprocess.budget.TextCounter``), each clip is decoded with frames that fit its longest question, and each
sample's ``prompt_tokens`` is stored. A clip that cannot fit (its audio alone is too long) is a failure. Frames,
images and counts are those of the model family trained on the shards (``family``: its pixel grid and audio
rate, ``preprocess.budget.PIXEL_GRID``).

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
from .budget import DEFAULT_FAMILY, DEFAULT_MAX_PROMPT_TOKENS, PIXEL_GRID, PromptBudget, TextCounter, pixel_grid
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
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
    tokenizer: Path | None = None
    system_prompt: str | None = None
    family: str = DEFAULT_FAMILY  # the model family trained on the shards: its pixel grid and token counts

    def __post_init__(self):
        if self.tokenizer is not None:
            self.tokenizer = Path(self.tokenizer)

    def prompt_system(self) -> str:
        """The system prompt counted in the budget: the one training builds its prompts with (the default of
        `TrainConfig.system_prompt`, which `configs/stage4.yaml` keeps) unless given."""
        if self.system_prompt is not None:
            return self.system_prompt
        from omni_grpo.config.schema import DEFAULT_SYSTEM_PROMPT

        return DEFAULT_SYSTEM_PROMPT

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
        if self.family not in PIXEL_GRID:
            raise PreprocessError(f"--family must be one of {', '.join(PIXEL_GRID)} (the training config's "
                                  f"model_family), got {self.family!r}")
        _check_pairs(v, pixel_grid(self.family))
        if self.max_prompt_tokens < 0:
            raise PreprocessError(f"--max-prompt-tokens must be 0 (no budget) or more, got {self.max_prompt_tokens}")
        if self.tokenizer is not None and not (self.tokenizer / "tokenizer_config.json").is_file():
            raise PreprocessError(f"--tokenizer {self.tokenizer} has no tokenizer_config.json; pass the model "
                                  "(or processor) folder of the model you will train")
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


def _check_pairs(v: VideoOptions, grid: int) -> None:
    """Options that contradict each other or qwen-omni-utils' defaults: one error before any file is read."""
    from .media import qwen_defaults

    defaults = qwen_defaults()

    def value(name):
        given = getattr(v, name)
        return (given, f"--{name.replace('_', '-')} {given:g}") if given is not None else \
            (defaults[name], f"the default --{name.replace('_', '-')} {defaults[name]:g}")

    for low, high, fix in (("min_pixels", "max_pixels", "pass a --min-pixels no larger than --max-pixels"),
                           ("min_frames", "max_frames", "pass a --min-frames no larger than --max-frames"),
                           ("min_pixels", "total_pixels", "lower --min-pixels or raise --total-pixels")):
        (lo, lo_text), (hi, hi_text) = value(low), value(high)
        if (getattr(v, low) is not None or getattr(v, high) is not None) and lo > hi:
            raise PreprocessError(f"{lo_text} is larger than {hi_text}: no frame could be sampled; {fix}")
    if v.max_pixels is not None and v.max_pixels < grid * grid:
        raise PreprocessError(f"--max-pixels {v.max_pixels} is smaller than one {grid}x{grid} patch "
                              f"({grid * grid} pixels), the smallest frame the model takes")


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
    groups: dict[tuple, list] = {}
    for sample in data.samples:
        groups.setdefault((sample.video, sample.audio, sample.image), []).append(sample)
    clips = []
    for (video, audio, image) in sorted(groups, key=lambda k: tuple(p or "" for p in k)):
        main = video or image
        clips.append(Clip(video=video, audio=audio, image=image, samples=groups[(video, audio, image)],
                          video_size=_size(data.base / main) if main else -1,
                          audio_size=_size(data.base / audio) if audio else -1))
    return clips


def content_options(options: BuildOptions) -> dict:
    """The options that change what a shard holds (not where or how fast it is made)."""
    split_counts = options.source == "siq2" or getattr(BENCHMARKS.get(options.source), "uses_split", False)
    return {"format_version": fmt.FORMAT_VERSION, "source": options.source, "split": options.split
            if split_counts else None, **options.video.to_dict(),
            "jpeg_quality": options.jpeg_quality, "require_audio": options.require_audio,
            "shard_size": options.shard_size, "max_prompt_tokens": options.max_prompt_tokens,
            "tokenizer": str(options.tokenizer) if options.tokenizer is not None else None,
            "system_prompt": options.prompt_system(), "family": options.family}


def shard_plan_hash(config: dict, clips: list[Clip]) -> str:
    body = {"config": config, "clips": [
        {"video": c.video, "audio": c.audio, **({"image": c.image} if c.image else {}),
         "video_size": c.video_size, "audio_size": c.audio_size,
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

    from .media import MediaError, OverBudgetError, decode_audio_only, decode_clip, load_image

    if torch.get_num_threads() != task["threads"]:
        torch.set_num_threads(task["threads"])
    def decode(budget):
        if task.get("modality") == "image":
            return load_image(task["image"], budget, task["family"])
        if task.get("modality") == "audio":
            return decode_audio_only(task["audio"], budget, task["family"])
        return decode_clip(task["video"], task["audio"], VideoOptions(**task["video_options"]),
                           threads=task["threads"], budget=budget, family=task["family"])

    try:
        if task.get("budget"):
            # plan for the longest question that fits; a longer one becomes its own failure (see _add_clip)
            max_tokens, texts = task["budget"]
            for k, text in enumerate(texts):
                try:
                    decoded = decode(PromptBudget(max_tokens, text, family=task["family"]))
                    break
                except OverBudgetError:
                    if k == len(texts) - 1:
                        raise
        else:
            decoded = decode(None)
        if task["require_audio"] and decoded.audio is None and decoded.modality == "video":
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
    modalities: dict = field(default_factory=dict)  # "video" / "video_only" / "audio" / "image" → samples
    max_prompt_tokens: int = 0


def build(options: BuildOptions) -> dict:
    """Run preprocessing; returns the summary (the manifest's counts plus timing). Raises
    ``PreprocessError`` for unusable arguments or inputs; bad samples become failure lines instead."""
    start = time.monotonic()
    options.validate()
    counter = text_counter(options)
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
    text_tokens = count_text_tokens(counter, data)
    warn_unknown_problem_types(data)

    todo_shards = [n for n in mine if _shard_done(out, n, plans[n], verify=True) is None]
    workers = default_workers() if options.workers is None else options.workers
    threads = max(1, default_workers() // max(1, workers))
    base = Path(data.base)
    tasks, clip_shard = [], {}
    for n in todo_shards:
        for k, clip in enumerate(shard_clips[n]):
            i = n * size + k
            clip_shard[i] = n
            budget = None
            if options.max_prompt_tokens:  # the clip's distinct question lengths, longest first
                budget = (options.max_prompt_tokens, sorted({text_tokens[s.id] for s in clip.samples}, reverse=True))
            tasks.append((i, {
                "modality": clip.modality, "video": str(base / clip.video) if clip.video else None,
                "audio": str(base / clip.audio) if clip.audio else None,
                "image": str(base / clip.image) if clip.image else None,
                "video_options": options.video.to_dict(), "jpeg_quality": options.jpeg_quality,
                "require_audio": options.require_audio, "threads": threads, "budget": budget,
                "family": options.family,
            }))
    order = [i for i, _ in tasks]
    stats = _run(options, tasks, order, clip_shard, clips, shard_clips, plans, workers,
                 failed_before=len(data.failures), text_tokens=text_tokens)

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
    if summary is not None and summary["counts"]["written"] == 0:
        raise PreprocessError(_nothing_written(summary["counts"], out))
    return {"complete": complete, "seconds": elapsed, "clips_processed": decoded, **(summary or {})}


def _nothing_written(counts: dict, out: Path) -> str:
    failures = _read_json_lines(out / fmt.FAILURES_NAME)
    if not failures:
        return "no sample was written: the source has no samples"
    reasons: dict[str, list[dict]] = {}  # the reason with its file's name taken out → the failures
    for failure in failures:
        name = Path(failure.get("path") or "").name
        key = failure["reason"].replace(name, "FILE") if name else failure["reason"]
        reasons.setdefault(key, []).append(failure)
    group = max(reasons.values(), key=len)
    return (f"no sample was written: all {counts['failed']} failed; the most common reason ({len(group)} of them), "
            f"e.g. {group[0]['path']}: {group[0]['reason']} (every failure is in {out / fmt.FAILURES_NAME})")


def _read_json_lines(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def text_counter(options: BuildOptions) -> TextCounter:
    """The prompt text counter; refuses a budget that not even the system prompt and the fewest frames fit."""
    try:
        counter = TextCounter(options.prompt_system(), options.tokenizer)
    except (OSError, ValueError) as exc:
        raise PreprocessError(f"--tokenizer {options.tokenizer} cannot be loaded: {exc}") from None
    least = counter.count("") + 2  # no question, 4 frames of one 28x28 cell
    if 0 < options.max_prompt_tokens < least:
        raise PreprocessError(f"--max-prompt-tokens {options.max_prompt_tokens} cannot hold any prompt: the chat "
                              f"template and system prompt alone take {least - 2} tokens; raise it (it should "
                              "equal the training config's max_prompt_length, 2048 in configs/stage4.yaml)")
    return counter


def count_text_tokens(counter: TextCounter, data: SourceData) -> dict[str, int]:
    """Sample id → its prompt's text tokens (system prompt, question with options, chat template)."""
    from omni_grpo.models.base import format_question

    return {s.id: counter.count(format_question({"question": s.question, "options": list(s.options)}))
            for s in data.samples}


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
        print(f"preprocess: warning: {sum(unknown.values())} samples have a problem_type the accuracy reward does "
              f"not know: {listed}; it will score them None. Known types: {describe_known_problem_types()}",
              file=sys.stderr, flush=True)


def _run(options, tasks, order, clip_shard, clips, shard_clips, plans, workers, failed_before, text_tokens) -> dict:
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
                _add_clip(out, shard, clips[j], results.pop(j), text_tokens, options.max_prompt_tokens)
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


def too_long(media_tokens: int, text_tokens: int, budget: int) -> str | None:
    """Why a sample whose prompt is over the budget cannot be used (its question is too long), or None."""
    if not budget or media_tokens + text_tokens <= budget:
        return None
    return (f"the prompt is {media_tokens + text_tokens} tokens, over --max-prompt-tokens {budget}: the question, its "
            f"options and the system prompt take {text_tokens} tokens and this file's media {media_tokens} (planned "
            "for its shorter questions); shorten the question or raise --max-prompt-tokens (and max_prompt_length "
            "of the training config to match)")


def _add_clip(out: Path, shard: _Open, clip: Clip, result: dict, text_tokens: dict[str, int], budget: int) -> None:
    if not result["ok"]:
        shard.clips_failed += 1
        for sample in clip.samples:
            shard.failures.append({"id": sample.id, "path": clip.path, "line": sample.line,
                                   "reason": result["reason"]})
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
        "modalities": shard.modalities, "max_prompt_tokens": shard.max_prompt_tokens,
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
    modalities: dict[str, int] = {}
    for state in ordered:
        for kind, n in state.get("modalities", {}).items():
            modalities[kind] = modalities.get(kind, 0) + n
    problem_types = problem_type_counts(data)
    counts["unknown_problem_type"] = sum(problem_types["unknown"].values())
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
        "modalities": modalities,
        "problem_types": problem_types,
        "prompt_tokens": {"budget": options.max_prompt_tokens or None, "exact": options.tokenizer is not None,
                          "longest": max((s.get("max_prompt_tokens", 0) for s in ordered), default=0)},
        "shards": [{"file": s["file"], "rows": s["rows"], "samples": s["samples"], "with_audio": s["with_audio"],
                    "longest_prompt_tokens": s.get("max_prompt_tokens"), "bytes": s["bytes"], "sha256": s["sha256"]}
                   for s in ordered if s["file"]],
    }
    fmt.write_json_atomic(out / fmt.FAILURES_NAME, failures, lines=True)
    fmt.write_json_atomic(out / fmt.MANIFEST_NAME, manifest)
    return manifest
