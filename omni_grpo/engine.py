"""Two optimizer back ends behind one small interface: plain PyTorch (one process) and DeepSpeed (ZeRO-2/3).

`backward(loss)` takes the micro-batch loss already divided by the *global* normaliser of the optimizer
step (see `core_algos.agg_loss`), so the step's gradient is the plain sum of micro-batch gradients over
micro-batches and ranks. DeepSpeed divides each loss by its `gradient_accumulation_steps` and averages
gradients over ranks; `DeepSpeedEngine.backward` multiplies that back out.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


class PlainEngine:
    """Single-process PyTorch: AdamW + LR schedule + grad clipping."""

    world_size = 1
    zero_stage = 0

    def __init__(self, model, optimizer, scheduler, max_grad_norm: float):
        self.module, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.max_grad_norm = max_grad_norm

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> tuple[float, bool]:
        """Clip, then update unless the gradient norm is non-finite. Returns (grad_norm, stepped)."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm if self.max_grad_norm > 0 else math.inf))
        stepped = math.isfinite(norm)
        if stepped:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, stepped

    def skip_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save_state(self, folder: Path) -> None:
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   folder / "optimizer.pt")

    def load_state(self, folder: Path) -> None:
        state = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def full_state_dict(self) -> dict | None:
        return self.module.state_dict()


class DeepSpeedEngine:
    """A DeepSpeed engine whose `gradient_accumulation_steps` equals the backward calls per optimizer step."""

    def __init__(self, engine, backward_per_step: int, world_size: int):
        self.engine = engine
        self.module = engine.module
        self.optimizer = engine.optimizer
        self.backward_per_step = backward_per_step
        self.world_size = world_size
        self.zero_stage = engine.zero_optimization_stage()
        self._calls = 0

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed pairs every backward with a step(); the optimizer only moves at the accumulation boundary.
        self.engine.backward(loss * (self.backward_per_step * self.world_size))
        self.engine.step()
        self._calls += 1

    def step(self) -> tuple[float, bool]:
        if self._calls != self.backward_per_step:
            raise RuntimeError(f"{self._calls} backward calls in a step that expects {self.backward_per_step}")
        self._calls = 0
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        return norm, math.isfinite(norm)

    def skip_step(self) -> None:
        raise RuntimeError("a DeepSpeed step cannot be skipped once started; the trainer zeroes the loss instead")

    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def save_state(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder / "deepspeed"), tag="state", save_latest=False)

    def load_state(self, folder: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(folder / "deepspeed"), tag="state",
                                              load_module_strict=False)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state in {folder / 'deepspeed'}")

    def full_state_dict(self) -> dict | None:
        """The whole model's weights on rank 0 (collective under ZeRO-3; None on other ranks)."""
        if self.zero_stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return self.module.state_dict()
