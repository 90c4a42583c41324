"""Every random state a run draws from — Python's, NumPy's, torch's CPU generator and the current CUDA
device's — captured and restored in one place.

`seed_all` seeds them at the start of a run. Three callers restore them: the trainer puts a step back when a
stop signal abandons it (`capture` / `restore`), the evaluation during training leaves the run's state as it
found it (`preserved`), and a checkpoint saves and loads it (`to_json` / `from_json` for Python's and NumPy's,
`to_tensors` / `from_tensors` for torch's, each rank its own).

CUDA: the generator of the current device, when CUDA is initialised — the only one a rank's passes draw from
(each rank runs on its own device). Nothing is read or set on a machine without CUDA.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (torch's seeds every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _cuda_ready() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


@dataclass(frozen=True)
class RandomState:
    """The Python, NumPy, torch CPU and (None without CUDA) current CUDA device states."""

    python: tuple
    numpy: tuple
    cpu: torch.Tensor
    cuda: torch.Tensor | None


def capture() -> RandomState:
    return RandomState(
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
        torch.cuda.get_rng_state() if _cuda_ready() else None,
    )


def restore(state: RandomState) -> None:
    random.setstate(state.python)
    np.random.set_state(state.numpy)
    torch.set_rng_state(state.cpu)
    if state.cuda is not None:
        torch.cuda.set_rng_state(state.cuda)


@contextmanager
def preserved():
    """Every random state back as it was on exit."""
    state = capture()
    try:
        yield
    finally:
        restore(state)


def to_json() -> dict:
    """The Python and NumPy states as JSON values (a checkpoint's trainer_state.json)."""
    version, internal, gauss = random.getstate()
    kind, keys, *rest = np.random.get_state()
    return {"python_rng": [version, list(internal), gauss], "numpy_rng": [kind, keys.tolist(), *rest]}


def from_json(state: dict) -> None:
    """Set the Python and NumPy states from `to_json`'s values."""
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = state["numpy_rng"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))


def to_tensors() -> dict[str, torch.Tensor]:
    """torch's states by name ("cpu", and "cuda" with CUDA): a checkpoint's rng-rank{R}.safetensors."""
    tensors = {"cpu": torch.get_rng_state()}
    if _cuda_ready():
        tensors["cuda"] = torch.cuda.get_rng_state()
    return tensors


def from_tensors(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["cpu"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
