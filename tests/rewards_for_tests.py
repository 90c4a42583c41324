"""Rewards used by tests: the built-ins give a random tiny model identical scores within a group (zero
advantages, zero gradient), which would make "parameters changed" tests vacuous."""


def length_reward(completions, **kwargs):
    """Longer completions score higher (differs between samples of a random model)."""
    return [min(len(c), 200) / 200.0 for c in completions]


def raising_reward(completions, **kwargs):
    raise RuntimeError("judge unavailable")
