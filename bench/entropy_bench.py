"""Micro-benchmark of the update's vocabulary projection: log-probs with the full-vocabulary entropy at every
position (what the update computed before, even with entropy_coef = 0) vs the metric subsample
(`entropy_stride = METRIC_ENTROPY_STRIDE`) vs no entropy. Forward + backward through a trainable head,
alternating the variants round by round so they share the machine's noise.

    python bench/entropy_bench.py --rows 8 --length 128 --hidden 256 --vocab 152064
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.checkpoint import checkpoint

from omni_grpo.models.head_logprobs import METRIC_ENTROPY_STRIDE, _chunk_logprobs


def one_pass(head, hidden, targets, with_entropy: bool, stride: int, chunk: int = 256) -> float:
    start = time.perf_counter()
    total = 0.0
    for s in range(0, hidden.shape[1], chunk):
        lp, ent = checkpoint(
            _chunk_logprobs,
            head,
            hidden[:, s : s + chunk],
            targets[:, s : s + chunk],
            1.0,
            with_entropy,
            None,
            -s % stride,
            stride,
            use_reentrant=False,
        )
        loss = lp.sum() + (0.0 * ent.sum() if with_entropy and stride == 1 else 0.0)
        loss.backward()
        total += float(ent.detach().float().mean()) if with_entropy else 0.0
    return time.perf_counter() - start


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=152064)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False)
    hidden = torch.randn(args.rows, args.length, args.hidden, requires_grad=True)
    targets = torch.randint(0, args.vocab, (args.rows, args.length))
    variants = {
        "full entropy (before)": (True, 1),
        f"stride {METRIC_ENTROPY_STRIDE} (after)": (True, METRIC_ENTROPY_STRIDE),
        "no entropy": (False, 1),
    }
    times = {k: [] for k in variants}
    for r in range(args.rounds + 1):
        for name, (ent, stride) in variants.items():
            t = one_pass(head, hidden, targets, ent, stride)
            if r:  # round 0 warms up
                times[name].append(t)
    base = sorted(times["full entropy (before)"])[len(times["full entropy (before)"]) // 2]
    print(
        f"| projection pass (rows {args.rows}, length {args.length}, H {args.hidden}, V {args.vocab}) "
        "| median s | vs before |\n|---|---|---|"
    )
    for name, ts in times.items():
        med = sorted(ts)[len(ts) // 2]
        print(f"| {name} | {med:.3f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
