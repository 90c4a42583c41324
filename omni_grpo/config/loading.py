"""Loading and saving a training config: a YAML file plus `key=value` overrides, with did-you-mean errors.

    cfg = load_config("configs/stage4.yaml", ["learning_rate=5e-7", "lora.enabled=true"])

Values are parsed as YAML (`true`, `1e-6`, `[a, b]`, `null`), nested keys are joined with dots. A
misspelled key, in a file or an override, is an error that names the closest valid key. Reward names are
not resolved here (a config builds without torch or the reward modules): the commands call
`omni_grpo.rewards.check_reward_names` after loading.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from omni_grpo.config.convert import ConfigError, _check_keys, _field_type, _is_optional
from omni_grpo.config.schema import TrainConfig


@functools.cache
def _yaml_loader() -> type:
    """yaml.SafeLoader that also reads `1e-6` as a float (YAML 1.2), not as the string PyYAML makes of it."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass


def _parse_override(item: str) -> tuple[list[str], Any]:
    text = item[2:] if item.startswith("--") else item
    key, sep, raw_value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key=value, e.g. learning_rate=1e-6 or lora.r=8")
    path = key.split(".")
    if any(not part for part in path):
        raise ConfigError(f"override {item!r} has an empty key part; write nested keys as section.key=value")
    tp = _field_type(TrainConfig, path)
    try:
        value = _parse_yaml(raw_value)
    except yaml.YAMLError:
        value = raw_value
    plain_str = tp is str or (_is_optional(tp) and str in typing.get_args(tp))
    if plain_str and value is not None and not isinstance(value, str):
        value = raw_value  # e.g. system_prompt=Answer: yes — a string, not a mapping
    return path, value


def _nest(path: list[str], value: Any) -> dict:
    for part in reversed(path):
        value = {part: value}
    return value


def _merge(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def load_config(path: str | os.PathLike | None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a YAML file (or nothing, if `path` is None), apply `key=value` overrides, return a validated config.

    Overrides are applied in order, after the file; nested sections merge key by key.
    """
    raw: dict = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(
                f"config file {str(path)!r} not found; pass the path of a YAML file such as configs/stage4.yaml"
            )
        try:
            loaded = _parse_yaml(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of option: value, got {type(loaded).__name__}")
        _check_keys(loaded, TrainConfig, "", where=f" in {path}")
        raw = loaded
    if isinstance(overrides, str):
        overrides = [overrides]
    for item in overrides:
        key_path, value = _parse_override(item)
        update = _nest(key_path, value)
        _check_keys(update, TrainConfig, "", where=f" in override {item!r}")
        _merge(raw, update)
    return TrainConfig(**raw)


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain dict of every option (nested sections as dicts), as `save_config` writes it."""
    return dataclasses.asdict(cfg)


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """Write the full config as YAML; `load_config(path)` gives it back. Holds no secret (see JudgeConfig)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    header = "# Full omni-grpo training config, written by omni_grpo.config.save_config.\n"
    body = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True, width=120)
    target.write_text(header + body, encoding="utf-8")
