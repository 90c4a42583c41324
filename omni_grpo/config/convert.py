"""Value conversion and key checking for the config dataclasses: YAML values to declared types, and
misspelled keys to errors that name the closest valid key (`did you mean ...?`).

Home-made rather than pydantic / OmegaConf / dacite: those convert types but none names the closest key of
a nested section or maps other trainers' key names (`_RENAMED`), so each would need this module's error
layer anyway, plus a dependency.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, misspelled or invalid; the message says what to change."""


# Keys of other trainers (TRL GRPOConfig, verl) that people type out of habit, mapped to ours.
_RENAMED = {
    "per_device_train_batch_size": "per_device_prompts",
    "num_train_epochs": "num_epochs",
    "epsilon": "clip_low",
    "epsilon_high": "clip_high",
    "loss_type": "loss_agg",
    "scale_rewards": "advantage_scale",
    "lr": "learning_rate",
    "lr_scheduler_type": "lr_scheduler",
    "max_new_tokens": "max_completion_length",
    "kl_coef": "beta",
    "entropy_coeff": "entropy_coef",
    "ref_model_sync_steps": "ref_sync_steps",
    "ref_model_mixup_alpha": "ref_sync_alpha",
    "use_peft": "lora.enabled",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce_fields(obj: Any) -> None:
    """Convert every field of a config dataclass to its declared type, or raise ConfigError."""
    section = getattr(obj, "_section", "")
    prefix = f"{section}." if section else ""
    hints = _hints(type(obj))
    for f in dataclasses.fields(type(obj)):
        value = _coerce(getattr(obj, f.name), hints[f.name], prefix + f.name, type(obj))
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(
                f"{prefix}{f.name}={value!r} is not one of {', '.join(choices)}"
                f"{_did_you_mean(str(value), list(choices))}"
            )
        setattr(obj, f.name, value)


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _coerce(value: Any, tp: Any, name: str, root: type) -> Any:
    """`value` as type `tp`; `root` is the outermost config class, whose keys a misspelled nested key is
    matched against."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_optional(tp):
        if value is None or (isinstance(value, str) and value in ("None", "none", "null")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name, root)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if value is None:
            return tp()
        if not isinstance(value, dict):
            raise ConfigError(
                f"{name} must be a mapping of its options (e.g. {name}.KEY=VALUE), got {_describe(value)}"
            )
        _check_keys(value, tp, f"{name}.", where="", root=root)
        return tp(**value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {_describe(value)}")
        if isinstance(value, int):
            return value
        number = _to_float(value)
        if number is not None and number.is_integer():
            return int(number)
        raise ConfigError(f"{name} must be an integer, got {_describe(value)}")
    if tp is float:
        number = None if isinstance(value, bool) else _to_float(value)
        if number is None:
            raise ConfigError(f"{name} must be a number, got {_describe(value)}")
        if not math.isfinite(number):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name} must be a string, got {_describe(value)}")
    if origin is list:
        if value is None:
            return []
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list such as [a, b], got {_describe(value)}")
        return [_coerce(item, args[0], f"{name}[{i}]", root) for i, item in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping such as {{key: value}}, got {_describe(value)}")
        return {
            _coerce(k, args[0], f"{name} key", root): _coerce(v, args[1], f"{name}.{k}", root) for k, v in value.items()
        }
    raise TypeError(f"config field {name} has an unsupported type {tp!r}")


def _to_float(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


# ------------------------------------------------------------------------------------------------ key names


def _all_paths(cls: type, prefix: str = "") -> list[str]:
    paths = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        paths.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            paths.extend(_all_paths(hints[f.name], f"{prefix}{f.name}."))
    return paths


def _did_you_mean(key: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _unknown_key(cls: type, prefix: str, key: str, where: str, root: type) -> ConfigError:
    full = prefix + str(key)
    local = [f.name for f in dataclasses.fields(cls)]
    hint = ""
    if full in _RENAMED:
        hint = f"; did you mean {_RENAMED[full]!r}?"
    if not hint:
        match = difflib.get_close_matches(str(key), local, n=1, cutoff=0.6)
        hint = f"; did you mean {prefix + match[0]!r}?" if match else ""
    if not hint:
        paths = _all_paths(root)
        nested = [p for p in paths if "." in p and p.rsplit(".", 1)[1] == str(key)]
        hint = f"; did you mean {nested[0]!r}?" if nested else _did_you_mean(full, paths)
    if not hint:
        hint = "; see docs/config_reference.md for every option"
    return ConfigError(f"unknown config key {full!r}{where}{hint}")


def _check_keys(raw: dict, cls: type, prefix: str, where: str, root: type | None = None) -> None:
    """Reject keys that are not fields of `cls` (recursively for nested config sections); a key found in no
    section of `cls` is matched against every key of `root` (default: `cls`), the outermost config class."""
    root = root or cls
    names = {f.name for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    for key, value in raw.items():
        if key not in names:
            raise _unknown_key(cls, prefix, key, where, root)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if isinstance(value, dict):
                _check_keys(value, tp, f"{prefix}{key}.", where, root)
        elif isinstance(value, dict) and typing.get_origin(tp) is not dict:
            raise ConfigError(
                f"{prefix}{key}{where} is an option, not a section with sub-keys; set it as {prefix}{key}=VALUE"
            )


def _field_type(root: type, path: list[str]) -> Any:
    """Declared type at a dotted path of config class `root`, or None if the path leads into a free-form
    mapping."""
    cls: Any = root
    tp: Any = None
    for part in path:
        if not dataclasses.is_dataclass(cls):
            return None
        tp = _hints(cls).get(part)
        if tp is None:
            return None
        cls = tp
    return tp
