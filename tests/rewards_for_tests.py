"""Rewards used by tests: the built-ins give a random tiny model identical scores within a group (zero
advantages, zero gradient), which would make "parameters changed" tests vacuous."""


def length_reward(completions, **kwargs):
    """Longer completions score higher (differs between samples of a random model)."""
    return [min(len(c), 200) / 200.0 for c in completions]


def raising_reward(completions, **kwargs):
    raise RuntimeError("judge unavailable")


def flaky_judge(completions, **kwargs):
    """`length_reward`, but it "cannot score" (None) every third completion, like a judge call that failed."""
    return [None if i % 3 == 0 else s for i, s in enumerate(length_reward(completions))]
