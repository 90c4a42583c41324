"""Rewards: built-in reward functions, their registry, and the manager that combines them.

Contract (as TRL): ``fn(completions: list[str], **sample_fields) -> list[float | None]``. Sample fields
(``answer``, ``options``, ``problem_type``, ``id``, …) arrive as lists aligned with ``completions``;
unknown fields are accepted and ignored. ``None`` means "cannot score". Options from config
(``reward_kwargs``) are the function's keyword-only parameters.

``REWARDS`` maps the built-in names to functions; any other reward is named ``"package.module:function"``.
``build_reward_manager`` (in ``manager``, which imports torch) is loaded on first use.
"""

from .accuracy import accuracy_reward
from .format import format_reward
from .people_focus import people_focus_reward

REWARDS = {
    "format": format_reward,
    "accuracy": accuracy_reward,
    "people_focus": people_focus_reward,
}

_FROM_MANAGER = (
    "RewardError",
    "RewardManager",
    "RewardOutput",
    "build_reward_manager",
    "check_reward_names",
    "effective_reward_kwargs",
    "resolve_reward",
)

__all__ = ["REWARDS", "accuracy_reward", "format_reward", "people_focus_reward", *_FROM_MANAGER]


def __getattr__(name: str):
    if name in _FROM_MANAGER:
        from . import manager

        return getattr(manager, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
