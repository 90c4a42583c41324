"""The bench's rewards for ms-swift: ``format`` and ``accuracy`` of ``omni_grpo.rewards`` as ms-swift ORMs.

Loaded by ``swift rlhf --external_plugins bench/swift_plugin.py --reward_funcs omni_format omni_accuracy``
inside the ms-swift environment (``bench/swift_system.py`` puts the repository on its ``PYTHONPATH``). The
dataset rows carry ``solution`` (the answer letter), ``options`` and ``problem_type``; ms-swift passes them as
lists aligned with the completions.
"""

from __future__ import annotations

from swift.rewards import ORM, orms

from omni_grpo.rewards import REWARDS


def _fields(kwargs: dict) -> dict:
    return {
        "answer": kwargs.get("solution"),
        "options": kwargs.get("options"),
        "problem_type": kwargs.get("problem_type"),
    }


class OmniFormat(ORM):
    def __call__(self, completions, **kwargs) -> list[float]:
        return [0.0 if r is None else float(r) for r in REWARDS["format"](completions, **_fields(kwargs))]


class OmniAccuracy(ORM):
    def __call__(self, completions, **kwargs) -> list[float]:
        return [0.0 if r is None else float(r) for r in REWARDS["accuracy"](completions, **_fields(kwargs))]


orms["omni_format"] = OmniFormat
orms["omni_accuracy"] = OmniAccuracy
