"""Reward manager: the trainer's one entry point from completions to per-reward scores and their total.

``build_reward_manager`` resolves every reward name, checks weights and options, and returns a
``RewardManager``; calling it on a batch returns a ``RewardOutput``:

- ``scores[i, f]``: reward f of completion i (float32), NaN where the reward returned None ("cannot
  score"), returned NaN/inf, or failed on the batch.
- ``total[i] = Σ_f w_f · scores[i, f]`` per `core_algos.group_reward_totals`: a reward that scored none of
  a completion's group is left out of its total; a completion missing a score its group mates have has
  total NaN (no total: advantage 0, never pushed down). The advantages are computed from it, so every
  reward with a non-zero weight reaches the loss.
- ``metrics``: ``reward/total``, ``reward/total_std`` (over completions with a total),
  ``reward/total/none_ratio`` (share without one), and per reward ``reward/<name>`` (mean over scored
  completions, NaN if none), ``reward/<name>_std``, ``reward/<name>/none_ratio`` (fraction of NaN in its
  column), ``reward/<name>/errors`` (failed batches so far), ``reward/<name>/nonfinite`` (NaN/inf
  values, or values too large for float32, returned in this batch). Standard deviations are population
  ones (0 for a single value).

A reward that raises, returns something other than a list of N numbers-or-None, is None for the whole
batch, counted and logged as a warning; ``max_consecutive_errors`` failing batches in a row raise
``RewardError``.

Reward options (``reward_kwargs``) are the reward function's keyword-only parameters. A function may
carry ``prepare_options(**options) -> dict``, called once here to check and convert them (the
built-ins use it, so a bad option fails at startup, and a judge client is built once and keeps its
cache). Sample fields arrive as keyword lists aligned with the completions; a field missing from some
samples is None there.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from omni_grpo.core_algos import group_reward_totals

from . import REWARDS

logger = logging.getLogger(__name__)

_FLOAT32_MAX = torch.finfo(torch.float32).max
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*")


class RewardError(RuntimeError):
    """A reward failed on too many consecutive batches to keep training."""


@dataclass
class RewardOutput:
    scores: torch.Tensor  # [N, F] float32, NaN where a reward returned None / errored / non-finite
    total: torch.Tensor  # [N] float32, core_algos.group_reward_totals: NaN where a completion has no total
    metrics: dict[str, float]  # reward/... scalars, see the module docstring
    per_sample: list[dict[str, float | None]]  # per completion {reward name: score or None}


@dataclass
class _Reward:
    name: str
    fn: Callable
    options: dict[str, object]
    errors: int = 0  # failed batches so far
    consecutive: int = 0  # failed batches in a row


def resolve_reward(name: str) -> Callable:
    """A built-in reward by name (``format``, ``accuracy``, ``people_focus``) or ``"pkg.module:function"``."""
    if not isinstance(name, str):
        raise ValueError(f"a reward name must be a string, got {type(name).__name__}")
    if name in REWARDS:
        return REWARDS[name]
    if not _IMPORT_PATH.fullmatch(name):
        raise ValueError(
            f"unknown reward {name!r}: use a built-in name ({', '.join(sorted(REWARDS))}) "
            f"or an import path 'package.module:function'{_did_you_mean(name)}"
        )
    module_name, attr = name.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"reward {name!r}: cannot import module {module_name!r} ({exc}); "
            "make it importable (install it or add it to PYTHONPATH)"
        ) from exc
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"reward {name!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"reward {name!r}: {attr!r} is not callable")
    return fn


def _did_you_mean(name: str) -> str:
    match = difflib.get_close_matches(name, list(REWARDS), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def check_reward_names(names: list[str]) -> None:
    """Resolve every name of `reward_funcs` before anything is loaded; ConfigError names the one that fails.
    Called by the commands after `load_config` (a config builds without the reward modules)."""
    from omni_grpo.config import ConfigError

    for name in names:
        try:
            resolve_reward(name)
        except ValueError as exc:
            raise ConfigError(f"reward_funcs: {exc}") from None


def build_reward_manager(
    reward_funcs: list[str],
    reward_weights: list[float] | None = None,
    reward_kwargs: dict[str, dict] | None = None,
    max_consecutive_errors: int = 3,
) -> RewardManager:
    """Resolve and check every reward, weight and option; ValueError says what to change."""
    if isinstance(reward_funcs, str) or not isinstance(reward_funcs, (list, tuple)) or not reward_funcs:
        raise ValueError(
            f"reward_funcs must be a non-empty list of reward names, e.g. ['format', 'accuracy'], got {reward_funcs!r}"
        )
    duplicates = sorted({n for n in reward_funcs if list(reward_funcs).count(n) > 1})
    if duplicates:
        raise ValueError(
            f"reward_funcs lists {duplicates} more than once; list each reward once and use reward_weights to scale it"
        )
    weights = _check_weights(reward_funcs, reward_weights)
    reward_kwargs = {} if reward_kwargs is None else reward_kwargs
    if not isinstance(reward_kwargs, dict):
        raise ValueError(f"reward_kwargs must map reward names to option dicts, got {type(reward_kwargs).__name__}")
    stray = sorted(set(reward_kwargs) - set(reward_funcs))
    if stray:
        raise ValueError(
            f"reward_kwargs has options for {stray}, which are not in reward_funcs {list(reward_funcs)}; "
            "add them there or remove the options"
        )
    if (
        isinstance(max_consecutive_errors, bool)
        or not isinstance(max_consecutive_errors, int)
        or max_consecutive_errors < 1
    ):
        raise ValueError(f"max_consecutive_errors must be an integer >= 1, got {max_consecutive_errors!r}")
    rewards = []
    for name in reward_funcs:
        fn = resolve_reward(name)
        rewards.append(_Reward(name, fn, _check_options(name, fn, reward_kwargs.get(name) or {})))
    return RewardManager(rewards, weights, max_consecutive_errors)


class RewardManager:
    """Calls every reward on a batch, combines them with their weights, and keeps error counts."""

    def __init__(self, rewards: list[_Reward], weights: list[float], max_consecutive_errors: int) -> None:
        self._rewards = rewards
        self.names: list[str] = [r.name for r in rewards]
        self.weights: list[float] = list(weights)
        self.max_consecutive_errors = max_consecutive_errors

    def __repr__(self) -> str:
        return f"RewardManager(names={self.names}, weights={self.weights})"

    def __call__(self, completions: list[str], samples: list[dict], group_size: int = 1) -> RewardOutput:
        """Score `completions` (consecutive groups of `group_size`, the G completions of one prompt); the
        totals follow `core_algos.group_reward_totals` (with group_size 1: None terms are left out)."""
        if not completions:
            raise ValueError("RewardManager got no completions")
        if len(samples) != len(completions):
            raise ValueError(
                f"RewardManager got {len(completions)} completions but {len(samples)} samples; "
                "pass one sample dict per completion"
            )
        n = len(completions)
        fields = _columns(samples)
        scores = torch.full((n, len(self._rewards)), float("nan"), dtype=torch.float32)  # [N, F]
        metrics: dict[str, float] = {}
        columns: list[list[float | None]] = []
        for f, reward in enumerate(self._rewards):
            clash = sorted(set(fields) & (set(reward.options) | {"completions"}))
            if clash:
                raise ValueError(
                    f"sample field(s) {clash} clash with the arguments of reward {reward.name!r}; "
                    "rename the field or the option"
                )
            values, nonfinite = self._run(reward, completions, fields)
            if values is None:
                values = [None] * n
            else:
                scores[:, f] = torch.tensor([float("nan") if v is None else v for v in values], dtype=torch.float32)
            columns.append(values)
            column = scores[:, f]
            scored = column[~torch.isnan(column)]
            metrics[f"reward/{reward.name}"] = scored.mean().item() if scored.numel() else float("nan")
            metrics[f"reward/{reward.name}_std"] = scored.std(correction=0).item() if scored.numel() else float("nan")
            metrics[f"reward/{reward.name}/none_ratio"] = 1.0 - scored.numel() / n
            metrics[f"reward/{reward.name}/errors"] = float(reward.errors)
            metrics[f"reward/{reward.name}/nonfinite"] = float(nonfinite)
        weights = torch.tensor(self.weights, dtype=torch.float32)  # [F]
        total = group_reward_totals(scores, weights, group_size)  # [N], NaN where it cannot be computed
        scored = total[~torch.isnan(total)]
        metrics["reward/total"] = scored.mean().item() if scored.numel() else float("nan")
        metrics["reward/total_std"] = scored.std(correction=0).item() if scored.numel() else float("nan")
        metrics["reward/total/none_ratio"] = 1.0 - scored.numel() / n
        per_sample = [dict(zip(self.names, row)) for row in zip(*columns)]
        return RewardOutput(scores=scores, total=total, metrics=metrics, per_sample=per_sample)

    def _run(
        self, reward: _Reward, completions: list[str], fields: dict[str, list]
    ) -> tuple[list[float | None] | None, int]:
        """(scores with NaN/inf turned into None, how many were NaN/inf); (None, 0) if the reward failed."""
        try:
            raw = reward.fn(list(completions), **{k: list(v) for k, v in fields.items()}, **reward.options)
            values, nonfinite = _check_values(raw, len(completions))
        except Exception as exc:  # a reward is user code: any failure is counted, not fatal at once
            reward.errors += 1
            reward.consecutive += 1
            logger.warning(
                "reward %r failed on this batch (%d in a row, limit %d): %s: %s; its scores are None",
                reward.name,
                reward.consecutive,
                self.max_consecutive_errors,
                type(exc).__name__,
                exc,
            )
            if reward.consecutive >= self.max_consecutive_errors:
                raise RewardError(
                    f"reward {reward.name!r} failed on {reward.consecutive} consecutive batches "
                    f"(last: {type(exc).__name__}: {exc}); fix it, or remove it from reward_funcs"
                ) from exc
            return None, 0
        reward.consecutive = 0
        return values, nonfinite


def _check_values(raw: object, n: int) -> tuple[list[float | None], int]:
    if isinstance(raw, (str, bytes)) or not isinstance(raw, (list, tuple)):
        raise TypeError(f"returned {type(raw).__name__}, expected a list of {n} floats or None")
    if len(raw) != n:
        raise ValueError(f"returned {len(raw)} scores for {n} completions")
    values: list[float | None] = []
    nonfinite = 0
    for v in raw:
        if v is None:
            values.append(None)
            continue
        if isinstance(v, (str, bytes)):
            raise TypeError("returned a string among its scores, expected float or None")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise TypeError(f"returned a {type(v).__name__} among its scores, expected float or None") from None
        if math.isfinite(x) and abs(x) <= _FLOAT32_MAX:
            values.append(x)
        else:
            nonfinite += 1
            values.append(None)
    return values, nonfinite


def _columns(samples: list[dict]) -> dict[str, list]:
    """Per-completion dicts -> keyword lists aligned with completions (None where a sample lacks a field)."""
    keys: dict[str, None] = {}
    for i, sample in enumerate(samples):
        if not isinstance(sample, dict):
            raise ValueError(f"sample {i} is a {type(sample).__name__}, expected a dict of fields")
        keys.update(dict.fromkeys(sample))
    return {k: [s.get(k) for s in samples] for k in keys}


def _check_weights(names: list[str], weights: list[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(names)
    if isinstance(weights, (str, bytes)) or not isinstance(weights, (list, tuple)) or len(weights) != len(names):
        raise ValueError(
            f"reward_weights must list one number per reward in reward_funcs {list(names)}, got {weights!r}"
        )
    for name, w in zip(names, weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"reward_weights: the weight of {name!r} must be a finite number, got {w!r}")
    return [float(w) for w in weights]


def _check_options(name: str, fn: Callable, options: dict) -> dict[str, object]:
    """Check options against fn's keyword-only parameters, then let fn.prepare_options convert them."""
    if not isinstance(options, dict):
        raise ValueError(f"reward_kwargs[{name!r}] must be a dict of options, got {type(options).__name__}")
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"reward {name!r}: cannot read its signature ({exc}); use a plain Python function") from exc
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        raise ValueError(f"reward {name!r} must accept **kwargs so that sample fields it does not use are ignored")
    keyword_only = {p.name: p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    valid = sorted(keyword_only)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"reward {name!r}: unknown option(s) {unknown}; valid options are {valid}")
    required = sorted(k for k, p in keyword_only.items() if p.default is inspect.Parameter.empty and k not in options)
    if required:
        raise ValueError(f"reward {name!r} needs option(s) {required}; set them in reward_kwargs: {{{name}: {{...}}}}")
    prepare = getattr(fn, "prepare_options", None)
    if prepare is None or not options:
        return dict(options)
    try:
        return dict(prepare(**options))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"reward {name!r}: bad option: {exc}") from exc


def effective_reward_kwargs(cfg) -> dict:
    """A training config's `reward_kwargs`, with its `judge:` section handed to `people_focus` when enabled.

    The judge is configured in one place (`config.JudgeConfig`, the `judge:` section); the reward receives its
    settings as a mapping (never the key itself, only `api_key_env`, the name of the variable read at call time).
    """
    import dataclasses

    out = {name: dict(opts) for name, opts in (cfg.reward_kwargs or {}).items()}
    if cfg.judge.enabled and "people_focus" in cfg.reward_funcs:
        settings = {f.name: getattr(cfg.judge, f.name) for f in dataclasses.fields(cfg.judge) if f.name != "enabled"}
        out.setdefault("people_focus", {})["judge"] = settings
    return out
