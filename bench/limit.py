"""How close one GRPO step comes to the machine's limit: each phase against the measured GEMM peak and memory
bandwidth, at Qwen2.5-Omni-3B widths.

Method (the same on a CPU and on a GPU):

1. **Peaks, measured once.** GEMM peak: the best of ``--repeats`` timed square matmuls (``n`` = 4096 on a GPU,
   2048 on a CPU) per dtype, 2·n³ FLOPs each, after a warm-up: float32 and bfloat16. Memory bandwidth: the best
   of the timed reads of a 1 GiB tensor (``sum``, bytes = its size) and copies (``copy_``, bytes = 2 × its
   size); the read figure is the bound for decoding, which reads weights and keys/values. A GPU's data-sheet
   figures (H100 SXM: 989 TFLOP/s dense bf16, 3.35 TB/s) are printed next to the measured ones
   (``--spec-tflops``, ``--spec-tbps``).
2. **One step at real widths.** ``bench/gpu_bench.py``'s step (the package's ``rollout.sample``,
   ``models.log_probs`` and ``core_algos.policy_loss``, as the trainer runs them) on the 3B thinker's widths with
   ``--layers`` decoder layers and ``--tower-layers`` tower layers (random weights), a ``--seconds`` clip of
   ``--frame-size`` frames at 2 fps with its audio (default 10 s of 252x448: a 1.9k-token prompt, the size of
   a 60 s clip under the 2,048-token budget), G completions of exactly C tokens; bfloat16 as on a GPU (its
   CPU mode).
3. **Compute-bound phases** as a fraction of the GEMM peak of the dtype they ran in: FLOPs counted as
   ``gpu_bench.Bench.flops`` does (6·N·tokens for the trained decoder and head positions, 2·N·tokens for the
   towers' forward and for the reference; attention not counted, so a lower bound): ``update`` = encode +
   policy forward/backward + optimizer (gpu_bench's update), ``policy`` = forward + backward alone,
   ``ref`` = the reference pass.
4. **Decode** as a fraction of the read bandwidth: decode seconds = rollout seconds − the prefill (the
   language model's one call over the prompt inside ``generate``, timed by wrapping it); bytes read per new
   token position = the decoder and LM-head weights once per step (all G rows share them) plus the
   keys/values: ``L·2·n_kv·d·b·(P + G·t)`` at step ``t`` (the prompt's one copy and each row's own tokens);
   the bound = those bytes / bandwidth; achieved fraction = bound / measured decode seconds. Decode tokens/s
   = G·C / decode seconds.

Targets (``bench/RESULTS.md``): update ≥ 40 % of the GEMM peak; decode within 2× of the bandwidth bound
(fraction ≥ 0.5).

    python bench/limit.py                              # CPU: 3B widths, 2 layers, 1.9k-token prompt, G = 8, C = 64
    python bench/limit.py --peaks-only                 # the GEMM peaks and the bandwidth only (seconds)
    python bench/limit.py --device cuda --layers 36 --tower-layers 32 --completion-length 512   # a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_gpu_bench():
    """bench/gpu_bench.py as a module (bench/ is a folder of scripts, not a package)."""
    name = "bench_gpu_bench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "gpu_bench.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn, device, repeats: int) -> float:
    """The fastest of `repeats` timed calls of `fn` after one untimed call."""
    fn()
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def gemm_peak(dtype, device, n: int, repeats: int) -> float:
    """FLOP/s of the fastest n x n x n matmul in `dtype`."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    seconds = best_seconds(lambda: torch.mm(a, b, out=c), device, repeats)
    return 2 * n**3 / seconds


def bandwidth(device, gib: float, repeats: int) -> dict[str, float]:
    """Bytes/s of the fastest full read (`sum`) and copy of a `gib` GiB float32 tensor."""
    import torch

    x = torch.ones(int(gib * 2**30) // 4, device=device)
    y = torch.empty_like(x)
    size = x.numel() * 4
    read = size / best_seconds(lambda: x.sum(), device, repeats)
    copy = 2 * size / best_seconds(lambda: y.copy_(x), device, repeats)
    return {"read": read, "copy": copy}


def peaks(device, repeats: int, gib: float, n: int | None = None) -> dict:
    import torch

    n = n or (4096 if device.type == "cuda" else 2048)
    return {
        "gemm_n": n,
        "float32": gemm_peak(torch.float32, device, n, repeats),
        "bfloat16": gemm_peak(torch.bfloat16, device, n, repeats),
        **bandwidth(device, gib, repeats),
    }


class PrefillTimer:
    """Seconds spent in the language model's prompt-length calls while `generate` runs (its prefill)."""

    def __init__(self):
        self.seconds = 0.0
        self.calls = 0
        self._inside = False

    @contextlib.contextmanager
    def generating(self):
        self._inside = True
        try:
            yield
        finally:
            self._inside = False

    def wrap_generate(self, generate):
        def timed(*args, **kwargs):
            with self.generating():
                return generate(*args, **kwargs)

        return timed

    def wrap_forward(self, forward, device):
        def timed(*args, **kwargs):
            embeds = kwargs.get("inputs_embeds")
            if not self._inside or embeds is None or embeds.shape[1] <= 1:
                return forward(*args, **kwargs)
            _sync(device)
            start = time.perf_counter()
            try:
                return forward(*args, **kwargs)
            finally:
                _sync(device)
                self.seconds += time.perf_counter() - start
                self.calls += 1

        return timed


def decode_bytes(config, weight_params: int, prompt: int, g: int, c: int, bytes_per: int) -> float:
    """Bytes read by the C - 1 decode steps after the prefill (see the module docstring)."""
    text = getattr(config, "text_config", config)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_per_token = text.num_hidden_layers * 2 * text.num_key_value_heads * head_dim * bytes_per
    steps = range(1, c)  # the first token comes from the prefill's last position
    return sum(weight_params * bytes_per + kv_per_token * (prompt + g * t) for t in steps)


def measure_step(args, device) -> dict:
    """gpu_bench's step at real widths, with the prefill timed apart from the decode."""
    import torch

    import omni_grpo.rollout as rollout
    from omni_grpo.models.base import _getattr_path

    gb = load_gpu_bench()
    bench_args = gb.parse_args(
        gb.options(
            models=args.model,
            modes=args.mode,
            layers=args.layers,
            tower_layers=args.tower_layers,
            generations=args.generations,
            completion_length=args.completion_length,
            seconds=args.seconds,
            frame_size=args.frame_size,
            micro_batch=args.micro_batch,
            steps=1,
            warmup=args.warmup,
            device=device,
        )
    )
    bench = gb.Bench(bench_args, args.model, args.mode, device)
    timer = PrefillTimer()
    lm = _getattr_path(bench.thinker, bench.module.language_model)
    lm.forward = timer.wrap_forward(lm.forward, device)
    original = rollout.generate
    rollout.generate = timer.wrap_generate(original)
    try:
        for _ in range(args.warmup):
            bench.step()
        timer.seconds, timer.calls = 0.0, 0
        ph = bench.step()
    finally:
        rollout.generate = original
    flops = bench.flops()
    seconds = dict(ph.seconds)
    g, c = args.generations, args.completion_length
    decode_s = seconds["rollout"] - timer.seconds
    bytes_per = torch.finfo(bench.dtype).bits // 8
    weights = bench.counts["decoder"] + bench.counts["lm_head"]
    out = {
        "dtype": str(bench.dtype).replace("torch.", ""),
        "prompt_tokens": bench.prompt_tokens,
        "frames": bench.frames,
        "params": bench.counts,
        "seconds": seconds,
        "flops": flops,
        "prefill_s": timer.seconds,
        "prefill_calls": timer.calls,
        "decode_s": decode_s,
        "decode_tokens_per_s": g * c / decode_s if decode_s > 0 else math.nan,
        "decode_bytes": decode_bytes(bench.config, weights, bench.prompt_tokens, g, c, bytes_per),
    }
    bench.close()
    return out


def fractions(step: dict, peak: dict) -> list[dict]:
    """Per phase: achieved rate, the limit it is held against, and the fraction."""
    s, f, dt = step["seconds"], step["flops"], step["dtype"]
    update_s = s["encode"] + s["policy"] + s["optimizer"]
    rows = [
        ("update (encode + policy + optimizer)", (f["encode"] + f["policy"]) / update_s, peak[dt], "FLOP/s"),
        ("policy (forward + backward)", f["policy"] / s["policy"], peak[dt], "FLOP/s"),
    ]
    if s.get("ref"):
        rows.append(("reference", f["ref"] / s["ref"], peak[dt], "FLOP/s"))
    if step["decode_s"] > 0:
        rows.append(("decode", step["decode_bytes"] / step["decode_s"], peak["read"], "B/s"))
    return [
        {"phase": name, "achieved": rate, "limit": limit, "unit": unit, "fraction": rate / limit}
        for name, rate, limit, unit in rows
    ]


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def report(rec: dict) -> str:
    p = rec["peaks"]
    lines = [
        "| limit | measured | data sheet |",
        "|---|---|---|",
        f"| GEMM float32 (n = {p['gemm_n']}) | {_si(p['float32'], 'FLOP/s')} | — |",
        f"| GEMM bfloat16 (n = {p['gemm_n']}) | {_si(p['bfloat16'], 'FLOP/s')} | "
        f"{_si(rec['spec_tflops'] * 1e12, 'FLOP/s') if rec['spec_tflops'] else '—'} |",
        f"| memory read | {_si(p['read'], 'B/s')} | "
        f"{_si(rec['spec_tbps'] * 1e12, 'B/s') if rec['spec_tbps'] else '—'} |",
        f"| memory copy (read + write) | {_si(p['copy'], 'B/s')} | — |",
    ]
    step = rec.get("step")
    if step:
        s = step["seconds"]
        lines += [
            "",
            f"Step ({step['dtype']}, prompt {step['prompt_tokens']} tokens, frames {step['frames']}): "
            + ", ".join(f"{k} {v:.3f} s" for k, v in s.items())
            + f"; prefill {step['prefill_s']:.3f} s, decode {step['decode_s']:.3f} s "
            f"({step['decode_tokens_per_s']:.1f} tokens/s)",
            "",
            "| phase | achieved | limit | fraction | target |",
            "|---|---|---|---|---|",
        ]
        for row in rec["fractions"]:
            target = {"update (encode + policy + optimizer)": "≥ 40 %", "decode": "≥ 50 % (within 2×)"}.get(
                row["phase"], "—"
            )
            lines.append(
                f"| {row['phase']} | {_si(row['achieved'], row['unit'])} | {_si(row['limit'], row['unit'])} "
                f"| {100 * row['fraction']:.1f} % | {target} |"
            )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--peaks-only", action="store_true", help="measure the GEMM peaks and the bandwidth only")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of each peak measurement (default: 5)")
    p.add_argument("--gib", type=float, default=1.0, help="tensor size of the bandwidth measurement (default: 1)")
    p.add_argument("--model", default="3b", choices=["3b", "7b"], help="widths (default: 3b)")
    p.add_argument("--mode", default="full", choices=["full", "lora"], help="default: full")
    p.add_argument("--layers", type=int, default=2, help="decoder layers (default: 2)")
    p.add_argument("--tower-layers", type=int, default=1, help="vision and audio tower layers (default: 1)")
    p.add_argument("--generations", type=int, default=8, help="G (default: 8)")
    p.add_argument("--completion-length", type=int, default=64, help="forced new tokens C (default: 64)")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length (default: 10)")
    p.add_argument(
        "--frame-size",
        type=int,
        nargs=2,
        default=[252, 448],
        metavar=("H", "W"),
        help="frame size at 2 fps, multiples of 28 (default: 252 448)",
    )
    p.add_argument("--micro-batch", type=int, default=0, help="log-prob rows per pass; 0 = all G (default)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    p.add_argument("--spec-tflops", type=float, default=None, help="data-sheet bf16 peak (default: 989 on cuda)")
    p.add_argument("--spec-tbps", type=float, default=None, help="data-sheet bandwidth (default: 3.35 on cuda)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = p.parse_args(argv)
    if args.device.startswith("cuda"):
        args.spec_tflops = args.spec_tflops or 989.0
        args.spec_tbps = args.spec_tbps or 3.35
    return args


def main(argv=None) -> dict:
    import logging
    import warnings

    import torch
    import transformers

    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    logging.getLogger("omni_grpo").setLevel(logging.ERROR)
    device = torch.device(args.device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    )
    print(
        f"limit on {where}; torch {torch.__version__}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    rec = {
        "device": where,
        "spec_tflops": args.spec_tflops,
        "spec_tbps": args.spec_tbps,
        "load_start": os.getloadavg(),
        "peaks": peaks(device, args.repeats, args.gib),
    }
    if not args.peaks_only:
        rec["step"] = measure_step(args, device)
        rec["fractions"] = fractions(rec["step"], rec["peaks"])
        rec["settings"] = {
            k: getattr(args, k)
            for k in (
                "model",
                "mode",
                "layers",
                "tower_layers",
                "generations",
                "completion_length",
                "seconds",
                "frame_size",
                "micro_batch",
            )
        }
    rec["load_end"] = os.getloadavg()
    print(report(rec))
    print(f"load average at end {' '.join(f'{x:.2f}' for x in rec['load_end'])}")
    if args.json:
        args.json.write_text(json.dumps(rec, indent=1, default=str))
    return rec


if __name__ == "__main__":
    main()
