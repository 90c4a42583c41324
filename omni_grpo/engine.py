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


def fp32_masters(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """Float32 copies of low-precision trainable parameters, for the optimizer to step (mixed precision).

    An AdamW update of ~lr = 1e-6 is below half a bf16 ulp for most weights (|w| > 2.5e-4), so stepping bf16
    weights directly rounds most updates away. The optimizer steps these fp32 masters instead and the model's
    bf16 weights are re-rounded from them after every step, as DeepSpeed's bf16 optimizer does.
    """
    return [torch.nn.Parameter(p.detach().float().clone()) for p in params]


class PlainEngine:
    """Single-process PyTorch: AdamW + LR schedule + grad clipping, with fp32 master weights when given.

    `masters`: the `fp32_masters` of the model's trainable parameters, in the same order, when the optimizer
    was built over them (bf16 training); None when the optimizer steps the model's own parameters.
    """

    world_size = 1
    zero_stage = 0

    def __init__(self, model, optimizer, scheduler, max_grad_norm: float, masters=None):
        self.module, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.max_grad_norm = max_grad_norm
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.masters = masters
        if masters is not None and [m.shape for m in masters] != [p.shape for p in self.params]:
            raise ValueError("masters must be the fp32 copies of the model's trainable parameters, in order")

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> tuple[float, bool]:
        """Clip, then update unless the gradient norm is non-finite. Returns (grad_norm, stepped)."""
        stepped_params = self.params
        if self.masters is not None:
            for p, m in zip(self.params, self.masters):
                m.grad = None if p.grad is None else p.grad.float()
                p.grad = None
            stepped_params = self.masters
        norm = float(torch.nn.utils.clip_grad_norm_(stepped_params,
                                                    self.max_grad_norm if self.max_grad_norm > 0 else math.inf))
        stepped = math.isfinite(norm)
        if stepped:
            self.optimizer.step()
            self.scheduler.step()
            self._copy_masters_to_model()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, stepped

    def _copy_masters_to_model(self) -> None:
        if self.masters is not None:
            with torch.no_grad():
                for p, m in zip(self.params, self.masters):
                    p.copy_(m)

    def skip_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.params:
            p.grad = None

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save_state(self, folder: Path) -> None:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.masters is not None:
            state["masters"] = [m.detach() for m in self.masters]
        torch.save(state, folder / "optimizer.pt")

    def load_state(self, folder: Path) -> None:
        state = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.masters is not None:
            if "masters" not in state:
                raise ValueError(f"{folder / 'optimizer.pt'} has no fp32 master weights; it was not written by a "
                                 "bf16 run: resume it with the bf16 setting it was trained with")
            with torch.no_grad():
                for m, saved in zip(self.masters, state["masters"]):
                    m.copy_(saved)
            self._copy_masters_to_model()

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
