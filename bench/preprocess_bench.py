"""Benchmark preprocessing, measured in one run on the same synthetic clips:

(a) preprocess throughput (clip-seconds per wall-second) with 1 worker and with N workers, worker start-up
    included;
(b) time to one training-ready sample (frames + 16 kHz audio): ``preprocess.shards`` vs
    ``qwen_omni_utils.process_mm_info(..., use_audio_in_video=True)`` on the source mp4 (warm: one call of
    each before timing; the two alternate clip by clip so both see the same machine load; medians).

    python bench/preprocess_bench.py [--clips 6] [--seconds 10] [--workers N]

Where no ``ffmpeg`` program is installed, qwen-omni-utils' audio path runs through a PyAV stand-in for
audioread's ffmpeg reader (``omni_grpo.synthetic.audioread_without_ffmpeg``); decoding in-process is no
slower than piping from an ffmpeg subprocess, so the baseline is, if anything, flattered.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def make_clips(folder: Path, clips: int, seconds: float, size: tuple[int, int], fps: int) -> Path:
    from omni_grpo import synthetic

    rows = []
    for i in range(clips):
        name = f"clip{i:03d}.mp4"
        synthetic.make_clip(folder / name, seconds=seconds, fps=fps, size=size, sample_rate=44100, channels=2, seed=i)
        rows.append({"id": f"q{i}", "video": name, "question": "What happens?", "options": ["a", "b"], "answer": "A"})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def preprocess(manifest: Path, output: Path, workers: int) -> tuple[float, dict]:
    from preprocess.build import BuildOptions, build

    start = time.perf_counter()
    summary = build(BuildOptions(source="jsonl", manifest=manifest, output=output, workers=workers, progress=False))
    return time.perf_counter() - start, summary


def sample_seconds(output: Path, folder: Path, repeats: int) -> tuple[list[float], list[float]]:
    """Per-sample wall times from the shards and from qwen-omni-utils, measured alternately (so both see the
    same background load), after one warm-up call of each."""
    from qwen_omni_utils import process_mm_info

    from omni_grpo.synthetic import audioread_without_ffmpeg
    from preprocess import shards

    ds = shards.load(output, verify=False)
    by_id = {ds[i]["id"]: i for i in range(len(ds))}

    def from_shards(i):
        item = ds[i]
        assert item["frames"].ndim == 4 and item["audio"] is not None

    def from_mp4(path):
        conversation = [{"role": "user", "content": [{"type": "video", "video": str(path)}]}]
        audios, _, videos = process_mm_info(conversation, use_audio_in_video=True)
        assert videos[0].ndim == 4 and audios[0].ndim == 1

    shard_times, qwen_times = [], []
    with audioread_without_ffmpeg():
        from_shards(0)
        from_mp4(folder / "clip000.mp4")
        for _ in range(repeats):
            for k in range(len(ds)):
                start = time.perf_counter()
                from_shards(by_id[f"q{k}"])
                shard_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                from_mp4(folder / f"clip{k:03d}.mp4")
                qwen_times.append(time.perf_counter() - start)
    return shard_times, qwen_times


def main(argv=None) -> None:
    import logging
    import warnings

    from preprocess.options import default_workers

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=6, help="number of clips (default: 6)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each clip (default: 10)")
    p.add_argument("--size", type=int, nargs=2, default=[360, 640], metavar=("H", "W"), help="default: 360 640")
    p.add_argument("--video-fps", type=int, default=30, help="frame rate of the clips (default: 30)")
    p.add_argument("--workers", type=int, default=default_workers(), help="N (default: all cores)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the clips for (b) (default: 3)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("qwen_omni_utils").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        made = time.perf_counter()
        manifest = make_clips(tmp, args.clips, args.seconds, tuple(args.size), args.video_fps)
        made = time.perf_counter() - made
        clip_seconds = args.clips * args.seconds
        one_s, summary = preprocess(manifest, tmp / "out1", workers=1)
        n_s, _ = preprocess(manifest, tmp / "outN", workers=args.workers)
        shard_times, qwen_times = sample_seconds(tmp / "out1", tmp, args.repeats)

    shard_med, qwen_med = statistics.median(shard_times), statistics.median(qwen_times)
    rows = [
        ("(a) preprocess, 1 worker", f"{clip_seconds / one_s:.1f} clip-s/s", f"{one_s:.1f} s total", "1.00x"),
        (
            f"(a) preprocess, {args.workers} workers",
            f"{clip_seconds / n_s:.1f} clip-s/s",
            f"{n_s:.1f} s total",
            f"{one_s / n_s:.2f}x",
        ),
        ("(b) sample via qwen_omni_utils (mp4)", f"{qwen_med * 1000:.0f} ms", f"median of {len(qwen_times)}", "1.00x"),
        (
            "(b) sample via preprocess.shards",
            f"{shard_med * 1000:.1f} ms",
            f"median of {len(shard_times)}",
            f"{qwen_med / shard_med:.1f}x faster",
        ),
    ]
    frame_shape = (
        f"{summary['counts']['written']} clips of {args.seconds:g} s, {args.size[0]}x{args.size[1]} at "
        f"{args.video_fps} fps, AAC 44.1 kHz stereo; defaults --fps 2"
    )
    print(
        f"preprocess benchmark: {frame_shape}; clips made in {made:.1f} s; "
        f"{summary['bytes_per_clip_second'] / 1024:.1f} KiB per clip-second in shards"
    )
    widths = [max(len(r[i]) for r in rows + [("what", "rate / time", "note", "ratio")]) for i in range(4)]
    for row in [("what", "rate / time", "note", "ratio")] + rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))


if __name__ == "__main__":
    main()
