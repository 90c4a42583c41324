"""Two optimizer back ends behind one interface: plain PyTorch (one process) and DeepSpeed (ZeRO-2/3).

`Engine` is the interface the trainer and `checkpoint` use, and nothing else: `module` (the nn.Module),
`stage` / `is_partitioned`, `micro_batches` (the backward calls of an update, padded to a fixed count),
`backward` (a non-finite loss zeroed on every rank), `step` / `skip` (an optimizer step, or a skipped one), `lr`,
`gathered_for_generation`, `save_state` / `load_state` (collective: called on every rank; the frozen weights
are not in the state) and `write_errors_deferred` (around `save_state`: a rank whose write fails still reaches
the back end's barriers), `state_holds_weights`, `full_state_dict`, `trainable_state_dict`,
`prepare_reference`, and for a reference that follows the policy `sync_reference` (collective),
`reference_state_dict` and `load_reference_state`. `build_engine` makes the right one from the config
(optimizer, LR schedule, fp32 masters, the DeepSpeed JSON's "auto" values); `setup_distributed` reads the
launcher's environment and starts the process group. The ZeRO-3 facts about single parameters live here too
(`param_partitioned`, `gathered_param`, `partitioned_over_ranks`), so the model code never asks DeepSpeed itself.

`backward(loss)` takes the micro-batch loss already divided by the *global* normaliser of the optimizer
step (see `core_algos.agg_loss`), so the step's gradient is the plain sum of micro-batch gradients over
micro-batches and ranks. DeepSpeed divides each loss by its `gradient_accumulation_steps` and averages
gradients over ranks; `DeepSpeedEngine.backward` multiplies that back out, and starts each micro-step as
DeepSpeed's own forward would (the trainer runs the unwrapped module).
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from omni_grpo import core_algos


def fp32_masters(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """Float32 copies of low-precision trainable parameters, for the optimizer to step (mixed precision).

    An AdamW update of ~lr = 1e-6 is below half a bf16 ulp for most weights (|w| > 2.5e-4), so stepping bf16
    weights directly rounds most updates away. The optimizer steps these fp32 masters instead and the model's
    bf16 weights are re-rounded from them after every step, as DeepSpeed's bf16 optimizer does.
    """
    return [torch.nn.Parameter(p.detach().float().clone()) for p in params]


@dataclass(frozen=True)
class MicroBatch:
    """One backward call of an update: the rollout rows it trains, or, when `dummy`, a padding pass over them
    whose loss is multiplied by 0 and whose metrics are dropped (`Engine.micro_batches`)."""

    rows: list[int]
    dummy: bool = False


def all_reduce_sum(t: torch.Tensor, world_size: int) -> torch.Tensor:
    """`t` summed over the ranks, in place (nothing to do in one process)."""
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


class Engine:
    """What the trainer needs from an optimizer back end (see the module docstring)."""

    module: torch.nn.Module
    stage: int = 0  # ZeRO stage; 0 without DeepSpeed
    world_size: int = 1
    state_holds_weights: bool = False  # True: `load_state` restores the weights too (else checkpoint loads them)

    @property
    def is_partitioned(self) -> bool:
        """Every weight sharded over the ranks (ZeRO-3): gather before reading a whole tensor."""
        return self.stage == 3

    def micro_batches(self, skip: torch.Tensor, size: int) -> list[MicroBatch]:
        """The backward calls of `len(skip)` rollout rows in micro-batches of `size`, rows where `skip` is True
        ([N] bool: rows that contribute nothing to the loss or gradient) left out.

        The number of calls stays that of the unskipped rows (DeepSpeed counts them per optimizer step, and under
        ZeRO-3 every rank must run the same forwards): the missing ones are dummies, a one-row pass whose loss
        is multiplied by 0 — they give every trainable parameter a (zero) gradient as the full update would, so
        the optimizer step is the same. The loss normalisers are the global counts over all rows, so the kept
        rows' loss terms and the total are unchanged.
        """
        n = len(skip)
        if not skip.any():
            return [MicroBatch(list(range(start, min(start + size, n)))) for start in range(0, n, size)]
        kept = [i for i in range(n) if not skip[i]]
        batches = [MicroBatch(kept[start : start + size]) for start in range(0, len(kept), size)]
        return batches + [MicroBatch([0], dummy=True)] * (-(-n // size) - len(batches))

    def backward(self, loss: torch.Tensor) -> bool:
        """Backward of one micro-batch's loss. Returns whether the loss was finite on every rank; where it was
        not, every rank backpropagates a zeroed loss instead (the count of backward calls per step is fixed,
        and all ranks skip together): end the optimizer step with `skip`."""
        finite = self._all_finite(loss)
        self._backward(loss if finite else loss.nan_to_num(0.0, 0.0, 0.0) * 0.0)
        return finite

    def _all_finite(self, loss: torch.Tensor) -> bool:
        flag = torch.tensor([0.0 if torch.isfinite(loss).all() else 1.0], device=loss.device)
        return bool(all_reduce_sum(flag, self.world_size).item() == 0)

    def _backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self) -> tuple[float, bool]:
        """The optimizer step after this step's backward calls. Returns (grad_norm, stepped)."""
        raise NotImplementedError

    def skip(self) -> tuple[float, bool]:
        """End an optimizer step whose loss was non-finite (and zeroed) without moving the weights if the
        back end allows it. Returns (grad_norm, stepped)."""
        raise NotImplementedError

    def lr(self) -> float:
        raise NotImplementedError

    def gathered_for_generation(self):
        """Context manager: inside, every weight is whole on every rank (the token loop)."""
        return nullcontext()

    def save_state(self, folder: Path) -> None:
        raise NotImplementedError

    def load_state(self, folder: Path) -> None:
        raise NotImplementedError

    def full_state_dict(self) -> dict | None:
        """The whole model's weights on rank 0 (collective under ZeRO-3; None on other ranks)."""
        return self.module.state_dict()

    def trainable_state_dict(self) -> dict | None:
        """The trainable parameters' weights by name on rank 0, e.g. the LoRA adapter: under ZeRO-3 only they
        are gathered, not the frozen base (collective under ZeRO-3; None on other ranks)."""
        return {n: p.detach() for n, p in self.module.named_parameters() if p.requires_grad}

    @contextmanager
    def write_errors_deferred(self, errors: tuple[type[BaseException], ...]):
        """Around `save_state`: a file write that fails with one of `errors` inside the back end's collective
        save is appended to the yielded list instead of raised, so this rank still reaches the back end's own
        barriers (the caller raises afterwards). One process has none: errors propagate."""
        yield []

    def prepare_reference(self, model):
        """The frozen reference policy, placed as this back end places the policy, in eval mode."""
        raise NotImplementedError

    def _reference_module(self, reference) -> torch.nn.Module:
        """The nn.Module of a reference that `prepare_reference` placed."""
        return reference

    def sync_reference(self, reference, alpha: float) -> None:
        """reference ← α·policy + (1 − α)·reference for every parameter, paired by name
        (`core_algos.mix_reference_`; α = 1 copies). Collective under ZeRO-3."""
        refs, policy = _paired_parameters(self._reference_module(reference), self.module)
        core_algos.mix_reference_(refs, policy, alpha)

    def reference_state_dict(self, reference) -> dict | None:
        """The reference's parameters by name, on CPU, on rank 0 (collective under ZeRO-3; None on other ranks)."""
        return {n: p.detach().cpu().clone() for n, p in self._reference_module(reference).named_parameters()}

    def load_reference_state(self, reference, names: list[str], read) -> None:
        """Put saved weights into the reference: `names` the saved parameter names (checked on every rank first),
        `read(name)` one saved tensor (called only where it is needed: rank 0 under ZeRO-3)."""
        params = _check_reference_names(self._reference_module(reference), names)
        with torch.no_grad():
            for name, p in params:
                p.copy_(read(name))


class PlainEngine(Engine):
    """Single-process PyTorch: AdamW + LR schedule + grad clipping, with fp32 master weights when given.

    `masters`: the `fp32_masters` of the model's trainable parameters, in the same order, when the optimizer
    was built over them (bf16 training); None when the optimizer steps the model's own parameters.
    """

    def __init__(self, model, optimizer, scheduler, max_grad_norm: float, masters=None):
        self.module, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.max_grad_norm = max_grad_norm
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.masters = masters
        if masters is not None and [m.shape for m in masters] != [p.shape for p in self.params]:
            raise ValueError("masters must be the fp32 copies of the model's trainable parameters, in order")

    def _backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> tuple[float, bool]:
        """Clip, then update unless the gradient norm is non-finite. Returns (grad_norm, stepped)."""
        stepped_params = self.params
        if self.masters is not None:
            for p, m in zip(self.params, self.masters):
                m.grad = None if p.grad is None else p.grad.float()
                p.grad = None
            stepped_params = self.masters
        norm = float(
            torch.nn.utils.clip_grad_norm_(stepped_params, self.max_grad_norm if self.max_grad_norm > 0 else math.inf)
        )
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

    def skip(self) -> tuple[float, bool]:
        """Drop this step's gradients; the weights, optimizer state and LR schedule do not move."""
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.params:
            p.grad = None
        return math.nan, False

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save_state(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
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
                raise ValueError(
                    f"{folder / 'optimizer.pt'} has no fp32 master weights; it was not written by a "
                    "bf16 run: resume it with the bf16 setting it was trained with"
                )
            with torch.no_grad():
                for m, saved in zip(self.masters, state["masters"]):
                    m.copy_(saved)
            self._copy_masters_to_model()

    def prepare_reference(self, model):
        return model.to(next(self.module.parameters()).device).eval()


class DeepSpeedEngine(Engine):
    """A DeepSpeed engine whose `gradient_accumulation_steps` equals the backward calls per optimizer step."""

    state_holds_weights = True

    def __init__(self, engine, backward_per_step: int, world_size: int, ds_config: dict | None = None):
        from deepspeed.runtime.base_optimizer import ZeROOptimizer

        self._ds = engine
        self.module = engine.module
        self.optimizer = engine.optimizer
        self.backward_per_step = backward_per_step
        self.world_size = world_size
        self.stage = engine.zero_optimization_stage()
        self.ds_config = ds_config or {}
        self._calls = 0
        self._zero = isinstance(self.optimizer, ZeROOptimizer)  # what DeepSpeed's forward asks before the call

    def _backward(self, loss: torch.Tensor) -> None:
        # The trainer calls the unwrapped module, so DeepSpeed's own `forward` (which starts each micro-step by
        # `clear_backward_seen_flag`) never runs: without this call ZeRO-3 never counts a micro-step and copies
        # each backward's gradient over the last one's instead of adding it (only the step's last update
        # micro-batch would train; tests/test_distributed.py::test_zero3_gradient_equals_single_process).
        if self._zero:
            self.optimizer.clear_backward_seen_flag()
        # DeepSpeed pairs every backward with a step(); the optimizer only moves at the accumulation boundary.
        self._ds.backward(loss * (self.backward_per_step * self.world_size))
        self._ds.step()
        self._calls += 1

    def step(self) -> tuple[float, bool]:
        if self._calls != self.backward_per_step:
            raise RuntimeError(f"{self._calls} backward calls in a step that expects {self.backward_per_step}")
        self._calls = 0
        norm = self._ds.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        return norm, math.isfinite(norm)

    def skip(self) -> tuple[float, bool]:
        """A DeepSpeed step cannot be skipped once its backward calls ran: `backward` zeroed the non-finite loss,
        so this is an ordinary step over zero gradients."""
        return self.step()

    def lr(self) -> float:
        return self._ds.get_lr()[0]

    @contextmanager
    def gathered_for_generation(self):
        """Under ZeRO-3 each rank holds a shard of every weight, and generating through DeepSpeed's per-module
        gather hooks costs one all-gather per module per token. As TRL's `unwrap_model_for_generation` does,
        the hooks are removed, all weights gathered once for the block, and the hooks put back afterwards."""
        offload = getattr(self.optimizer, "parameter_offload", None)
        if offload is None:  # ZeRO-1/2: weights are already whole
            yield
            return
        import deepspeed

        for p in self.module.parameters():
            if hasattr(p, "ds_active_sub_modules"):
                p.ds_active_sub_modules.clear()
        offload._remove_module_hooks()
        try:
            with deepspeed.zero.GatheredParameters(list(self.module.parameters())):
                yield
        finally:
            offload.setup_zero_stage3_hooks()

    def save_state(self, folder: Path) -> None:
        """DeepSpeed's checkpoint without the frozen weights: they never change, and the resumed run loads
        them again from `model_name_or_path` (the frozen towers, and under LoRA the whole base model — 1.7 GB
        at Qwen2.5-Omni-3B widths with 2 layers, bench/RESULTS.md "LoRA checkpoints"). Without
        `exclude_frozen_parameters` ZeRO-2/3 write them twice: in the module state and as "frozen fragments"."""
        self._ds.save_checkpoint(
            str(folder / "deepspeed"), tag="state", save_latest=False, exclude_frozen_parameters=True
        )

    def load_state(self, folder: Path) -> None:
        """Trainable weights, optimizer, LR schedule (non-strict: the frozen weights are not in the state)."""
        path, _ = self._ds.load_checkpoint(str(folder / "deepspeed"), tag="state", load_module_strict=False)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state in {folder / 'deepspeed'}")

    @contextmanager
    def write_errors_deferred(self, errors: tuple[type[BaseException], ...]):
        """DeepSpeed's `save_checkpoint` writes through its checkpoint engine (`makedirs`, `save`: each rank its
        shards) and copies its recovery scripts (rank 0) between `dist.barrier()`s: a rank that raised there would
        leave the others waiting at the next barrier. Inside this block those three calls record their error and
        return; after a failure this rank writes nothing more but keeps to the barriers."""
        failed: list[BaseException] = []

        def deferred(fn):
            def call(*args, **kwargs):
                if failed:
                    return None
                try:
                    return fn(*args, **kwargs)
                except errors as err:
                    failed.append(err)
                    return None

            return call

        targets = [
            (self._ds.checkpoint_engine, "makedirs"),
            (self._ds.checkpoint_engine, "save"),
            (self._ds, "_copy_recovery_script"),
        ]
        for obj, name in targets:
            setattr(obj, name, deferred(getattr(obj, name)))  # an instance attribute over the class's method
        try:
            yield failed
        finally:
            for obj, name in targets:
                delattr(obj, name)

    def full_state_dict(self) -> dict | None:
        """The whole model's weights on rank 0 (collective under ZeRO-3; None on other ranks)."""
        if self.is_partitioned:
            return self._ds._zero3_consolidated_16bit_state_dict()
        return self.module.state_dict()

    def trainable_state_dict(self) -> dict | None:
        """Only the trainable parameters, gathered together (collective under ZeRO-3; None on other ranks)."""
        if not self.is_partitioned:
            return super().trainable_state_dict()
        import deepspeed

        named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters([p for _, p in named]):
            if self._ds.global_rank != 0:
                return None
            return {n: p.detach().cpu().clone() for n, p in named}

    def prepare_reference(self, model):
        """Under ZeRO-3 a DeepSpeed engine without optimizer (its weights partitioned as the policy's); under
        ZeRO-1/2, which partition only optimizer state and gradients, DeepSpeed refuses an engine without
        optimizer ("zero stage 2 requires an optimizer"), so the reference's engine runs ZeRO off (stage 0, as
        TRL's `prepare_deepspeed` does for a reference): whole weights on every rank."""
        import deepspeed

        config = {k: v for k, v in self.ds_config.items() if k not in ("optimizer", "scheduler")}
        if not self.is_partitioned:
            config["zero_optimization"] = {**config.get("zero_optimization", {}), "stage": 0}
        reference, *_ = deepspeed.initialize(model=model, config=config)
        reference.eval()  # DeepSpeed's engine.eval() returns None, not the engine
        return reference

    def _reference_module(self, reference) -> torch.nn.Module:
        return reference.module  # `prepare_reference` wraps it in a DeepSpeed engine without optimizer

    def sync_reference(self, reference, alpha: float) -> None:
        """Under ZeRO-3 each rank holds a shard of every weight of both models: one pair of tensors at a time is
        gathered whole, rank 0 mixes it, and leaving the block broadcasts rank 0's result and partitions it again
        (TRL's SyncRefModelCallback gathers both whole models at once, with the same `modifier_rank=0`)."""
        if not self.is_partitioned:
            super().sync_reference(reference, alpha)
            return
        import deepspeed

        for ref, pol in zip(*_paired_parameters(reference.module, self.module)):
            with deepspeed.zero.GatheredParameters([ref, pol], modifier_rank=0):
                if self._ds.global_rank == 0:
                    core_algos.mix_reference_([ref], [pol], alpha)

    def reference_state_dict(self, reference) -> dict | None:
        if not self.is_partitioned:
            return super().reference_state_dict(reference) if self._ds.global_rank == 0 else None
        out = {}
        for name, p in reference.module.named_parameters():  # one whole tensor at a time
            with gathered_param(p) as whole:
                if self._ds.global_rank == 0:
                    out[name] = whole.cpu().clone()
        return out if self._ds.global_rank == 0 else None

    def load_reference_state(self, reference, names: list[str], read) -> None:
        if not self.is_partitioned:
            super().load_reference_state(reference, names, read)
            return
        import deepspeed

        for name, p in _check_reference_names(reference.module, names):
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                if self._ds.global_rank == 0:
                    with torch.no_grad():
                        p.copy_(read(name))


def _paired_parameters(reference: torch.nn.Module, policy: torch.nn.Module):
    """(reference parameters, policy parameters) paired by name; the two models must have the same ones."""
    ref, pol = dict(reference.named_parameters()), dict(policy.named_parameters())
    if ref.keys() != pol.keys():
        odd = sorted(ref.keys() ^ pol.keys())[:3]
        raise RuntimeError(f"the reference and the policy have different parameters (e.g. {odd}): cannot sync them")
    return [ref[n] for n in pol], list(pol.values())


def _check_reference_names(reference: torch.nn.Module, names: list[str]) -> list[tuple[str, torch.nn.Parameter]]:
    params = list(reference.named_parameters())
    if sorted(names) != sorted(n for n, _ in params):
        raise ValueError(
            "the saved reference's parameters are not this model's: resume with the model it was trained from"
        )
    return params


def configure_deepspeed(ds: dict | None, cfg, world_size: int):
    """Resolve the DeepSpeed JSON's "auto" values from the training config, in place, before any model is
    loaded. The optimizer is ours, not DeepSpeed's (an "optimizer" section would JIT-build DeepSpeed's own,
    ~100 s). Under ZeRO-3 returns the `HfDeepSpeedConfig` that makes `from_pretrained` partition the weights as
    they load; the caller keeps it alive (transformers holds only a weak reference). None otherwise."""
    if ds is None:
        return None
    backward_per_step = cfg.backward_calls_per_step
    ds.pop("optimizer", None)
    ds.pop("scheduler", None)
    ds["train_micro_batch_size_per_gpu"] = cfg.update_micro_batch_size
    ds["gradient_accumulation_steps"] = backward_per_step
    ds["train_batch_size"] = cfg.update_micro_batch_size * backward_per_step * world_size
    ds["gradient_clipping"] = cfg.max_grad_norm
    ds.setdefault("bf16", {})["enabled"] = cfg.bf16
    ds.setdefault("steps_per_print", 10**9)
    if ds.get("zero_optimization", {}).get("stage", 0) != 3:
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds)


def build_engine(model, cfg, ds_config: dict | None, total_steps: int, world_size: int, device) -> Engine:
    """AdamW + LR schedule over `model`'s trainable parameters, behind the back end `ds_config` asks for.

    The schedule counts optimizer steps: μ of them per trainer step. transformers' "constant" ignores the
    warmup, so a warmup turns it into "constant_with_warmup". bf16 without DeepSpeed: the optimizer steps fp32
    masters (DeepSpeed's bf16 optimizer keeps its own). `fused`: one kernel over all parameters (CPU and CUDA)
    instead of torch's per-tensor loop on CPU.
    """
    from transformers import get_scheduler

    if ds_config is None:
        model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("nothing to train: every parameter is frozen (check lora / freeze_* options)")
    masters = fp32_masters(params) if cfg.bf16 and ds_config is None else None
    optimizer = torch.optim.AdamW(
        masters or params,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        weight_decay=cfg.weight_decay,
        fused=ds_config is None,
    )
    optimizer_steps = total_steps * cfg.num_iterations
    warmup = int(cfg.warmup_ratio * optimizer_steps)
    name = "constant_with_warmup" if cfg.lr_scheduler == "constant" and warmup > 0 else cfg.lr_scheduler
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=optimizer_steps)
    if ds_config is None:
        return PlainEngine(model, optimizer, scheduler, cfg.max_grad_norm, masters=masters)
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return DeepSpeedEngine(engine, cfg.backward_calls_per_step, world_size, ds_config)


def setup_distributed(deepspeed_json: str | None) -> tuple[int, int, torch.device, dict | None]:
    """(rank, world size, device, DeepSpeed config or None) from the launcher's environment; starts DeepSpeed's
    process group when there is a DeepSpeed config (`deepspeed_json`, else accelerate's
    ACCELERATE_DEEPSPEED_CONFIG_FILE)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    ds_path = deepspeed_json or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    ds_config = json.loads(Path(ds_path).read_text()) if ds_path else None
    if world_size > 1 and ds_config is None:
        raise RuntimeError("several processes need a DeepSpeed config: pass deepspeed=configs/deepspeed/zero3.json")
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        torch.cuda.set_device(device)
    if ds_config is not None:
        import deepspeed

        # On a machine without GPUs DeepSpeed runs over gloo (no oneCCL here).
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return rank, world_size, device, ds_config


def param_counts(model) -> tuple[int, int]:
    """(trainable, frozen) parameter counts, whole sizes also when ZeRO-3 has partitioned them."""
    trainable = frozen = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", p.numel())
        if p.requires_grad:
            trainable += n
        else:
            frozen += n
    return trainable, frozen


def param_partitioned(param) -> bool:
    """Whether `param` is ZeRO-3 partitioned: this rank holds a shard of it, and its whole tensor must be
    gathered (`gathered_param`, or the module's own gather hooks) before it is read."""
    return hasattr(param, "ds_id")


@contextmanager
def gathered_param(param):
    """The full tensor of `param`, gathered for the block under ZeRO-3 (a plain parameter is already whole)."""
    if param_partitioned(param):
        import deepspeed

        with deepspeed.zero.GatheredParameters([param]):
            yield param.data
    else:
        yield param.detach()


def partitioned_over_ranks(model) -> bool:
    """True when `model`'s weights are ZeRO-3 partitioned over several ranks."""
    param = next(iter(model.parameters()), None)
    if param is None or not param_partitioned(param):
        return False
    import torch.distributed as dist

    return dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def training_mode(model):
    """The policy in training mode for the gradient passes only.

    Hugging Face checkpoints a decoder layer only when the layer is `training`, and `from_pretrained` returns
    the model in eval mode: without this, `gradient_checkpointing` does nothing. Generation and the no-grad
    passes stay in eval mode, where the KV cache is kept.
    """
    was = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was)
