"""``python -m preprocess``: argument parsing only; the work is ``preprocess.build.build``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .benchmarks import BENCHMARKS
from .budget import DEFAULT_MAX_PROMPT_TOKENS

EXAMPLES = """examples:
  python -m preprocess --source siq2 --root data/siq2 --split train --output shards/siq2-train
  python -m preprocess --source jsonl --manifest data/my.jsonl --output shards/my --workers 8
  python -m preprocess --source dailyomni --root data/Daily-Omni --output shards/dailyomni   # also worldsense,
  python -m preprocess --source avqa --root data/avqa --split val --output shards/avqa-val   # intentbench
  # a 4096-token prompt budget (set max_prompt_length=4096 in the training config too), text counted exactly:
  python -m preprocess --source siq2 --root data/siq2 --output shards/siq2 --max-prompt-tokens 4096 \
      --tokenizer models/Qwen2.5-Omni-7B
  # on 4 machines sharing one output folder, machine I runs:
  python -m preprocess --source siq2 --root data/siq2 --output shards/siq2 --num-shards 4 --shard-index I
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m preprocess",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Decode videos once into Parquet shards of JPEG frames (the frames qwen-omni-utils would "
        "sample) and 16 kHz mono audio, with their questions. Bad samples are listed in "
        "OUT/failures.jsonl; re-running the same command resumes.",
    )
    src = p.add_argument_group("source")
    src.add_argument(
        "--source",
        required=True,
        choices=["siq2", "jsonl", *BENCHMARKS],
        help="siq2: the Social-IQ 2.0 folder layout; jsonl: a JSON Lines manifest; "
        f"{', '.join(BENCHMARKS)}: those benchmarks' released layouts (docs/benchmarks.md)",
    )
    src.add_argument(
        "--root",
        type=Path,
        help="siq2: the folder holding qa/, video/ and audio/wav/; a benchmark: "
        "the folder its annotation file and videos were extracted into",
    )
    src.add_argument(
        "--split",
        default="train",
        help="siq2: reads qa/qa_{split}.json; avqa: annotation/{split}_qa.json (default: train); r1: the records file",
    )
    src.add_argument("--manifest", type=Path, help="jsonl: the manifest; its paths are relative to its folder")
    p.add_argument("--output", required=True, type=Path, help="output folder (created if missing)")
    vid = p.add_argument_group("frames (same meaning and defaults as qwen-omni-utils)")
    vid.add_argument("--fps", type=float, default=2.0, help="frames sampled per second of video (default: 2.0)")
    vid.add_argument("--min-pixels", type=int, help="minimum pixels per frame (default: qwen-omni-utils')")
    vid.add_argument("--max-pixels", type=int, help="maximum pixels per frame (default: qwen-omni-utils')")
    vid.add_argument("--total-pixels", type=float, help="pixel budget of the whole clip (default: qwen-omni-utils')")
    vid.add_argument("--min-frames", type=int, help="fewest frames per clip (default: qwen-omni-utils', 4)")
    vid.add_argument("--max-frames", type=int, help="most frames per clip (default: qwen-omni-utils', 768)")
    budget = p.add_argument_group(
        "prompt budget",
        "frames are reduced (fewer, then smaller; always spanning the whole clip, audio kept whole) "
        "until each sample's prompt fits; the count is stored per sample as prompt_tokens",
    )
    budget.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=DEFAULT_MAX_PROMPT_TOKENS,
        metavar="N",
        help="most tokens of a prompt: video + audio + system prompt + question; match the training "
        f"config's max_prompt_length (default: {DEFAULT_MAX_PROMPT_TOKENS}, as "
        "configs/stage4.yaml; "
        "0: no budget, qwen-omni-utils' frames)",
    )
    budget.add_argument(
        "--tokenizer",
        type=Path,
        metavar="MODEL_DIR",
        help="count text tokens exactly with this model's tokenizer (default: a character-based "
        "upper estimate, about 1.6x the real count on English)",
    )
    budget.add_argument(
        "--system-prompt", metavar="TEXT", help="the training config's system_prompt, if not the default one"
    )
    budget.add_argument(
        "--answer-instructions",
        type=_json_object,
        metavar="JSON",
        help="the training config's answer_instructions, if set: a JSON object problem type -> "
        'instruction, e.g. \'{"yes_no": "Reply Yes or No."}\'',
    )
    budget.add_argument(
        "--family",
        default="qwen2_5_omni",
        choices=["qwen2_5_omni", "qwen3_omni"],
        help="the training config's model_family: frames and images are sized on its pixel grid "
        "(28 or 32 pixels) and counted with its audio rate (default: qwen2_5_omni)",
    )
    vid.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of stored frames, 90-100 (default: 90)")
    run = p.add_argument_group("run")
    run.add_argument("--workers", type=int, help="decoding processes (default: all cores; 0 decodes in this process)")
    run.add_argument("--shard-size", type=int, default=32, help="clips per shard (default: 32)")
    run.add_argument("--num-shards", type=int, default=1, help="split the work across K machines (default: 1)")
    run.add_argument("--shard-index", type=int, default=0, help="which of the K parts this machine does (0-based)")
    run.add_argument("--overwrite", action="store_true", help="rebuild this part's shards from scratch")
    run.add_argument(
        "--require-audio",
        action="store_true",
        help="treat a video without audio as a failure (default: keep it as a video-only sample)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('give a JSON object, e.g. \'{"yes_no": "Reply Yes or No."}\'')
    return value


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except ModuleNotFoundError as err:
        from omni_grpo.logging import missing_dependency

        if line := missing_dependency(err, "preprocess"):  # the wrong Python, not a bug
            print(line, file=sys.stderr)
            return 2
        raise


def run(args: argparse.Namespace) -> int:
    from .build import BuildOptions, PreprocessError, build
    from .media import VideoOptions

    options = BuildOptions(
        source=args.source,
        output=args.output,
        root=args.root,
        split=args.split,
        manifest=args.manifest,
        video=VideoOptions(
            fps=args.fps,
            min_pixels=args.min_pixels,
            max_pixels=args.max_pixels,
            total_pixels=args.total_pixels,
            min_frames=args.min_frames,
            max_frames=args.max_frames,
        ),
        jpeg_quality=args.jpeg_quality,
        workers=args.workers,
        shard_size=args.shard_size,
        num_shards=args.num_shards,
        shard_index=args.shard_index,
        overwrite=args.overwrite,
        require_audio=args.require_audio,
        progress=not args.no_progress,
        max_prompt_tokens=args.max_prompt_tokens,
        tokenizer=args.tokenizer,
        system_prompt=args.system_prompt,
        answer_instructions=args.answer_instructions,
        family=args.family,
    )
    try:
        build(options)
    except PreprocessError as exc:
        print(f"preprocess: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("preprocess: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
