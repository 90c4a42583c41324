"""Training configuration: documented dataclasses, YAML files and `key=value` command-line overrides.

    cfg = load_config("configs/stage4.yaml", ["learning_rate=5e-7", "lora.enabled=true"])

The package, one job per module:
  schema.py     TrainConfig, LoraConfig, JudgeConfig: one help string per field, validation in __post_init__
  convert.py    YAML values to declared types; unknown keys to did-you-mean errors
  loading.py    load_config (YAML + overrides), save_config, config_to_dict
  paths.py      check_paths: model, shard and checkpoint directories before anything is loaded
  reference.py  reference_markdown(), the source of docs/config_reference.md (`python -m omni_grpo.config`)

None of them imports torch, the reward modules or `preprocess`: reward names are resolved by
`omni_grpo.rewards.check_reward_names`, the data's own facts checked by `omni_grpo.data_check.check_data`.
"""

from omni_grpo.config.convert import ConfigError
from omni_grpo.config.loading import config_to_dict, load_config, save_config
from omni_grpo.config.paths import check_paths
from omni_grpo.config.reference import reference_markdown
from omni_grpo.config.schema import DEFAULT_SYSTEM_PROMPT, JudgeConfig, LoraConfig, TrainConfig

__all__ = [
    "ConfigError",
    "DEFAULT_SYSTEM_PROMPT",
    "JudgeConfig",
    "LoraConfig",
    "TrainConfig",
    "check_paths",
    "config_to_dict",
    "load_config",
    "reference_markdown",
    "save_config",
]
