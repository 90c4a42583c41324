"""What a run shows: the CLI's log set-up and one-line errors, TensorBoard scalars, per-phase timers and the
sample-completions table. Only rank 0 writes TensorBoard files."""

from __future__ import annotations

import html
import logging
import math
import os
import re
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

REPORT_DIR_ENV = "OMNI_GRPO_REPORT_DIR"  # set by omni_grpo.launch: ranks leave their error line there
PROJECT_PACKAGES = ("omni_grpo", "preprocess", "tests")  # a module of these missing is a bug, not a wrong Python


def configure_logging(rank: int, verbose: bool = False) -> None:
    """Our INFO lines on rank 0 (WARNING on the others); dependencies' deprecation warnings and Hugging Face's
    weight-file progress bars ("Loading weights", "Writing model shards") only when `verbose`. Call it before
    transformers is imported (it reads the bars' switch once)."""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def report_error(message: str, code: int) -> int:
    """Print `message` on stderr and return `code`; under omni_grpo.launch, leave it for the launcher instead,
    which prints each distinct message of all ranks once."""
    report_dir = os.environ.get(REPORT_DIR_ENV)
    if report_dir:
        Path(report_dir, f"rank-{os.environ.get('RANK', '0')}.txt").write_text(message, encoding="utf-8")
    else:
        print(message, file=sys.stderr)
    return code


def one_line(err: BaseException) -> str:
    """`err`'s message as one line. An error raised in a data-loader worker comes back re-raised with the worker's
    traceback as its message ("Caught PromptTooLongError in DataLoader worker process 1. Original Traceback …"):
    only the original message, its last line, is kept."""
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = re.sub(rf"^([\w.]+\.)?{type(err).__name__}: ", "", last)  # "pkg.module.Error: message"
    return " ".join(text.split())


def missing_dependency(err: BaseException, module: str) -> str | None:
    """The one line for `python -m MODULE` started by a Python that lacks one of the project's dependencies (`err`
    a ModuleNotFoundError of a module outside the project), else None: what to run instead."""
    if not isinstance(err, ModuleNotFoundError) or not err.name or err.name.split(".")[0] in PROJECT_PACKAGES:
        return None
    return (
        f"setup error: this Python ({sys.executable}) has no module {err.name.split('.')[0]!r}, which omni-grpo "
        f"needs; run the command with the project's Python, bash run_scripts/python.sh -m {module} ..., or "
        "install the project into this one (pip install -e . in the repository)"
    )


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
    import torch
    import torch.distributed as dist

    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    finite = torch.isfinite(values)
    sums = torch.stack([torch.where(finite, values, torch.zeros_like(values)), finite.double()])
    dist.all_reduce(sums)
    mean = sums[0] / sums[1].clamp(min=1)
    mean[sums[1] == 0] = math.nan
    return dict(zip(keys, mean.tolist()))


def mean_metrics(dicts: list[dict]) -> dict:
    """Each key's mean over the dicts that hold a finite value for it (NaN where none does)."""
    keys = {k for d in dicts for k in d}
    out = {}
    for k in keys:
        vals = [float(d[k]) for d in dicts if k in d and d[k] is not None and math.isfinite(float(d[k]))]
        out[k] = sum(vals) / len(vals) if vals else math.nan
    return out


# TensorBoard's Custom Scalars tab (http://localhost:6006/#custom_scalars): the curves a run is watched for, in
# this order; each chart is one regular expression over the tags. eval/…/accuracy: each `eval_data` group's too.
FIRST_SCREEN = "GRPO: rewards, KL, held-out accuracy"
LAYOUT = {
    FIRST_SCREEN: {
        "reward/total": ["Multiline", [r"^reward/total$"]],
        "reward/accuracy": ["Multiline", [r"^reward/accuracy$"]],
        "reward/format": ["Multiline", [r"^reward/format$"]],
        "actor/kl": ["Multiline", [r"^actor/kl$"]],
        "eval/accuracy": ["Multiline", [r"^eval/(?!reward/)(.+/)?accuracy$"]],
    }
}


def reward_set_metrics(rollouts: list, names: list[str], group_size: int) -> dict[str, float]:
    """`reward/<name>`, `_std`, `/none_ratio`, `reward/total`, `total_std`, `total/none_ratio` and
    `reward/zero_std_group_ratio` over the rows of `rollouts` (their scores [N, F], totals [N] and advantages
    [N], as `RewardManager` and the trainer's `score` define them for one round): dynamic sampling's kept set."""
    import torch

    scores = torch.cat([r.scores.float().cpu() for r in rollouts])  # [N, F]
    columns = {name: scores[:, f] for f, name in enumerate(names)}
    columns["total"] = torch.cat([r.rewards.float().cpu() for r in rollouts])  # [N]
    out = {}
    for name, column in columns.items():
        scored = column[~torch.isnan(column)]
        out[f"reward/{name}"] = scored.mean().item() if scored.numel() else math.nan
        out[f"reward/{name}_std"] = scored.std(correction=0).item() if scored.numel() else math.nan
        out[f"reward/{name}/none_ratio"] = 1.0 - scored.numel() / column.numel()
    advantages = torch.cat([r.advantages.float().cpu() for r in rollouts]).view(-1, group_size)  # [groups, G]
    out["reward/zero_std_group_ratio"] = (advantages == 0).all(dim=1).float().mean().item()
    return out


def log_dir(output_dir) -> Path:
    """Where a run's TensorBoard events go: `output_dir/runs/<name of output_dir>`, so TensorBoard lists the run
    under its folder's name (not "."), also when pointed at a folder of several runs."""
    return Path(output_dir) / "runs" / (Path(output_dir).resolve().name or "run")


class MetricsWriter:
    """Writes scalars, the Custom Scalars layout and a markdown table of completions to `log_dir(output_dir)`
    (rank 0 only)."""

    def __init__(self, output_dir: str, enabled: bool, purge_step: int | None = None):
        """`purge_step`: the first step this run segment logs; TensorBoard drops earlier files' events from that
        step on (a resumed run, or a restart in a folder whose run never saved), so no step shows twice."""
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir(output_dir)), purge_step=purge_step)
            self.writer.add_custom_scalars(LAYOUT)

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in sorted(metrics.items()):
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def completions(self, rows: list[dict], step: int, tag: str = "samples/completions") -> None:
        """A table, one row per completion: prompt id, answer, each reward, total, advantage, the completion.

        Written as a 2-D text tensor, which TensorBoard shows as an HTML table with one Markdown cell each; the id,
        answer and completion cells are HTML-escaped `<pre>` blocks, so text shows exactly as generated (line
        breaks, `|`, `*`, `<tags>`) and cannot break the table.
        """
        if self.writer is None or not rows:
            return
        names = [k for k in rows[0] if k not in ("id", "completion", "answer")]
        table = [["id", "answer", *names, "completion"]]
        for r in rows:
            table.append(
                [
                    verbatim(r.get("id")),
                    verbatim(r.get("answer")),
                    *(_fmt(r.get(n)) for n in names),
                    verbatim(r["completion"]),
                ]
            )
        self.writer._get_file_writer().add_summary(text_table_summary(tag, table), step)
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


def verbatim(value) -> str:
    """`value` as a Markdown cell that TensorBoard renders character for character (one line of markup)."""
    text = html.escape(str(value), quote=False).replace("\r", "&#13;").replace("\n", "&#10;")
    return f"<pre>{text}</pre>"


def text_table_summary(tag: str, table: list[list[str]]):
    """A TensorBoard text summary holding `table` as a [rows, columns] string tensor (`tag/text_summary`)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData

    plugin = SummaryMetadata.PluginData(plugin_name="text", content=TextPluginData(version=0).SerializeToString())
    shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=len(table)), TensorShapeProto.Dim(size=len(table[0]))])
    tensor = TensorProto(
        dtype="DT_STRING", tensor_shape=shape, string_val=[cell.encode("utf-8") for row in table for cell in row]
    )
    return Summary(
        value=[Summary.Value(tag=f"{tag}/text_summary", metadata=SummaryMetadata(plugin_data=plugin), tensor=tensor)]
    )
