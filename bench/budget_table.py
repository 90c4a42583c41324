"""The prompt budget's trade-off: what ``python -m preprocess --max-prompt-tokens N`` gives a 60 s 640x360
29.97 fps clip with 44.1 kHz audio and one Social-IQ style question (the README's table).

    python bench/budget_table.py [--budgets 2048 3072 4096 8192 16384 0] [--tokenizer MODEL_DIR] [--family F]

Each budget runs the real preprocess (one clip, in this process) and reads the shard back; ``prompt tokens``
is the count stored per sample (the text estimated unless ``--tokenizer`` is given); 0 means no budget
(qwen-omni-utils' frames).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[2048, 3072, 4096, 8192, 16384, 0])
    parser.add_argument("--tokenizer", type=Path)
    parser.add_argument("--family", default="qwen2_5_omni", choices=["qwen2_5_omni", "qwen3_omni"])
    args = parser.parse_args(argv)

    from omni_grpo import synthetic
    from preprocess import budget as B
    from preprocess import shards
    from preprocess.build import BuildOptions, build

    question = {
        "question": "How does the woman on the left react when the man in the blue shirt tells her about his new job?",
        "options": [
            "She congratulates him warmly and asks him when he starts.",
            "She looks away and changes the subject to her own plans.",
            "She laughs because she thinks he is joking about it.",
            "She is worried that he will have to move to another city.",
        ],
    }
    print(
        "| `--max-prompt-tokens` | frames | frame size | frames per second | video tokens | video tokens per "
        "second | audio tokens | prompt tokens |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        synthetic.make_clip(folder / "clip.mp4", **synthetic.REAL_LIKE_CLIPS["siq2_60s_640x360"])
        (folder / "m.jsonl").write_text(json.dumps({"id": "q", "video": "clip.mp4", "answer": "A", **question}) + "\n")
        for n in args.budgets:
            out = folder / f"out{n}"
            build(
                BuildOptions(
                    source="jsonl",
                    manifest=folder / "m.jsonl",
                    output=out,
                    workers=0,
                    progress=False,
                    max_prompt_tokens=n,
                    tokenizer=args.tokenizer,
                    family=args.family,
                )
            )
            sample = shards.load(out)[0]
            frames, height, width = sample["frames"].shape[:3]
            seconds = sample["audio"].shape[0] / 16000
            video = B.video_tokens(frames, height, width, args.family)
            audio = B.audio_tokens(sample["audio"].shape[0], args.family) + B.AUDIO_IN_VIDEO_TOKENS
            print(
                f"| {n or 'none'} | {frames} | {width}x{height} | {sample['fps']:.2f} | {video} | "
                f"{video / seconds:.1f} | {audio} | {sample['prompt_tokens']} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
