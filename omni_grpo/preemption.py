"""Stopping a run cleanly on SIGTERM or SIGINT (a scheduler's preemption, Ctrl-C): the signal handlers, the flag
every rank agrees on, the one line the run ends with, and the command that continues it.

The first SIGTERM or SIGINT only sets a flag (rank 0 logs one line). The trainer all-reduces the flag at its safe
points (`agreed_signal`, collective) — between steps, and after a step's rollouts before its update, where the
step is abandoned and redone exactly on resume — then saves a checkpoint and raises `Preempted`; `train.py` turns it
into one line, `preempted (SIGTERM) at step N: saved DIR; resume with: COMMAND`, and exit code 128 + the signal
(143 SIGTERM, 130 SIGINT). Another signal stops the process at once, without saving, with one line and the same
code. A repeat of the first signal within `REPEAT_WINDOW_S` counts as the same request: a scheduler may signal
every process while the launcher forwards the signal to the ranks too.

Forked data-loader workers inherit the handler and ignore the signal: their parent decides when they stop (a
worker killed by SIGTERM would otherwise fail the batch its parent is waiting for).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_WINDOW_S = 1.0
COMMAND_ENV = "OMNI_GRPO_COMMAND"  # the command a run was started with, shell-quoted (run_scripts/stage4.sh sets it)
logger = logging.getLogger("omni_grpo")


class StopRequested(Exception):
    """Raised at a safe point when some rank received a stop signal (`signum`, agreed by every rank)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Preempted(Exception):
    """The run stopped at a safe point after `signum`, at `step`, with its newest checkpoint `saved` (None: none)."""

    def __init__(self, signum: int, step: int, saved: Path | None):
        super().__init__(f"{signal.Signals(signum).name} at step {step}")
        self.signum, self.step, self.saved = signum, step, saved

    @property
    def code(self) -> int:
        return 128 + self.signum

    def line(self, command: str) -> str:
        name = signal.Signals(self.signum).name
        if self.saved is None:
            return f"preempted ({name}) before the first step: nothing to save; start again with: {command}"
        return f"preempted ({name}) at step {self.step}: saved {self.saved}; resume with: {command}"


class _Handler:
    def __init__(self, command: str, rank: int):
        self.command, self.rank, self.pid = command, rank, os.getpid()
        self.signum, self.at = 0, 0.0

    def __call__(self, signum, frame) -> None:
        if os.getpid() != self.pid:  # a forked data-loader worker
            return
        now = time.monotonic()
        if not self.signum:
            self.signum, self.at = signum, now
            if self.rank == 0:
                logger.info("%s: stopping at the next safe point and saving a checkpoint (another signal stops at "
                            "once, without saving)", signal.Signals(signum).name)
            return
        if signum == self.signum and now - self.at < REPEAT_WINDOW_S:
            return
        name = signal.Signals(signum).name
        report(f"stopped at once by a second signal ({name}), without saving; resume from the newest checkpoint "
               f"with: {self.command}", 128 + signum, self.rank)
        sys.stderr.flush()
        os._exit(128 + signum)


_active: _Handler | None = None


@contextmanager
def stop_on_signals(command: str, rank: int):
    """SIGTERM and SIGINT set the stop flag inside the block (see the module docstring); the previous handlers
    come back after it. `command` is the one the second-signal line names. Only in the main thread."""
    global _active
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = _Handler(command, rank)
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    _active = handler
    try:
        yield
    finally:
        _active = None
        for s, old in previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)


def requested() -> int:
    """The stop signal this process received (0: none)."""
    return _active.signum if _active is not None else 0


def agreed_signal(world_size: int, device=None) -> int:
    """The stop signal of any rank (the highest number; 0: carry on). Collective: call on every rank."""
    if world_size <= 1:
        return requested()
    import torch
    import torch.distributed as dist

    flag = torch.tensor([requested()], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def report(line: str, code: int, rank: int) -> int:
    """`omni_grpo.logging.report_error` on every rank under omni_grpo.launch (which prints a line the ranks share
    once), else on rank 0 only; returns `code`."""
    from omni_grpo.logging import REPORT_DIR_ENV, report_error

    if rank == 0 or os.environ.get(REPORT_DIR_ENV):
        report_error(line, code)
    return code


def resume_command(argv: list[str], cfg) -> str:
    """The command that continues this run, ready to type: `$OMNI_GRPO_COMMAND` when set (run_scripts/stage4.sh);
    under torchrun or `accelerate launch` (omni_grpo.launch included) the launcher's command line (the ranks'
    parent process); else `python -m omni_grpo.train ARGV`. A run started with `overwrite_output_dir=true` or a
    `resume_from_checkpoint` other than auto/latest gets overrides appended that continue from its own newest
    checkpoint instead (later overrides win). Run it from the same working directory."""
    command = (os.environ.get(COMMAND_ENV, "").strip() or _launcher_command()
               or shlex.join([sys.executable, "-m", "omni_grpo.train", *argv]))
    extra = []
    if cfg.overwrite_output_dir:
        extra.append("overwrite_output_dir=false")
    if cfg.resume_from_checkpoint not in ("auto", "latest"):
        extra.append("resume_from_checkpoint=auto")
    return " ".join([command, *extra])


def _launcher_command() -> str | None:
    """The command line of the torchelastic agent that started this rank (its parent), or None."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    return shlex.join(words) if words else None
