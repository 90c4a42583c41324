"""The answer instruction that ends a question's prompt: what shape of answer its problem type asks for.

One sentence per accuracy matcher (``accuracy.PROBLEM_TYPES``), so the prompt asks for exactly what the
``accuracy`` reward scores:

- ``multiple_choice``: "Answer with the letter of the correct option."
- ``multi_label``: every correct letter, comma-separated (HumanOmniV2 asks its ``emer_ov_mc`` questions
  for "the single or multiple option letter (e.g., A for single option or A,E for multi option)").
- ``yes_no``: "Answer yes or no."
- ``numeric``: a number.
- ``free_text``: a short answer in words.

``instruction(sample)`` picks the sentence by the sample's ``problem_type`` (any spelling
``accuracy.normalise_problem_type`` knows); a sample whose type is missing or unknown gets the
multiple-choice sentence when it has options, else none. ``overrides`` (the config's
``answer_instructions``: matcher name -> text, "" for no instruction) replaces sentences. The same function
serves the training prompt, the evaluation prompt and preprocess's prompt-token budget, so the three
always hold the same text.
"""

from __future__ import annotations

from collections.abc import Mapping

from .accuracy import PROBLEM_TYPES, normalise_problem_type

DEFAULT_INSTRUCTIONS: dict[str, str] = {
    "multiple_choice": "Answer with the letter of the correct option.",
    "multi_label": "Answer with the letters of all correct options, separated by commas (e.g. A,C).",
    "yes_no": "Answer yes or no.",
    "numeric": "Answer with a number.",
    "free_text": "Answer in a few words.",
}


def check_instructions(overrides: Mapping[str, str] | None) -> dict[str, str]:
    """The overrides, validated: keys are matcher names, values strings; raises ValueError saying what to fix."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise ValueError(
            f"answer_instructions must map a problem type to its instruction, got {type(overrides).__name__}"
        )
    for key, text in overrides.items():
        if key not in PROBLEM_TYPES:
            raise ValueError(f"answer_instructions: {key!r} is not a problem type; use one of {list(PROBLEM_TYPES)}")
        if not isinstance(text, str):
            raise ValueError(f"answer_instructions.{key} must be a string ('' for none), got {type(text).__name__}")
    return dict(overrides)


def check_config_instructions(cfg) -> None:
    """ConfigError when the config's `answer_instructions` names no matcher or holds a non-string (called by the
    commands after `load_config`, as `check_reward_names`)."""
    from omni_grpo.config import ConfigError

    try:
        check_instructions(cfg.answer_instructions)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def problem_kind(sample: Mapping) -> str | None:
    """The matcher a sample's instruction follows: its problem type's, else multiple choice when it has options."""
    kind = normalise_problem_type(sample.get("problem_type"))
    if kind is None and sample.get("options"):
        return "multiple_choice"
    return kind


def instruction(sample: Mapping, overrides: Mapping[str, str] | None = None) -> str:
    """The answer instruction for `sample` ("" when its problem type is unknown and it has no options)."""
    kind = problem_kind(sample)
    if kind is None:
        return ""
    if overrides and kind in overrides:
        return overrides[kind].strip()
    return DEFAULT_INSTRUCTIONS[kind]
