"""python -m omni_grpo.launch [accelerate launch options] -m omni_grpo.train [...]

`accelerate launch` (same options) that reports failed ranks in one line each. Ranks started through it leave
their error line in a private folder (`omni_grpo.logging.report_error`) instead of printing it; when ranks fail,
this prints each distinct line once, in place of torch.distributed.elastic's failure log and 30-line
`ChildFailedError` traceback (its start-up notes are hidden too), and exits with the failed rank's exit code.
`OMNI_GRPO_VERBOSE=1` keeps elastic's own log. `run_scripts/stage4.sh` launches through it (exec: the launcher
has the script's PID).

SIGTERM or SIGINT to the launcher (Ctrl-C, a scheduler) goes to torch elastic's agent, which sends it on to every
rank's process group (the ranks run in their own sessions: a terminal's Ctrl-C reaches them only this way) and
kills them with SIGKILL after `TORCH_ELASTIC_SHUTDOWN_TIMEOUT` seconds — `SHUTDOWN_TIMEOUT_S` unless set, the
grace the ranks get to reach a safe point and save (`omni_grpo.preemption`). A run stopped by a signal prints the
ranks' one `preempted …` line and exits with 128 + the signal.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from omni_grpo.logging import REPORT_DIR_ENV

SHUTDOWN_TIMEOUT_S = 300  # torch elastic's default is 30 s: too short to finish a step's phase and save


def main(argv: list[str] | None = None) -> int:
    from omni_grpo.logging import missing_dependency

    try:
        return launch(argv)
    except ModuleNotFoundError as err:
        if line := missing_dependency(err, "omni_grpo.launch"):  # the wrong Python, not a bug
            print(line, file=sys.stderr)
            return 2
        raise


def launch(argv: list[str] | None) -> int:
    import torch.distributed.run  # noqa: F401  (creates elastic's loggers, quietened below)
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(argv)
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
    if os.environ.get("OMNI_GRPO_VERBOSE", "") in ("", "0"):
        for name in list(logging.root.manager.loggerDict):
            if name.startswith(("torch.distributed.elastic", "torch.distributed.run")):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="omni-grpo-reports-") as folder:
        os.environ[REPORT_DIR_ENV] = folder
        try:
            launch_command(args)
        except ChildFailedError as err:
            failed = {rank: f.exitcode for rank, f in err.failures.items()}
            print("\n".join(failure_lines(Path(folder), failed)), file=sys.stderr)
            return next((code for code in failed.values() if code > 0), 1)
        except SignalException as err:  # elastic sent the signal on to the ranks, and they have ended
            lines = failure_lines(Path(folder), {}) or [
                f"stopped by {signal.Signals(err.sigval).name}: no rank reported a checkpoint (not started yet, or "
                f"killed after TORCH_ELASTIC_SHUTDOWN_TIMEOUT={os.environ['TORCH_ELASTIC_SHUTDOWN_TIMEOUT']} s)"
            ]
            print("\n".join(lines), file=sys.stderr)
            return 128 + err.sigval
    return 0


def failure_lines(folder: Path, failed: dict[int, int]) -> list[str]:
    """Each distinct error line the ranks left in `folder` once; a line for each failed rank that left none.

    `failed` maps a failed global rank to its exit code (negative: killed by that signal). A rank killed by
    SIGTERM while another left its line is left out: the launcher ends the other ranks that way when one fails.
    """
    reports: dict[str, list[int]] = {}
    for path in sorted(folder.glob("rank-*.txt"), key=lambda p: int(p.stem.split("-")[1])):
        reports.setdefault(path.read_text(encoding="utf-8"), []).append(int(path.stem.split("-")[1]))
    lines = [
        text if len(reports) == 1 else f"[rank {', '.join(map(str, ranks))}] {text}" for text, ranks in reports.items()
    ]
    reported = {rank for ranks in reports.values() for rank in ranks}
    for rank, code in sorted(failed.items()):
        if reports and code == -signal.SIGTERM:  # ended by the launcher itself once another rank had failed
            continue
        if rank not in reported:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            lines.append(f"rank {rank} {how} without an error line; its output is above")
    return lines


if __name__ == "__main__":
    sys.exit(main())
