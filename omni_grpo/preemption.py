"""Stopping a run cleanly on SIGTERM or SIGINT (a scheduler's preemption, Ctrl-C): the signal handlers, the flag
every rank agrees on, the one line the run ends with, and the command that continues it.

The first SIGTERM or SIGINT only sets a flag (rank 0 logs one line). The trainer all-reduces the flag at its safe
points (`agreed_signal`, collective) — between steps, and after a step's rollouts before its update, where the
step is abandoned and redone exactly on resume — then saves a checkpoint and raises `Preempted`; `train.py` turns it
into one line, `preempted (SIGTERM) at step N: saved DIR; resume with: COMMAND`, and exit code 128 + the signal
(143 SIGTERM, 130 SIGINT). Another signal stops the process at once, without saving, with one line and the same
code. A repeat of the first signal within `REPEAT_WINDOW_S` counts as the same request: a scheduler may signal
every process while the launcher forwards the signal to the ranks too.

A thread acts on the signals (Python's wakeup socket), so the second one ends the process also while the main
thread is stuck in a C call, such as a collective waiting for a rank that is gone. Forked data-loader workers
inherit a handler that ignores both signals: their parent decides when they stop (a worker killed by SIGTERM would
otherwise fail the batch its parent is waiting for).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
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
    """The stop flag and what each signal does to it, run by the `_watch` thread."""

    def __init__(self, command: str, rank: int):
        self.command, self.rank = command, rank
        self.signum, self.at = 0, 0.0

    def on_signal(self, signum: int) -> None:
        now = time.monotonic()
        if not self.signum:
            self.signum, self.at = signum, now
            if self.rank == 0:
                logger.info(
                    "%s: stopping at the next safe point and saving a checkpoint (another signal stops at "
                    "once, without saving)",
                    signal.Signals(signum).name,
                )
            return
        if signum == self.signum and now - self.at < REPEAT_WINDOW_S:
            return
        name = signal.Signals(signum).name
        report(
            f"stopped at once by a second signal ({name}), without saving; resume from the newest checkpoint "
            f"with: {self.command}",
            128 + signum,
            self.rank,
        )
        sys.stderr.flush()
        os._exit(128 + signum)


def _watch(reader: socket.socket, handler: _Handler) -> None:
    """Python's C-level signal handler writes each signal's number to the wakeup socket at once, also while the
    main thread is stuck in a C call (a collective waiting for a rank that is gone), where a Python handler would
    never run: this thread acts on them."""
    with reader:
        while data := reader.recv(64):
            for signum in data:
                if signum in SIGNALS:
                    handler.on_signal(signum)


def _noop(signum, frame) -> None:
    """The Python-level handler: the default action (exit, KeyboardInterrupt) is replaced by `_watch`'s."""


def _after_fork_in_child() -> None:
    if _active is not None:  # a data-loader worker: no wakeup writes into its parent's socket; it ignores signals
        signal.set_wakeup_fd(-1)


_active: _Handler | None = None
_fork_hook = False


@contextmanager
def stop_on_signals(command: str, rank: int):
    """SIGTERM and SIGINT set the stop flag inside the block (see the module docstring); the previous handlers
    come back after it. `command` is the one the second-signal line names. Only in the main thread."""
    global _active, _fork_hook
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if not _fork_hook:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook = True
    handler = _Handler(command, rank)
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = {s: signal.signal(s, _noop) for s in SIGNALS}
    old_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(reader, handler), name="omni-grpo-signals", daemon=True).start()
    _active = handler
    try:
        yield
    finally:
        _active = None
        signal.set_wakeup_fd(old_fd)
        for s, old in previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        writer.close()  # the thread sees the end of its socket and returns


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
    command = (
        os.environ.get(COMMAND_ENV, "").strip()
        or _launcher_command()
        or shlex.join([sys.executable, "-m", "omni_grpo.train", *argv])
    )
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
