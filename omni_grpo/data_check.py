"""Checks of the training data's own facts before any model is loaded: every sample's prompt length against
`max_prompt_length` (from the counts `python -m preprocess` stores per sample), the model family the shards were
sized for (`--family`: its pixel grid and token counts) against the one being trained, and the `problem_type`
spellings the accuracy reward does not know.

A prompt longer than `max_prompt_length` stops the run here, with the count, the longest and both fixes, rather
than at the step that first draws it; with `skip_long_prompts` those samples are left out instead (counted and
logged). Version-1 shards carry no counts: their check is skipped, with a line saying so. The media counts are
what preprocess stored; the text (system prompt, question, options) is counted again here with the model's own
tokenizer (`exact_token_lists`): preprocess estimates it unless given `--tokenizer`, and an estimate is not an
upper bound for every text. `build_inputs` still refuses a prompt that turns out longer, naming the sample.

Outside `omni_grpo.config` because it reads shards (`preprocess.shards`), the model's family (`omni_grpo.models`)
and the accuracy reward's problem types (`omni_grpo.rewards`): a config builds without any of them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from omni_grpo.config.convert import ConfigError

logger = logging.getLogger("omni_grpo")


@dataclass
class PromptLengths:
    """Which samples (global indices over `data`, in order) are longer than the limit."""

    over: list[int] = field(default_factory=list)
    longest: int = 0
    unchecked: list[str] = field(default_factory=list)  # shard directories without per-sample counts


def find_long_prompts(dirs: list[str], token_lists: list[list[int | None]], limit: int) -> PromptLengths:
    """The samples of `token_lists` (one list per directory, in dataset order) longer than `limit` tokens."""
    out, offset = PromptLengths(), 0
    for shard_dir, tokens in zip(dirs, token_lists):
        if any(t is None for t in tokens):
            out.unchecked.append(str(shard_dir))
        for i, n in enumerate(tokens):
            if n is not None:
                out.longest = max(out.longest, int(n))
                if n > limit:
                    out.over.append(offset + i)
        offset += len(tokens)
    return out


def long_prompt_message(found: PromptLengths, total: int, limit: int) -> str:
    """One line: how many exceed the limit, the longest, and the two fixes."""
    return (
        f"{len(found.over)} of {total} samples have prompts longer than max_prompt_length={limit} tokens "
        f"(the longest is {found.longest}, its text counted with the model's tokenizer); re-run python -m "
        f"preprocess with --max-prompt-tokens {limit} --tokenizer MODEL_DIR to fit them, raise max_prompt_length "
        f"to {found.longest} or more, or set skip_long_prompts=true to leave them out"
    )


def exact_token_lists(cfg, token_lists: list[list[int | None]], dirs=None) -> list[list[int | None]]:
    """`token_lists` (preprocess's counts, one list per directory of `dirs`, default `cfg.data`; evaluation passes
    its `--data`) with each sample's text recounted exactly: the model's own tokenizer on this config's system
    prompt and the sample's question, plus the media tokens preprocess stored (its count minus its own text
    count, which was an estimate unless it was given `--tokenizer`, and used the system prompt and answer
    instructions in its manifest). The question closes with this config's `answer_instructions`, as
    `data.Collate` builds it. Unchanged where the model folder has no tokenizer or a manifest records no system
    prompt."""
    from omni_grpo.models.base import format_question
    from omni_grpo.rewards.instructions import instruction
    from preprocess.budget import TextCounter
    from preprocess.shards import load

    def text(sample: dict, instructions: dict | None) -> str:
        return format_question({**sample, "instruction": instruction(sample, instructions)})

    system_prompt, model_dir = getattr(cfg, "system_prompt", None), getattr(cfg, "model_name_or_path", None)
    if system_prompt is None or model_dir is None:
        return token_lists
    try:
        exact = TextCounter(system_prompt, model_dir)
    except (OSError, ValueError):
        return token_lists
    instructions, out = getattr(cfg, "answer_instructions", None), []
    for shard_dir, stored in zip(cfg.data if dirs is None else dirs, token_lists):
        try:
            options = json.loads((Path(shard_dir) / "manifest.json").read_text(encoding="utf-8")).get("options") or {}
        except (OSError, ValueError):
            options = {}
        if options.get("system_prompt") is None or all(n is None for n in stored):
            out.append(stored)
            continue
        used = TextCounter(options["system_prompt"], model_dir if options.get("tokenizer") else None)
        stored_instructions = options.get("answer_instructions")
        reader = load(shard_dir, verify=False, skip_corrupt=getattr(cfg, "skip_corrupt_shards", False))
        samples = [sample for block in reader._iter_samples() for sample in block]  # metadata only, no media
        out.append(
            [
                None if n is None else n - used.count(text(s, stored_instructions)) + exact.count(text(s, instructions))
                for n, s in zip(stored, samples)
            ]
        )
    return out


def check_data(cfg, token_lists: list[list[int | None]] | None = None, *, report: bool = True) -> PromptLengths:
    """Check `cfg.data` (token counts read from the shards when `token_lists` is None, no media read).

    Raises ConfigError for over-long prompts unless `cfg.skip_long_prompts`, and for shards of another model
    family. With `report`, logs the skipped count, the directories without counts and the unknown problem types;
    a caller whose check another one repeats later in the same process (`train.py` before the trainer's) passes
    `report=False`, so that each line is logged once.
    """
    lines = []
    if token_lists is None:
        from preprocess.shards import load

        skip = getattr(cfg, "skip_corrupt_shards", False)
        token_lists = [load(d, verify=False, skip_corrupt=skip).prompt_tokens for d in cfg.data]
    found = find_long_prompts(cfg.data, exact_token_lists(cfg, token_lists), cfg.max_prompt_length)
    total = sum(len(t) for t in token_lists)
    if found.over and not cfg.skip_long_prompts:
        raise ConfigError(long_prompt_message(found, total, cfg.max_prompt_length))
    if found.over:
        lines.append(
            f"skip_long_prompts: leaving out {len(found.over)} of {total} samples longer than "
            f"max_prompt_length={cfg.max_prompt_length} (the longest is {found.longest})"
        )
    if found.unchecked:
        lines.append(
            "prompt length check skipped for " + ", ".join(found.unchecked) + " (shards written before "
            "per-sample token counts; re-run python -m preprocess to have them checked)"
        )
    check_family(cfg)
    if report:
        lines += unknown_problem_type_lines(cfg.data)
        for line in lines:
            logger.warning(line)
    return found


def shard_families(dirs: list[str]) -> dict[str, str]:
    """Shard directory -> the `--family` its manifest records (directories written before the field: absent)."""
    out = {}
    for shard_dir in dirs:
        try:
            manifest = json.loads((Path(shard_dir) / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # check_paths reports an unreadable manifest
        family = (manifest.get("options") or {}).get("family")
        if family:
            out[str(shard_dir)] = family
    return out


def check_family(cfg) -> None:
    """ConfigError when shards were preprocessed for another model family than the one trained: their frames sit
    on that family's pixel grid (28 px for Qwen2.5-Omni, 32 px for Qwen3-Omni) and its processor would refuse or
    mis-count them at the first step."""
    family = cfg.model_family
    if family == "auto":
        from omni_grpo.models import detect_family

        try:
            family = detect_family(cfg.model_name_or_path)
        except (FileNotFoundError, ValueError):
            return  # check_paths reports the model directory
    wrong = {d: f for d, f in shard_families(cfg.data).items() if f != family}
    if wrong:
        shard_dir, other = next(iter(wrong.items()))
        more = f" (and {len(wrong) - 1} more data folders)" if len(wrong) > 1 else ""
        raise ConfigError(
            f"data folder {shard_dir} was preprocessed for {other}{more} but the model is {family}; "
            f"re-run python -m preprocess with --family {family}, or train a {other} model"
        )


def unknown_problem_types(dirs: list[str]) -> dict[str, int]:
    """Spellings of `problem_type` in the manifests that the accuracy reward does not recognise, with counts."""
    from omni_grpo.rewards.accuracy import normalise_problem_type

    unknown: dict[str, int] = {}
    for shard_dir in dirs:
        try:
            manifest = json.loads((Path(shard_dir) / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # check_paths reports an unreadable manifest
        types = manifest.get("problem_types") or {}
        for group in ("matched", "unknown"):
            for spelling, n in (types.get(group) or {}).items():
                if normalise_problem_type(spelling) is None:
                    unknown[spelling] = unknown.get(spelling, 0) + int(n)
    return unknown


def unknown_problem_type_lines(dirs: list[str]) -> list[str]:
    """One warning for all unknown spellings, with the list of known ones (none when all are known)."""
    from omni_grpo.rewards.accuracy import describe_known_problem_types

    unknown = unknown_problem_types(dirs)
    if not unknown:
        return []
    listed = ", ".join(f"{k!r} ({n} samples)" for k, n in sorted(unknown.items()))
    return [
        f"unknown problem_type in the data: {listed}; the accuracy reward scores them None. Known types: "
        f"{describe_known_problem_types()}"
    ]
