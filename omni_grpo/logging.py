"""TensorBoard scalars, per-phase timers and the sample-completions table. Only rank 0 writes."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path

import torch


class PhaseTimer:
    """`with timer("rollout"): ...` accumulates seconds per phase until `pop()` returns `timing/<phase>`."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out = {f"timing/{k}": v for k, v in self.totals.items()}
        self.totals = {}
        return out


def reduce_metrics(metrics: dict[str, float], world_size: int) -> dict[str, float]:
    """Mean of each metric over ranks, ignoring NaN (e.g. a reward no rank could score). Collective."""
    if world_size <= 1:
        return metrics
    import torch.distributed as dist

    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    finite = torch.isfinite(values)
    sums = torch.stack([torch.where(finite, values, torch.zeros_like(values)), finite.double()])
    dist.all_reduce(sums)
    mean = sums[0] / sums[1].clamp(min=1)
    mean[sums[1] == 0] = math.nan
    return dict(zip(keys, mean.tolist()))


class MetricsWriter:
    """Writes scalars and a markdown table of completions to `output_dir/runs` (rank 0 only)."""

    def __init__(self, output_dir: str, enabled: bool):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(output_dir) / "runs"))

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in sorted(metrics.items()):
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def completions(self, rows: list[dict], step: int) -> None:
        """Markdown table: prompt id, reward total and each reward, the completion text."""
        if self.writer is None or not rows:
            return
        names = [k for k in rows[0] if k not in ("id", "completion", "answer")]
        header = "| id | answer | " + " | ".join(names) + " | completion |\n|" + "---|" * (len(names) + 3)
        lines = [header]
        for r in rows:
            cells = [_fmt(r.get(n)) for n in names]
            text = str(r["completion"]).replace("|", "\\|").replace("\n", " ")[:1500]
            lines.append(f"| {r['id']} | {r.get('answer')} | " + " | ".join(cells) + f" | {text} |")
        self.writer.add_text("samples/completions", "\n".join(lines), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)
