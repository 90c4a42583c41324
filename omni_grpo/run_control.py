"""Resume policy: what a run does with an output_dir that already holds a run (decided before any weight loads,
and by `train --check` before ranks launch).

`resume_from_checkpoint`:
  auto (default)  resume from the newest complete checkpoint when it was written by THIS config (its
                  config.yaml equals the current config outside `IGNORED_KEYS`); start at step 0 in a new or
                  empty folder (or one whose config.yaml is this config's and holds no checkpoint yet); refuse with
                  one line naming the keys that differ when the folder holds a different run.
  latest          resume from the newest complete checkpoint, whatever its config (none there: start at step 0).
  a path          resume from that checkpoint.
  null / none     never resume: start at step 0; like `auto` it refuses a folder that holds checkpoints.
`overwrite_output_dir=true` starts at step 0 in any folder: rank 0 first moves the old checkpoints/, runs/ and
config.yaml into output_dir/overwritten-<UTC time>/ (nothing is deleted; remove that folder when done with it).

`IGNORED_KEYS` do not change what a step computes: how long to train (a run may be extended; the schedules then
stretch over the new total), how often to log and save, data-loader workers, and the resume settings themselves.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import yaml

from omni_grpo import checkpoint as ckpt
from omni_grpo.config import ConfigError, config_to_dict

IGNORED_KEYS = frozenset(
    {
        "output_dir",
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "max_steps",
        "num_epochs",
        "logging_steps",
        "log_completions",
        "save_steps",
        "save_total_limit",
        "dataloader_num_workers",
        "dataloader_prefetch_factor",
    }
)
MOVED = ("checkpoints", "runs", "config.yaml")  # what overwrite_output_dir moves aside


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_keys(saved_yaml: Path, cfg) -> list[str]:
    """Keys (dotted) whose value in `saved_yaml` differs from `cfg`'s, outside IGNORED_KEYS; [] when the same."""
    try:
        saved = yaml.safe_load(saved_yaml.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(
            f"{saved_yaml} cannot be read ({err}); pass a new output_dir=DIR, or "
            "overwrite_output_dir=true to start again in this one"
        ) from None
    current = yaml.safe_load(yaml.safe_dump(config_to_dict(cfg)))  # the types save_config writes
    a, b = _flat(saved), _flat(current)
    return sorted(k for k in set(a) | set(b) if k.split(".")[0] not in IGNORED_KEYS and a.get(k) != b.get(k))


def decide_resume(cfg) -> Path | None:
    """The checkpoint to resume from, or None to start at step 0; ConfigError (one line) to refuse the folder."""
    spec = cfg.resume_from_checkpoint
    if cfg.overwrite_output_dir:
        return None
    if spec not in ("auto", None, "none"):
        return ckpt.resolve(cfg.output_dir, spec)
    out = Path(cfg.output_dir)
    found = ckpt.list_checkpoints(out)
    if found and spec != "auto":
        raise ConfigError(
            f"output_dir={str(out)!r} holds checkpoints (newest {found[-1].name}) and "
            f"resume_from_checkpoint={spec}; pass a new output_dir=DIR, or overwrite_output_dir=true "
            "to start again in this one"
        )
    saved = found[-1] / "config.yaml" if found else out / "config.yaml"
    if not saved.is_file():
        return None
    keys = differing_keys(saved, cfg)
    if keys:
        shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
        verb = "differs" if len(keys) == 1 else "differ"
        raise ConfigError(
            f"output_dir={str(out)!r} holds a different run ({shown} {verb} from {saved}); pass a new "
            "output_dir=DIR, or overwrite_output_dir=true to start again in this one"
        )
    return found[-1] if found else None


def move_old_run(output_dir) -> Path | None:
    """Move the old run's checkpoints/, runs/ and config.yaml into output_dir/overwritten-<UTC time>/ (rank 0)."""
    out = Path(output_dir)
    present = [out / name for name in MOVED if (out / name).exists()]
    if not present:
        return None
    target = out / time.strftime("overwritten-%Y%m%d-%H%M%S", time.gmtime())
    target.mkdir(parents=True, exist_ok=True)
    for path in present:
        shutil.move(str(path), str(target / path.name))
    return target
