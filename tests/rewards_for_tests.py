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


def half_constant_reward(completions, id, **kwargs):
    """Constant (0.5) for every prompt `constant_prompt` picks, alternating 0 / 1 within a group otherwise: some
    groups have no reward spread, the others always have one (for dynamic sampling)."""
    return [0.5 if constant_prompt(i) else float(k % 2) for k, i in enumerate(id)]


def constant_prompt(sample_id) -> bool:
    """Prompts whose id ends in an even digit (every other question of a synthetic Social-IQ 2.0 clip), or
    in "audio" (the clip with sound of test_distributed's two-clip data: one rank's prompt, not the other's)."""
    return str(sample_id).endswith(("0", "2", "4", "6", "8", "audio"))


def constant_reward(completions, **kwargs):
    """The same score for everything: every group is constant."""
    return [0.5 for _ in completions]
