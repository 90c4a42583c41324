"""The built-in demo task: a question that only the clip can answer, its dataset builder and the format warm-up.

The task. Every clip is one solid colour with pixel noise (a per-clip shade of red, green, blue or yellow) and a
pure tone whose pitch goes with the colour; every sample asks the same question with the same options in the
same order ("What colour is the video?  A. red  B. green  C. blue  D. yellow"). The text is identical for all
samples, so the correct letter can only come from the video or its audio: a policy that ignores the media
scores chance (1 / the number of options) in expectation, since the answers are balanced. ``blank`` writes the
controls: the same ids, questions and answers with every frame the same grey (``video``), the audio silent
(``audio``) or both (``both``: every prompt is then the same, and GRPO cannot learn beyond chance).

The warm-up. A random tiny model almost never writes ``<answer>X</answer>``, so every reward is 0 and GRPO has
no signal. `warm_up` first fits, for a few seconds, the output layer alone to emit the reply format
``<think>I see.</think><answer>L</answer>`` after the demo's prompts, with the uniform distribution over the
option letters as the target in the answer slot, the same for every clip: it teaches the format, never which
letter is right (it does not read the answers). The rest of the model, whose hidden states carry the clip,
is untouched; GRPO then has to do the learning.

    python -m omni_grpo.demo data ROOT [--n-clips 32] [--options 4] [--seed 0] [--blank [video|audio|both]]
    python -m omni_grpo.demo warmup --model DIR --data SHARDS --output DIR [--config configs/demo.yaml]

`data` writes ``ROOT/manifest.jsonl`` and ``ROOT/video/*.mp4`` (H.264 + AAC at 16 kHz) for
``python -m preprocess --source jsonl --manifest ROOT/manifest.jsonl``; `warmup` reads the shards and the
demo config (system prompt, ``use_audio_in_video``, prompt limit) and writes the warmed-up model to
``--output``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import string
from fractions import Fraction
from pathlib import Path

import numpy as np

from omni_grpo.synthetic import write_mp4

__all__ = ["COLOURS", "QUESTION", "REPLY", "clip_arrays", "make_demo_dataset", "warm_up"]

# (name, RGB, tone in Hz). The tones are an octave apart, far inside the 8 kHz band of 16 kHz audio.
COLOURS = (
    ("red", (210, 40, 40), 220.0),
    ("green", (40, 190, 60), 440.0),
    ("blue", (40, 60, 210), 880.0),
    ("yellow", (215, 205, 50), 1760.0),
)
QUESTION = "What colour is the video?"
# The warm-up's target reply, one per option letter; its sections are the demo's format reward tags.
REPLY = "<think>I see.</think><answer>{letter}</answer>"
GREY = 128
BLANK = (None, "video", "audio", "both")  # what `clip_arrays` blanks
WARM_UP_RECORD = "warm_up.json"  # written next to the warmed-up weights: what was fitted, on what


def clip_arrays(
    colour: int,
    seed: int,
    blank: str | None = None,
    seconds: float = 2.0,
    fps: int = 4,
    size: int = 56,
    sample_rate: int = 16000,
    noise: float = 20.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 ``[T, size, size, 3]`` and mono float32 audio of one demo clip.

    ``colour`` indexes `COLOURS`: that colour, shifted per clip by up to ±25 per channel, plus Gaussian pixel
    noise (std ``noise``) per frame, and its tone at amplitude 0.3 with a random phase. ``blank``: ``"video"``
    makes every pixel of every frame `GREY`, ``"audio"`` makes the audio all zeros, ``"both"`` does both.
    """
    if blank not in BLANK:
        raise ValueError(f"blank must be one of {BLANK}, got {blank!r}")
    rng = np.random.default_rng(seed)
    n_frames = max(1, int(round(seconds * fps)))
    n_samples = int(round(n_frames / fps * sample_rate))
    _, rgb, pitch = COLOURS[colour]
    base = np.asarray(rgb, dtype=np.float64) + rng.uniform(-25, 25, size=3)
    frames = base[None, None, None, :] + rng.normal(0.0, noise, size=(n_frames, size, size, 3))
    frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    t = np.arange(n_samples, dtype=np.float64) / sample_rate
    audio = (0.3 * np.sin(2 * np.pi * pitch * t + rng.uniform(0, 2 * np.pi))).astype(np.float32)
    if blank in ("video", "both"):
        frames = np.full_like(frames, GREY)
    if blank in ("audio", "both"):
        audio = np.zeros_like(audio)
    return frames, audio


def make_demo_dataset(
    root,
    n_clips: int = 32,
    n_options: int = 4,
    seed: int = 0,
    blank: str | None = None,
    seconds: float = 2.0,
    fps: int = 4,
    size: int = 56,
) -> Path:
    """Write the demo task under ``root`` (``manifest.jsonl`` + ``video/*.mp4``) and return the manifest path.

    Clip k shows colour ``k % n_options`` (balanced answers; the preprocess order is then shuffled by training),
    one question per clip, options the first ``n_options`` colour names in `COLOURS` order. ``blank``: the same
    manifest with the clips' video, audio or both blanked (`clip_arrays`). Deterministic for a given ``seed``.
    """
    if not 2 <= n_options <= len(COLOURS):
        raise ValueError(f"n_options must be 2-{len(COLOURS)}, got {n_options}")
    if n_clips < n_options:
        raise ValueError(f"n_clips={n_clips} must be at least n_options={n_options} (one clip per colour)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = [name for name, _, _ in COLOURS[:n_options]]
    lines = []
    for k in range(n_clips):
        colour = k % n_options
        clip_id = f"demo{k:04d}"
        frames, audio = clip_arrays(colour, seed * 100_003 + k, blank, seconds, fps, size)
        write_mp4(root / "video" / f"{clip_id}.mp4", frames, frames.shape[1:3], Fraction(fps), audio[None, :])
        lines.append(
            {
                "id": clip_id,
                "video": f"video/{clip_id}.mp4",
                "question": QUESTION,
                "options": names,
                "answer": string.ascii_uppercase[colour],
                "problem_type": "multiple_choice",
            }
        )
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return manifest


def warm_up(
    model_dir,
    data: list[str],
    output_dir,
    config: str | None = None,
    steps: int = 150,
    learning_rate: float = 3e-2,
    max_prompts: int = 64,
    overrides: list[str] | None = None,
    progress: bool = False,
) -> Path:
    """Fit the reply format, not the answers: the output layer (``lm_head``) alone, by maximum likelihood of
    `REPLY` after the training prompts of ``data``, where the answer slot's target is the uniform distribution
    over the sample's option letters (cross-entropy against it), the same for every clip.

    Nothing here depends on a sample's ``answer``: every prompt gets one reply per option letter and the same
    uniform target in the slot, so the warm-up teaches "write the format and some letter" and no preference
    between the letters for any input. Only ``lm_head`` changes, so the hidden states (and how much of the
    clip they carry) are the model's own; GRPO trains the rest. Prompts are built as training builds them (the
    config's system prompt, ``use_audio_in_video`` and prompt limit) and run once through the trainer's
    `forward_hidden` (the first ``max_prompts`` of ``data``); then ``steps`` full-batch AdamW steps fit the head
    on those hidden states (deterministic). Writes the model, the processor and `WARM_UP_RECORD` (what was
    fitted, on which data) to ``output_dir`` and returns it. ``progress``: a bar over the prompts, then the steps.
    """
    import torch
    from tqdm import tqdm

    from omni_grpo.config import load_config
    from omni_grpo.data import PromptDataset
    from omni_grpo.models import detect_family, get_module
    from omni_grpo.models.base import base_thinker
    from omni_grpo.models.shared_prompt import forward_hidden

    cfg = load_config(
        config, [f"model_name_or_path={model_dir}", f"data=[{','.join(map(str, data))}]", *(overrides or [])]
    )
    module = get_module(detect_family(model_dir))
    processor = module.load_processor(model_dir)
    model = module.load_model(model_dir).eval()
    tokenizer = processor.tokenizer
    stop = module.stop_token_ids(tokenizer)[0]
    banned = module.banned_token_ids(tokenizer)
    dataset = PromptDataset(cfg.data)
    n_prompts = min(max_prompts, len(dataset))
    bar = tqdm(total=n_prompts + steps, desc="format warm-up", unit="pass", disable=not progress, dynamic_ncols=True)
    hidden, targets, slots, slot_letters = [], [], [], []
    with torch.no_grad():
        for index in range(n_prompts):
            sample = dataset[index]
            letters = string.ascii_uppercase[: len(sample.get("options") or ())]
            if not letters:
                raise ValueError(f"sample {sample.get('id')!r} has no options: the demo warm-up needs multiple choice")
            letter_ids = [tokenizer.convert_tokens_to_ids(x) for x in letters]
            rows = [tokenizer(REPLY.format(letter=x), add_special_tokens=False)["input_ids"] + [stop] for x in letters]
            slot = next(i for i, t in enumerate(rows[0]) if t in letter_ids)
            if any(len(r) != len(rows[0]) or r[slot] != t for r, t in zip(rows, letter_ids)):
                raise ValueError(f"the tokenizer does not write each option letter of {REPLY!r} as one token")
            inputs = module.build_inputs(
                processor, [sample], cfg.system_prompt, cfg.use_audio_in_video, cfg.max_prompt_length
            ).repeat(len(rows))
            ids = torch.tensor(rows)
            hidden.append(forward_hidden(module, model, inputs, ids, torch.ones_like(ids)).float())  # [k, C, H]
            targets.append(ids)
            slots += [slot] * len(rows)
            slot_letters += [letter_ids] * len(rows)
            bar.update(1)
    lm_head = base_thinker(model).lm_head
    weight = lm_head.weight.detach().float().clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([weight], lr=learning_rate, weight_decay=0.0)
    loss = torch.tensor(math.nan)
    for _ in range(steps):
        loss = _batch_reply_nll(hidden, targets, slots, slot_letters, weight, banned)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.update(1)
    bar.close()
    with torch.no_grad():
        lm_head.weight.copy_(weight.to(lm_head.weight.dtype))
    out = Path(output_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    record = {
        "base_model": str(model_dir),
        "data": [str(d) for d in cfg.data],
        "prompts": len(hidden),
        "trained": "lm_head",
        "steps": steps,
        "learning_rate": learning_rate,
        "final_loss": loss.item(),
        "slot_target": "uniform over the option letters (answers not read)",
    }
    (out / WARM_UP_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return out


def _batch_reply_nll(hidden, targets, slots, slot_letters, weight, banned: list[int]):
    """Mean over reply tokens of the negative log-likelihood; in the answer slot, the cross-entropy against the
    uniform distribution over the option letters."""
    import torch

    h = torch.cat(hidden)  # [R, C, H]
    ids = torch.cat(targets)  # [R, C]
    logits = h @ weight.T  # [R, C, V]
    if banned:
        logits = logits.index_fill(-1, torch.tensor(banned), float("-inf"))
    logp = logits.log_softmax(-1)
    token = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # [R, C]
    rows, slot = torch.arange(len(slots)), torch.tensor(slots)
    uniform = logp[rows, slot].gather(-1, torch.tensor(slot_letters)).mean(-1)  # [R]
    return -token.index_put((rows, slot), uniform).mean()


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omni_grpo.demo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="write the demo clips and their manifest (preprocess with --source jsonl)")
    d.add_argument("root")
    d.add_argument("--n-clips", type=int, default=32)
    d.add_argument("--options", type=int, default=4, help="answer options per question, 2-4 (chance = 1/options)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "--blank",
        nargs="?",
        const="both",
        choices=BLANK[1:],
        help="the control: same questions and answers, grey frames (video), silent audio (audio) or both "
        "(the default with no value)",
    )
    w = sub.add_parser("warmup", help="fit the reply format (never the answers)")
    w.add_argument("--model", required=True, help="the model to start from (e.g. the tiny random thinker)")
    w.add_argument("--data", required=True, help="shard folder(s), comma-separated, whose prompts to use")
    w.add_argument("--output", required=True, help="where to write the warmed-up model")
    w.add_argument("--config", default=None, help="training config whose system prompt and flags to use")
    w.add_argument("--steps", type=int, default=150, help="AdamW steps on the output layer")
    w.add_argument("--learning-rate", type=float, default=3e-2)
    w.add_argument("--max-prompts", type=int, default=64, help="prompts of --data to fit on")
    args = parser.parse_args(argv)
    from omni_grpo.logging import configure_logging

    configure_logging(0, verbose=os.environ.get("OMNI_GRPO_VERBOSE", "") not in ("", "0"))
    if args.cmd == "data":
        path = make_demo_dataset(
            args.root, n_clips=args.n_clips, n_options=args.options, seed=args.seed, blank=args.blank
        )
    else:
        path = warm_up(
            args.model,
            args.data.split(","),
            args.output,
            config=args.config,
            steps=args.steps,
            learning_rate=args.learning_rate,
            max_prompts=args.max_prompts,
            progress=True,
        )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
