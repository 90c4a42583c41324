"""Atomic checkpoints: `output_dir/checkpoints/step-NNNNNNN/`, written under a temporary name, then renamed.

A checkpoint folder holds
  model/           HF thinker weights (safetensors) or the LoRA adapter, plus the processor: loadable as is
  state/           optimizer + LR scheduler (`optimizer.pt`, tensors only, loaded with weights_only=True)
                   or DeepSpeed's own state (`deepspeed/`); never the frozen weights (the towers, LoRA's base
                   model): resume loads those from `model_name_or_path` again
  reference.safetensors  the reference's weights by parameter name, only when it follows the policy
                   (`ref_sync_steps` > 0); otherwise resume builds it from `model_name_or_path` again
  config.yaml      the resolved training config (no secrets)
  trainer_state.json  step, data cursor, counters, Python/NumPy RNG state
  rng-rank{R}.safetensors  torch CPU (and CUDA) generator state of each rank
  COMPLETE         written last, inside the temporary folder, before the rename
A crash at any point leaves either the previous checkpoints untouched plus a `.tmp-*` folder (ignored and
removed by the next save) or a complete new one. `resume_from_checkpoint: latest` picks the newest complete one.

This module owns every save and load of the policy: `load_policy` (the pretrained policy and reference),
`save_checkpoint` / `load_checkpoint` (the folder above, through the engine's `save_state` / `load_state` and
`reference_state_dict` / `load_reference_state`), `save_model` (HF weights or LoRA adapter, LoRA merge, ZeRO-3
export) and the folder names (`step_name`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from omni_grpo import rng

STEP_RE = re.compile(r"^step-(\d+)$")
TMP_PREFIX = ".tmp-"
REFERENCE_FILE = "reference.safetensors"
logger = logging.getLogger("omni_grpo")


def step_name(step: int) -> str:
    """The folder name of the checkpoint of `step` (the one place its format lives; `STEP_RE` parses it)."""
    return f"step-{step:07d}"


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
    for stale in root.glob(TMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / (TMP_PREFIX + step_name(step))
    tmp.mkdir()
    return tmp


def finish(tmp: Path, step: int, keep: int) -> Path:
    """Mark complete, rename into place, prune to the newest `keep` (0 = keep all)."""
    (tmp / "COMPLETE").write_text("ok\n")
    final = tmp.parent / step_name(step)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep > 0:
        for old in list_checkpoints(tmp.parent.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def write_trainer_state(folder: Path, state: dict) -> None:
    state = {**state, **rng.to_json()}
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=1))


def read_trainer_state(folder: Path) -> dict:
    path = folder / "trainer_state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err}; resume from an earlier checkpoint") from err
    rng.from_json(state)
    del state["python_rng"], state["numpy_rng"]
    return state


def save_rng(folder: Path, rank: int) -> None:
    from safetensors.torch import save_file

    save_file(rng.to_tensors(), str(folder / f"rng-rank{rank}.safetensors"))


def load_rng(folder: Path, rank: int) -> None:
    from safetensors.torch import load_file

    path = folder / f"rng-rank{rank}.safetensors"
    if not path.exists():
        raise CheckpointError(f"{path} is missing: the checkpoint was written by fewer ranks than are resuming it")
    rng.from_tensors(load_file(str(path)))


# ------------------------------------------------------------------------------------------ the policy
def load_thinker(family, cfg):
    """The pretrained thinker of `cfg.model_name_or_path`, towers frozen as configured."""
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    model = family.load_model(cfg.model_name_or_path, dtype=dtype, attn_implementation=cfg.attn_implementation)
    towers = family.tower_modules(model)
    for name, frozen in (("vision", cfg.freeze_vision_tower), ("audio", cfg.freeze_audio_tower)):
        if frozen:
            towers[name].requires_grad_(False)
    return model


def load_policy(family, cfg):
    """(policy, reference or None): the pretrained thinker to train (gradient checkpointing, LoRA as
    configured) and, when some step has β > 0 without LoRA, a frozen second copy as the reference (with LoRA
    the reference is the policy with its adapters off). Decided once from the config: a β schedule that starts
    at 0 still needs the reference later."""
    model = load_thinker(family, cfg)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        model = add_lora(family, model, cfg.lora)
    reference = None
    if cfg.uses_reference_model and not cfg.lora.enabled:
        reference = load_thinker(family, cfg).requires_grad_(False)
    return model, reference


def add_lora(family, model, lora):
    """`model` with LoRA adapters on the language model only. peft rewrites a regex target for some model
    types (Qwen3's MoE), so the towers are also excluded explicitly."""
    from peft import LoraConfig, get_peft_model

    targets = "|".join(lora.target_modules)
    lm = family.language_model.replace(".", r"\.")
    towers = "|".join(p.split(".")[-1] for p in (family.vision_tower, family.audio_tower))
    return get_peft_model(
        model,
        LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=rf".*{lm}\..*\.({targets})$",
            exclude_modules=rf".*\.({towers})\..*",
        ),
    )


# ------------------------------------------------------------------------------------------ one checkpoint
class _WriteFailure:
    """A collective save's failed write on this rank, told to every rank at `agree`: a rank whose write fails keeps
    to the save's collective steps (no rank is left waiting at a barrier), and then every rank raises the same
    `CheckpointError`, naming the rank that failed and its error."""

    def __init__(self, cfg, step: int, tmp: Path, rank: int, world_size: int):
        self.cfg, self.step, self.tmp, self.rank, self.world_size = cfg, step, tmp, rank, world_size
        self.error: BaseException | None = None

    def run(self, fn, *args):
        """`fn(*args)` unless a write already failed here; its write error is kept, not raised."""
        if self.error is None:
            try:
                return fn(*args)
            except WRITE_ERRORS as err:
                self.error = err
        return None

    def agree(self) -> None:
        """Raise CheckpointError on every rank if a write failed on any (collective)."""
        mine = None
        if self.error is not None:
            where = f" on rank {self.rank}" if self.world_size > 1 else ""
            mine = (
                f"saving the checkpoint of step {self.step} to {self.tmp} failed{where}: "
                f"{type(self.error).__name__}: {self.error} ({free_space(self.cfg.output_dir)}). The previous "
                f"checkpoints are intact; free disk space or fix permissions on {self.cfg.output_dir}, then "
                "resume with resume_from_checkpoint=latest."
            )
        messages = [mine]
        if self.world_size > 1:
            import torch.distributed as dist

            messages = [None] * self.world_size
            dist.all_gather_object(messages, mine)
        failed = next((m for m in messages if m is not None), None)
        if failed is not None:
            raise CheckpointError(failed) from self.error


def save_checkpoint(
    cfg, engine, family, processor, step: int, rank: int, world_size: int, trainer_state: dict, reference=None
) -> Path | None:
    """Atomic checkpoint of everything needed to continue exactly (collective: call on every rank).

    `trainer_state`: the trainer's counters and data cursor (JSON). `reference`: the trainer's reference model
    (or None), saved when it follows the policy (`ref_sync_steps` > 0): it is then part of the run's state. Any
    failure to write it on any rank (full disk, read-only or vanished output_dir) is a `CheckpointError` on every
    rank, promptly, that names the folder, the rank and what to do; the previous checkpoints are never touched
    before the new one is complete. Returns the folder on rank 0.
    """
    from omni_grpo.config import save_config

    tmp = checkpoints_dir(cfg.output_dir) / (TMP_PREFIX + step_name(step))
    failure = _WriteFailure(cfg, step, tmp, rank, world_size)
    if rank == 0:
        failure.run(begin, cfg.output_dir, step)
    failure.agree()
    with engine.write_errors_deferred(WRITE_ERRORS) as deferred:  # the back end's own barriers are reached
        failure.run(engine.save_state, tmp / "state")
    if deferred and failure.error is None:
        failure.error = deferred[0]
    # collective under ZeRO-3; LoRA: only the adapter is gathered
    state_dict = engine.trainable_state_dict() if cfg.lora.enabled else engine.full_state_dict()
    synced = reference is not None and cfg.ref_sync_steps > 0
    reference_state = engine.reference_state_dict(reference) if synced else None  # collective under ZeRO-3
    failure.run(save_rng, tmp, rank)
    if rank == 0:
        failure.run(save_model, tmp / "model", cfg, engine, family, processor, state_dict)
        if synced:
            failure.run(save_reference, tmp / REFERENCE_FILE, reference_state)
        failure.run(save_config, cfg, tmp / "config.yaml")
        failure.run(write_trainer_state, tmp, {**trainer_state, "world_size": world_size})
    failure.agree()
    final = failure.run(finish, tmp, step, cfg.save_total_limit) if rank == 0 else None
    failure.agree()
    return final


def save_model(folder: Path, cfg, engine, family, processor, state_dict: dict) -> None:
    """The policy as a loadable HF folder (rank 0): the thinker's weights, or the LoRA adapter (and, with
    `lora.merge_on_save`, the merged model in `merged/`); the processor beside them."""
    from omni_grpo.models.base import base_thinker

    model = engine.module
    if cfg.lora.enabled:
        from peft import get_peft_model_state_dict

        model.save_pretrained(folder, state_dict=get_peft_model_state_dict(model, state_dict=state_dict))
        if cfg.lora.merge_on_save:
            with hf_zero3_disabled():  # rank 0 alone: no zero.Init collectives
                merged = load_thinker(family, cfg)
            merged = merge_lora(merged, folder)
            merged.save_pretrained(folder / "merged")
            processor.save_pretrained(folder / "merged")
    else:
        export_model(base_thinker(model), state_dict, partitioned=engine.is_partitioned).save_pretrained(folder)
    processor.save_pretrained(folder)


def save_reference(path: Path, state: dict) -> None:
    """The reference's weights by parameter name (rank 0)."""
    from safetensors.torch import save_file

    save_file({n: t.contiguous() for n, t in state.items()}, str(path))


def load_checkpoint(folder: Path, cfg, engine, family, rank: int, world_size: int, reference=None) -> dict:
    """Restore weights, optimizer, LR schedule and RNG from `folder`, and the reference's weights when the
    checkpoint holds them (a reference that followed the policy); returns the trainer state it saved."""
    state = read_trainer_state(folder)
    if state.get("world_size", 1) != world_size:
        raise CheckpointError(
            f"{folder} was written by {state['world_size']} rank(s); resume it with the same number of processes"
        )
    if not engine.state_holds_weights:
        _load_weights(folder / "model", cfg, engine.module, family)
    engine.load_state(folder / "state")
    if reference is not None and (folder / REFERENCE_FILE).exists():
        _load_reference(folder / REFERENCE_FILE, engine, reference)
    load_rng(folder, rank)
    if rank == 0:
        logger.info("resumed from %s at step %d", folder, state["global_step"])
    return state


def _load_reference(path: Path, engine, reference) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as saved:  # read one tensor at a time, where it is needed
            engine.load_reference_state(reference, list(saved.keys()), saved.get_tensor)
    except (OSError, SafetensorError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err}; resume from an earlier checkpoint") from err


def _load_weights(folder: Path, cfg, model, family) -> None:
    from safetensors.torch import load_file

    from omni_grpo.models.base import base_thinker

    if cfg.lora.enabled:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        return
    # transformers renames keys on save/load (its conversion mapping): load through it, then copy.
    saved = family.load_model(folder, dtype=next(model.parameters()).dtype)
    base_thinker(model).load_state_dict(saved.state_dict())


@contextmanager
def hf_zero3_disabled():
    """HF's global ZeRO-3 switch off for a block that builds a model on one rank only: with it on, the
    submodules are wrapped in `zero.Init`, whose broadcasts wait for the other ranks forever."""
    from transformers.integrations import deepspeed as hf_ds

    keep = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = keep


def export_model(thinker, state_dict: dict, partitioned: bool):
    """A model whose `save_pretrained` writes the standard checkpoint format.

    `save_pretrained(state_dict=...)` re-applies transformers' key conversion to keys that are already in
    module form (measured: `thinker.model.thinker.audio_tower...`), so under ZeRO-3 — where the live
    weights are partitioned — the consolidated weights are assigned to a fresh model built on the meta
    device instead, which costs no extra memory until the assignment.
    """
    if not partitioned:
        return thinker
    with hf_zero3_disabled(), torch.device("meta"):
        fresh = type(thinker)(thinker.config)
    fresh.load_state_dict(state_dict, assign=True, strict=True)
    fresh.generation_config = thinker.generation_config
    return fresh


def merge_lora(base, adapter_dir: Path):
    """`base` with the adapter of `adapter_dir` merged in (a plain model again)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
