"""Atomic checkpoints: `output_dir/checkpoints/step-NNNNNNN/`, written under a temporary name, then renamed.

A checkpoint folder holds
  model/           HF thinker weights (safetensors) or the LoRA adapter, plus the processor: loadable as is
  state/           optimizer + LR scheduler (`optimizer.pt`, tensors only, loaded with weights_only=True)
                   or DeepSpeed's own state (`deepspeed/`)
  config.yaml      the resolved training config (no secrets)
  trainer_state.json  step, data cursor, counters, Python/NumPy RNG state
  rng-rank{R}.safetensors  torch CPU (and CUDA) generator state of each rank
  COMPLETE         written last, inside the temporary folder, before the rename
A crash at any point leaves either the previous checkpoints untouched plus a `.tmp-*` folder (ignored and
removed by the next save) or a complete new one. `resume_from_checkpoint: latest` picks the newest complete one.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

STEP_RE = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says which file and what to do."""


def _write_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    # On a full disk (measured on a 64 KiB tmpfs): open()/write() raise OSError(ENOSPC); torch.save raises a
    # RuntimeError ("[enforce fail at inline_container.cc] unexpected pos"); safetensors a SafetensorError.
    return (OSError, RuntimeError, SafetensorError)


WRITE_ERRORS = _write_errors()


def free_space(path) -> str:
    """'N MiB free on the disk of PATH' (for error messages), for the nearest existing parent of `path`."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free on the disk of {folder}"
    except OSError:
        return f"free space on the disk of {folder} unknown"


def checkpoints_dir(output_dir) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and (p / "COMPLETE").exists()]
    return [p for _, p in sorted(found)]


def resolve(output_dir, spec: str | None) -> Path | None:
    """`None` → None; `latest` → newest complete checkpoint (or None if there is none); else the path."""
    if spec in (None, "", "none"):
        return None
    if spec == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(spec)
    if not (path / "COMPLETE").exists():
        raise CheckpointError(f"{path} is not a complete checkpoint (no COMPLETE file); pass another path or 'latest'")
    return path


def begin(output_dir, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of `step` (leftovers of a crashed save are removed)."""
    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-step-{step:07d}"
    tmp.mkdir()
    return tmp


def finish(tmp: Path, step: int, keep: int) -> Path:
    """Mark complete, rename into place, prune to the newest `keep` (0 = keep all)."""
    (tmp / "COMPLETE").write_text("ok\n")
    final = tmp.parent / f"step-{step:07d}"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep > 0:
        for old in list_checkpoints(tmp.parent.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def write_trainer_state(folder: Path, state: dict) -> None:
    state = dict(state)
    state["python_rng"] = _py_rng_to_json(random.getstate())
    np_state = np.random.get_state()
    state["numpy_rng"] = [np_state[0], np_state[1].tolist(), *np_state[2:]]
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=1))


def read_trainer_state(folder: Path) -> dict:
    path = folder / "trainer_state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err}; resume from an earlier checkpoint") from err
    random.setstate(_py_rng_from_json(state.pop("python_rng")))
    kind, keys, *rest = state.pop("numpy_rng")
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return state


def save_rng(folder: Path, rank: int) -> None:
    from safetensors.torch import save_file

    tensors = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(folder / f"rng-rank{rank}.safetensors"))


def load_rng(folder: Path, rank: int) -> None:
    from safetensors.torch import load_file

    path = folder / f"rng-rank{rank}.safetensors"
    if not path.exists():
        raise CheckpointError(f"{path} is missing: the checkpoint was written by fewer ranks than are resuming it")
    tensors = load_file(str(path))
    torch.set_rng_state(tensors["cpu"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])


def _py_rng_to_json(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_rng_from_json(obj):
    version, internal, gauss = obj
    return (version, tuple(internal), gauss)
