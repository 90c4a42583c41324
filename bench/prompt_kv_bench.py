"""Peak memory of the prompt's keys/values: one copy per prompt vs a copy per completion row.

The update's shared-prompt pass and the rollout's token loop at Qwen2.5-Omni-3B text widths (random weights,
a few decoder layers, tiny towers, bf16 on CPU), G completions of one prompt: the per-row copies
(`one_copy_ready` answering False, the path before) against one copy
(`omni_grpo.models.prefix_attention`). Each variant runs in its own subprocess and reports the peak resident
memory of its pass above the memory before it (Linux VmHWM, reset before the pass), so the two columns are
side by side in one run; for generation also the peak after the prefill (the token loop, where the copies
live). The last columns: the memory the G − 1 copies take by arithmetic, and seconds (not a speed benchmark).
The prompt is text tokens of the given length: the keys/values' size depends on the
prompt's length only, not on what the tokens are.

    python bench/prompt_kv_bench.py                        # 3 s (330 tokens) and 60 s (2,100 tokens) prompts
    python bench/prompt_kv_bench.py --prompts 19600 --layers 1 --phases generate   # the issue's long prompt
    python bench/prompt_kv_bench.py --tiny                 # seconds: the test kit's widths (tests/test_bench)

Update pass: `log_probs` forward + backward over G rows sharing one prompt, gradient checkpointing on, the
decoder layers trainable (embeddings and head frozen, as with LoRA), `--completion` tokens per row.
Generation: `generate` with `--new-tokens` forced new tokens (stop tokens banned until then).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("copies", "one copy")


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _model(args):
    import torch
    from gpu_bench import build_processor, build_thinker, thinker_config

    processor, ids = build_processor("tiny")
    if args.tiny:
        config = thinker_config("tiny", ids, vocab_size=max(ids.values()) + 1)
    else:
        config = thinker_config("3b")
        config.vision_config.depth, config.audio_config.encoder_layers = 1, 1  # towers unused by a text prompt
    config.text_config.num_hidden_layers = args.layers
    config.text_config.layer_types = config.text_config.layer_types[: args.layers]
    dtype = torch.float32 if args.tiny else torch.bfloat16
    return build_thinker(config, "cpu", dtype, "sdpa"), processor


def child(args) -> dict:
    """One variant's pass; returns its peak memory above the start and its seconds."""
    import torch

    from omni_grpo.models import generate, get_module, log_probs, sampling, shared_prompt
    from omni_grpo.models.inputs import ModelInputs

    torch.manual_seed(0)
    if args.variant != "one copy":  # the per-row copies: the passes see no wrapped attention
        sampling.one_copy_ready = shared_prompt.one_copy_ready = lambda config: False
    module = get_module("qwen2_5_omni")
    model, processor = _model(args)
    vocab = min(model.config.text_config.vocab_size, 150000)
    prompt = ModelInputs(
        input_ids=torch.randint(0, vocab // 2, (1, args.prompt)),
        attention_mask=torch.ones(1, args.prompt, dtype=torch.long),
        use_audio_in_video=False,
    )
    g = args.g
    if args.phase == "update":
        for name, p in model.named_parameters():
            p.requires_grad_(".layers." in name)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        ids = torch.randint(0, vocab // 2, (g, args.completion))
        mask = torch.ones_like(ids)
    _reset_peak()
    start, t0 = _rss_kb("VmRSS"), time.perf_counter()
    if args.phase == "update":
        lp, _ = log_probs(module, model, prompt.repeat(g), ids, mask)
        lp.sum().backward()
        return dict(peak_mb=(_rss_kb("VmHWM") - start) / 1024, seconds=time.perf_counter() - t0)
    prefill = {}

    def after_prefill(*_):  # the first vocabulary projection comes right after the prefill
        if not prefill:
            prefill["peak"] = _rss_kb("VmHWM")
            _reset_peak()

    hook = model.lm_head.register_forward_pre_hook(after_prefill)
    with torch.no_grad():
        force = functools.partial(sampling.sampling_processors, min_new_tokens=args.new_tokens)
        sampling.sampling_processors = force  # no stop token ends a row: every row reaches the length
        generate(module, model, processor, prompt, num_generations=g, max_new_tokens=args.new_tokens)
    hook.remove()
    decode = _rss_kb("VmHWM")
    return dict(
        peak_mb=(max(prefill["peak"], decode) - start) / 1024,
        decode_mb=(decode - start) / 1024,
        seconds=time.perf_counter() - t0,
    )


def run_point(args, phase: str, prompt: int, variant: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--phase",
        phase,
        "--variant",
        variant,
        "--prompt",
        str(prompt),
        "--layers",
        str(args.layers),
        "--g",
        str(args.g),
        "--completion",
        str(args.completion),
        "--new-tokens",
        str(args.new_tokens),
    ] + (["--tiny"] if args.tiny else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if out.returncode:
        return dict(error=(out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def copies_mb(args, prompt: int) -> float:
    """The G − 1 extra copies of the prompt's keys and values over all layers (the saving, by arithmetic)."""
    kv_heads, head_dim, size = (2, 16, 4) if args.tiny else (2, 128, 2)  # 3B: 2 KV heads of 128, bf16
    return (args.g - 1) * args.layers * 2 * kv_heads * prompt * head_dim * size / 2**20


def table(rows: list[dict], args) -> str:
    head = (
        "| phase | prompt tokens | layers | G | copies: peak MB | one copy: peak MB | one copy / copies "
        "| decode-phase peak MB (copies / one copy) | (G−1) prompt copies, MB by arithmetic "
        "| seconds (copies / one copy) |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        a, b = r["copies"], r["one copy"]
        if "error" in a or "error" in b:
            lines.append(
                f"| {r['phase']} | {r['prompt']} | {args.layers} | {args.g} | "
                f"{a.get('error', '')} | {b.get('error', '')} | | | | |"
            )
            continue
        decode = f"{a['decode_mb']:,.0f} / {b['decode_mb']:,.0f}" if "decode_mb" in a else "–"
        lines.append(
            f"| {r['phase']} | {r['prompt']:,} | {args.layers} | {args.g} | {a['peak_mb']:,.0f} | "
            f"{b['peak_mb']:,.0f} | {b['peak_mb'] / a['peak_mb']:.2f} | {decode} | "
            f"{copies_mb(args, r['prompt']):,.0f} | {a['seconds']:.1f} / {b['seconds']:.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, nargs="+", default=[330, 2100], help="prompt lengths in tokens")
    ap.add_argument("--phases", nargs="+", default=["update", "generate"], choices=["update", "generate"])
    ap.add_argument("--layers", type=int, default=2, help="decoder layers")
    ap.add_argument("--g", type=int, default=8, help="completions per prompt")
    ap.add_argument("--completion", type=int, default=128, help="completion tokens per row in the update pass")
    ap.add_argument("--new-tokens", type=int, default=16, help="tokens generated per row")
    ap.add_argument("--tiny", action="store_true", help="the test kit's widths, float32 (seconds)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--prompt", type=int, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return []
    rows = []
    for phase in args.phases:
        for prompt in args.prompts:
            rows.append(dict(phase=phase, prompt=prompt, **{v: run_point(args, phase, prompt, v) for v in VARIANTS}))
    print(table(rows, args))
    return rows


if __name__ == "__main__":
    main()
