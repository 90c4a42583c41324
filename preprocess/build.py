"""The preprocessing run, step by step: check the options, read and plan, decode the clips to do in worker
processes, fill the shards in plan order, and write the manifest when every shard is done.

    summary = build(BuildOptions(source="siq2", root=Path("siq2"), output=Path("shards")))

Each step's module: ``options`` (BuildOptions and their checks), ``plan`` (clips, shards, plan hashes, text
token counts), ``workers`` (the crash-tolerant decoding pool), ``output`` (resumable state, shards filled and
closed), ``manifest`` (manifest.json and failures.jsonl); the shard file format is ``shards``.

With ``num_shards=K, shard_index=I`` this run writes the shards ``n`` with ``n % K == I``.

Prompt budget. Each sample's prompt (media + system prompt + question + chat template) must fit
``max_prompt_tokens`` (the training config's ``max_prompt_length``): each clip is decoded with frames that fit
its longest question, and each sample's ``prompt_tokens`` is stored. A clip that cannot fit (its audio alone is
too long) is a failure. Frames, images and counts are those of the model family trained on the shards
(``family``: its pixel grid and audio rate, ``preprocess.budget.PIXEL_GRID``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from . import shards as fmt
from .manifest import nothing_written, write_manifest
from .options import BuildOptions, PreprocessError, content_options, default_workers, text_counter
from .output import OpenShard, add_clip, close_shard, prepare_output, shard_done
from .plan import count_text_tokens, plan_clips, read_source, shard_plan_hash, warn_unknown_problem_types
from .workers import clip_task, run_tasks

__all__ = ["BuildOptions", "PreprocessError", "build"]


def build(options: BuildOptions) -> dict:
    """Run preprocessing; returns the summary (the manifest's counts plus timing). Raises
    ``PreprocessError`` for unusable arguments or inputs; bad samples become failure lines instead."""
    start = time.monotonic()
    options.validate()
    counter = text_counter(options)
    data = read_source(options)
    clips = plan_clips(data)
    config = content_options(options)
    size = options.shard_size
    n_shards = (len(clips) + size - 1) // size
    shard_clips = [clips[n * size : (n + 1) * size] for n in range(n_shards)]
    plans = [shard_plan_hash(config, c) for c in shard_clips]
    mine = [n for n in range(n_shards) if n % options.num_shards == options.shard_index]
    out = options.output
    prepare_output(options, config, mine, n_shards)
    text_tokens = count_text_tokens(counter, data, options.answer_instructions)
    warn_unknown_problem_types(data)

    todo_shards = [n for n in mine if shard_done(out, n, plans[n], verify=True) is None]
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
            tasks.append((i, clip_task(clip, base, options, threads, budget)))
    order = [i for i, _ in tasks]
    stats = _run(
        options,
        tasks,
        order,
        clip_shard,
        clips,
        shard_clips,
        plans,
        workers,
        failed_before=len(data.failures),
        text_tokens=text_tokens,
    )

    states = {n: shard_done(out, n, plans[n]) for n in range(n_shards)}
    complete = all(s is not None for s in states.values())
    summary = None
    if complete:
        summary = write_manifest(options, data, config, states, n_shards)
    elapsed = time.monotonic() - start
    decoded = stats["clips"]
    timing = (
        f"{_count(decoded, 'clip')} processed in {elapsed:.1f} s ({decoded / max(elapsed, 1e-9):.2f} clips/s), "
        f"{len(mine) - len(todo_shards)} of {_count(len(mine), 'shard')} already done"
    )
    if summary is not None:
        c = summary["counts"]
        see = f" (see {out / fmt.FAILURES_NAME})" if c["failed"] else ""
        print(
            f"preprocess: wrote {_count(c['written'], 'sample')} from {_count(c['clips_written'], 'clip')} "
            f"({summary['hours_of_video']:.3f} h of video), {c['failed']} failed{see}; {timing}",
            flush=True,
        )
    else:
        print(
            f"preprocess: part {options.shard_index} of {options.num_shards} done; {timing}; manifest.json is "
            "written when every part is done (re-run any part's command once all outputs share one folder)",
            flush=True,
        )
    if summary is not None and summary["counts"]["written"] == 0:
        raise PreprocessError(nothing_written(summary["counts"], out))
    return {"complete": complete, "seconds": elapsed, "clips_processed": decoded, **(summary or {})}


def _run(options, tasks, order, clip_shard, clips, shard_clips, plans, workers, failed_before, text_tokens) -> dict:
    from tqdm import tqdm

    out = options.output
    size = options.shard_size
    results: dict[int, dict] = {}
    position = 0
    open_shards: dict[int, OpenShard] = {}
    failed_so_far = failed_before
    lookahead = size + 4 * max(1, workers)
    bar = tqdm(
        total=len(tasks), unit="clip", file=sys.stderr, disable=not options.progress, dynamic_ncols=True, smoothing=0.1
    )
    try:
        for i, result in run_tasks(
            tasks, workers, may_submit=lambda j: position >= len(order) or j - order[position] < lookahead
        ):
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
                    shard = open_shards[n] = OpenShard(index=n, remaining=len(shard_clips[n]))
                add_clip(out, shard, clips[j], results.pop(j), text_tokens, options.max_prompt_tokens)
                shard.remaining -= 1
                if shard.remaining == 0:
                    close_shard(out, open_shards.pop(n), plans[n])
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
