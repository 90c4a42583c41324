"""Format reward: is the completion exactly the configured sequence of tagged sections?

Definition. With ``tags = [t_1, …, t_n]`` (default ``["context", "think", "answer"]``, the stage-4
layout; ``["think", "answer"]`` is the R1 layout) a completion scores **1.0** when it is

    <t_1>…</t_1> <t_2>…</t_2> … <t_n>…</t_n>

that is: every tag exactly once, in this order; every section's content holds a non-whitespace
character and no configured tag (``<t_i>`` or ``</t_i>``); nothing but whitespace before, between or
after the sections. Tags are case-sensitive and take no attributes. Anything else scores **0.0**.

Partial credit (off by default). With ``partial_credit = p`` in (0, 1), a completion that is not
well formed scores ``p × k / n`` instead of 0, where k counts the tags that occur exactly once as an
opening tag followed by its closing tag with non-empty content between them, wherever they are.
A well-formed completion still scores 1.0, so full structure always beats any partial structure.

The format reward always scores (never ``None``); sample fields are accepted and ignored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

DEFAULT_TAGS = ("context", "think", "answer")

_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def prepare_options(**options: object) -> dict[str, object]:
    """Validate format options given in config; return them normalised (raises ValueError)."""
    out: dict[str, object] = dict(options)
    if "tags" in options:
        out["tags"] = _check_tags(options["tags"])
    if "partial_credit" in options:
        out["partial_credit"] = _check_partial_credit(options["partial_credit"])
    return out


def format_reward(
    completions: list[str],
    *,
    tags: Sequence[str] = DEFAULT_TAGS,
    partial_credit: float = 0.0,
    **sample_fields: object,
) -> list[float | None]:
    """1.0 for a completion that is exactly the tagged sections ``tags`` in order, else 0.0 (or partial credit)."""
    tags = _check_tags(tags)
    partial_credit = _check_partial_credit(partial_credit)
    scores: list[float | None] = []
    for text in completions:
        text = text if isinstance(text, str) else ""
        if is_well_formed(text, tags):
            scores.append(1.0)
        elif partial_credit > 0.0:
            scores.append(partial_credit * _count_sections(text, tags) / len(tags))
        else:
            scores.append(0.0)
    return scores


format_reward.prepare_options = prepare_options


def is_well_formed(text: str, tags: Sequence[str] = DEFAULT_TAGS) -> bool:
    """True when ``text`` is exactly ``<t>…</t>`` for each tag in order, non-empty, whitespace between."""
    markers = [m for tag in tags for m in (f"<{tag}>", f"</{tag}>")]
    pos = _skip_space(text, 0)
    for tag in tags:
        opening, closing = f"<{tag}>", f"</{tag}>"
        if not text.startswith(opening, pos):
            return False
        start = pos + len(opening)
        end = text.find(closing, start)
        if end < 0:
            return False
        body = text[start:end]
        if not body.strip() or any(m in body for m in markers):
            return False
        pos = _skip_space(text, end + len(closing))
    return pos == len(text)


def _count_sections(text: str, tags: Sequence[str]) -> int:
    """Number of tags present exactly once as ``<t>`` then ``</t>`` with non-empty content between."""
    count = 0
    for tag in tags:
        opening, closing = f"<{tag}>", f"</{tag}>"
        if text.count(opening) != 1 or text.count(closing) != 1:
            continue
        start = text.index(opening) + len(opening)
        end = text.index(closing)
        if end >= start and text[start:end].strip():
            count += 1
    return count


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _check_tags(tags: object) -> tuple[str, ...]:
    if isinstance(tags, str) or not isinstance(tags, Sequence) or not tags:
        raise ValueError(
            f"format option 'tags' must be a non-empty list of tag names such as ['think', 'answer'], got {tags!r}"
        )
    for tag in tags:
        if not isinstance(tag, str) or not _TAG_NAME.fullmatch(tag):
            raise ValueError(
                f"format option 'tags' holds {tag!r}; a tag name is letters, digits, '_' or '-' (no '<', '>')"
            )
    if len(set(tags)) != len(tags):
        raise ValueError(f"format option 'tags' repeats a tag: {list(tags)!r}")
    return tuple(tags)


def _check_partial_credit(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"format option 'partial_credit' must be a number in [0, 1) (0 turns it off), got {value!r}")
    return float(value)
