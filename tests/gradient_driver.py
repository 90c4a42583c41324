"""python tests/gradient_driver.py ROLLOUTS GRADIENT [train arguments]: one update over a fixed rollout, writing the
step's gradient as the optimizer is about to step it (tests only).

ROLLOUTS is a folder of `rank<r>.pt` files. Without them the run draws its own rollout and writes it there, one file
per rank; with them a DeepSpeed rank trains on its own file and one process on every file (all ranks' rows: the
single-process reference of a multi-rank step). Rank 0 writes GRADIENT: {name: the whole gradient of each trainable
parameter} (`safe_get_full_grad` under DeepSpeed, `.grad` otherwise).
"""

import sys
from pathlib import Path

import torch

from omni_grpo import train
from omni_grpo.config import load_config
from omni_grpo.trainer import GRPOTrainer

ROLLOUTS, GRADIENT, ARGV = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]


def whole_gradients(trainer: GRPOTrainer) -> dict[str, torch.Tensor]:
    from deepspeed.utils import safe_get_full_grad

    read = safe_get_full_grad if trainer.ds_config else (lambda p: p.grad)
    return {n: read(p).detach().float().cpu().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}


def main() -> None:
    cfg = load_config(None, ARGV)
    if cfg.deepspeed:
        train.skip_deepspeed_shm_op()
    trainer = GRPOTrainer(cfg)
    seen: dict[str, torch.Tensor] = {}
    if trainer.ds_config:
        ds = trainer.engine._ds
        ds_step = ds.step

        def step() -> None:
            if ds.is_gradient_accumulation_boundary():
                seen.update(whole_gradients(trainer))
            ds_step()

        ds.step = step
    else:
        plain_step = trainer.engine.step

        def step():
            seen.update(whole_gradients(trainer))
            return plain_step()

        trainer.engine.step = step
    files = sorted(ROLLOUTS.glob("rank*.pt"))
    if not files:
        _, rollouts, _ = trainer.collect_rollouts(cfg.temperature)
        ROLLOUTS.mkdir(parents=True, exist_ok=True)
        torch.save(rollouts, ROLLOUTS / f"rank{trainer.rank}.pt")
    elif trainer.ds_config:
        rollouts = torch.load(ROLLOUTS / f"rank{trainer.rank}.pt", weights_only=False)
    else:
        rollouts = [r for f in files for r in torch.load(f, weights_only=False)]
    trainer.update(rollouts, 0.0)
    if trainer.rank == 0:
        torch.save(seen, GRADIENT)


if __name__ == "__main__":
    main()
