"""Decoding clips in worker processes that may crash: ``process_clip`` (one clip to its encoded media columns,
never raising) and ``run_tasks`` (a pool of spawned processes, results yielded as they arrive).

Workers are spawned processes (``concurrent.futures`` with the spawn context) that exit when their parent
dies. A clip that kills its worker (a decoder crash, out of memory) is retried alone in a fresh pool and, if it
kills that one too, becomes a failure; the run goes on. With a prompt budget each clip is decoded with the
frames that fit its longest question that can fit at all.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from pathlib import Path

from . import shards as fmt
from .budget import PromptBudget
from .media import VideoOptions
from .options import BuildOptions
from .plan import Clip


def clip_task(clip: Clip, base: Path, options: BuildOptions, threads: int, budget: tuple | None) -> dict:
    """What `process_clip` needs to decode `clip` (picklable): its files under `base`, the decoding options,
    and `budget` = (max prompt tokens, the text tokens of its questions, longest first) or None."""
    return {
        "modality": clip.modality,
        "video": str(base / clip.video) if clip.video else None,
        "audio": str(base / clip.audio) if clip.audio else None,
        "image": str(base / clip.image) if clip.image else None,
        "video_options": options.video.to_dict(),
        "jpeg_quality": options.jpeg_quality,
        "require_audio": options.require_audio,
        "threads": threads,
        "budget": budget,
        "family": options.family,
    }


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
        return decode_clip(
            task["video"],
            task["audio"],
            VideoOptions(**task["video_options"]),
            threads=task["threads"],
            budget=budget,
            family=task["family"],
        )

    try:
        if task.get("budget"):
            # plan for the longest question that fits; a longer one becomes its own failure (see add_clip)
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
            return {
                "ok": False,
                "reason": "no audio: the video has no audio track and there is no audio file (--require-audio)",
            }
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
                executor = ProcessPoolExecutor(
                    max_workers=size, mp_context=context, initializer=_init_worker, initargs=(os.getpid(),)
                )
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
