"""The end of a run: once every shard of the plan is done, ``manifest.json`` (options, counts, durations,
sizes, modalities, problem types, prompt lengths, one entry per shard) and ``failures.jsonl`` are written from
the shards' state files; with several machines, the last one to finish writes them, or any of them re-run
after all parts are copied into one folder. ``nothing_written`` explains a run that kept no sample.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import shards as fmt
from .options import BuildOptions
from .output import existing_shards, state_path
from .plan import problem_type_counts
from .sources import SourceData


def write_manifest(options: BuildOptions, data: SourceData, config: dict, states: dict, n_shards: int) -> dict:
    out = options.output
    for index, path in existing_shards(out).items():
        if index >= n_shards:
            path.unlink(missing_ok=True)
            state_path(out, index).unlink(missing_ok=True)
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
        "source": {
            "kind": data.kind,
            "qa_file": data.qa_file,
            "root": str(options.root) if options.source != "jsonl" else None,
            "manifest": str(options.manifest) if options.source == "jsonl" else None,
        },
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
        "prompt_tokens": {
            "budget": options.max_prompt_tokens or None,
            "exact": options.tokenizer is not None,
            "longest": max((s.get("max_prompt_tokens", 0) for s in ordered), default=0),
        },
        "shards": [
            {
                "file": s["file"],
                "rows": s["rows"],
                "samples": s["samples"],
                "with_audio": s["with_audio"],
                "longest_prompt_tokens": s.get("max_prompt_tokens"),
                "bytes": s["bytes"],
                "sha256": s["sha256"],
            }
            for s in ordered
            if s["file"]
        ],
    }
    fmt.write_json_atomic(out / fmt.FAILURES_NAME, failures, lines=True)
    fmt.write_json_atomic(out / fmt.MANIFEST_NAME, manifest)
    return manifest


def nothing_written(counts: dict, out: Path) -> str:
    failures = _read_json_lines(out / fmt.FAILURES_NAME)
    if not failures:
        return "no sample was written: the source has no samples"
    reasons: dict[str, list[dict]] = {}  # the reason with its file's name taken out → the failures
    for failure in failures:
        name = Path(failure.get("path") or "").name
        key = failure["reason"].replace(name, "FILE") if name else failure["reason"]
        reasons.setdefault(key, []).append(failure)
    group = max(reasons.values(), key=len)
    return (
        f"no sample was written: all {counts['failed']} failed; the most common reason ({len(group)} of them), "
        f"e.g. {group[0]['path']}: {group[0]['reason']} (every failure is in {out / fmt.FAILURES_NAME})"
    )


def _read_json_lines(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return []
