"""python tests/preemption_driver.py PLAN [train arguments]: `python -m omni_grpo.train` with faults armed (tests only).

PLAN is a JSON list of events, each fired once per rank (a marker file beside PLAN remembers it, so the command a
stopped run prints, run again, does not fire it again):
  {"phase": "rollout" | "update" | "save", "step": K, "ranks": [R, ...], "signal": "SIGTERM" | "SIGINT",
   "to": "self" | "launcher", "again_after_s": S}
sends the signal during step K's rollouts / update / checkpoint (after its weights are written) on each listed rank,
to this process or to its parent (the launcher, as Ctrl-C or a scheduler would), and with `again_after_s` once more
that many seconds later;
  {"phase": "write", "step": K, "ranks": [R]}
makes DeepSpeed's write of the optimizer state of step K's checkpoint fail with ENOSPC on rank R.
"""

import errno
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

from omni_grpo import checkpoint, train
from omni_grpo.trainer import GRPOTrainer

PLAN, ARGV = Path(sys.argv[1]), sys.argv[2:]
EVENTS = json.loads(PLAN.read_text())
RANK = int(os.environ.get("RANK", "0"))


def due(phase: str, step: int) -> list[dict]:
    """The events of `phase` at `step` for this rank that have not fired yet (marked fired now)."""
    out = []
    for i, event in enumerate(EVENTS):
        marker = PLAN.with_name(f"{PLAN.name}.fired-{i}-rank{RANK}")
        if event["phase"] == phase and event["step"] == step and RANK in event["ranks"] and not marker.exists():
            marker.write_text("")
            out.append(event)
    return out


def fire(phase: str, step: int) -> None:
    for event in due(phase, step):
        pid = os.getppid() if event.get("to") == "launcher" else os.getpid()
        sig = getattr(signal, event.get("signal", "SIGTERM"))
        os.kill(pid, sig)
        if "again_after_s" in event:
            time.sleep(event["again_after_s"])
            os.kill(pid, sig)


real_rollout, real_update, real_save_rng, real_torch_save = (
    GRPOTrainer.rollout,
    GRPOTrainer.update,
    checkpoint.save_rng,
    torch.save,
)


def rollout(self, batch, temperature):
    fire("rollout", self.global_step + 1)
    return real_rollout(self, batch, temperature)


def update(self, rollouts, beta):
    fire("update", self.global_step + 1)
    return real_update(self, rollouts, beta)


def save_rng(folder, rank):
    fire("save", int(folder.name.rsplit("-", 1)[1]))
    return real_save_rng(folder, rank)


def torch_save(obj, path, *args, **kwargs):
    folder = next((p for p in Path(str(path)).parts if p.startswith(checkpoint.TMP_PREFIX)), None)
    if folder and "/deepspeed/" in str(path) and due("write", int(folder.rsplit("-", 1)[1])):
        raise OSError(errno.ENOSPC, "No space left on device")
    return real_torch_save(obj, path, *args, **kwargs)


GRPOTrainer.rollout, GRPOTrainer.update, checkpoint.save_rng, torch.save = rollout, update, save_rng, torch_save
sys.exit(train.main(ARGV))
