"""People-focus reward: is the reasoning grounded in the people in the clip?

It rewards reasoning that says what the people do (face, gaze, gesture, posture), how they sound
(tone, pitch, laughter, pauses), what they say and to whom, and what that implies socially
(emotion, intent, relationship) — rather than generic text that could be written without the clip.

Definition, for one completion:

1. Reasoning text. The content of the first ``<s>…</s>`` pair for every ``s`` in ``sections``
   (default ``["context", "think"]``); any ``<answer>…</answer>`` span inside is removed. The answer
   section is never scored. If any configured section is missing or holds only whitespace: **0.0**.
2. Cues. ``lexicons`` maps each category to its cue terms (defaults: ``DEFAULT_LEXICONS``, four
   categories ``visual``, ``vocal``, ``speech``, ``social``). A term matches case-insensitively as whole
   words, with simple English inflections (``smile`` matches smiles, smiled, smiling; ``nod`` matches
   nodding; ``eye contact`` matches across whitespace). In ``speech``, a quoted span of two or more words
   ("…" or “…”) also counts, as the cue ``<quote>`` (``count_quotes``). Phrases in ``ignore_phrases``
   (default: "the question asks" and the like, which describe the task, not the people) are removed
   before matching. Each distinct cue counts once, however often it appears.
3. Anti-gaming. Cue density = words inside cue matches / all words. If density > ``max_cue_density``
   (default 0.5: the text is mostly a list of cue words) or the repeated-phrase ratio
   ``1 − distinct word trigrams / all word trigrams`` > ``max_repeat_ratio`` (default 0.3): **floor**.
4. Score = ``floor + (1 − floor) × covered / n_categories``, where a category is covered when at
   least ``min_cues_per_category`` (default 1) distinct cues of it occur. ``floor`` defaults to 0.1.

So the score lies in {0} ∪ [floor, 1]: 0 means no reasoning, floor means reasoning with no people cues
(or gamed), 1.0 means every category is covered. Never ``None`` unless the judge is used.

Judge (optional, off by default). With ``judge`` set (a dict of ``judge.JudgeConfig`` fields, a
``JudgeConfig``, or a ``JudgeClient``), steps 1 and 3 still apply locally (0 and floor cost no request);
otherwise the judge model rates the reasoning's grounding from 0 to 10 and the score is
``floor + (1 − floor) × rating / 10``. A failed judge call gives ``None`` (counted as a none, never 0).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_LEXICONS: dict[str, tuple[str, ...]] = {
    "visual": (
        "face",
        "facial",
        "expression",
        "smile",
        "grin",
        "smirk",
        "frown",
        "scowl",
        "grimace",
        "glare",
        "pout",
        "sneer",
        "blush",
        "tear",
        "cry",
        "gaze",
        "glance",
        "stare",
        "eye contact",
        "eyes",
        "eyebrow",
        "eye roll",
        "wink",
        "blink",
        "gesture",
        "body language",
        "posture",
        "lean",
        "slouch",
        "nod",
        "head shake",
        "shake head",
        "shake his head",
        "shake her head",
        "shake their head",
        "shrug",
        "wave",
        "point at",
        "crossed arms",
        "arms crossed",
        "fidget",
        "hug",
        "clap",
        "touch",
    ),
    "vocal": (
        "tone",
        "voice",
        "pitch",
        "volume",
        "loud",
        "quiet",
        "soft",
        "whisper",
        "shout",
        "yell",
        "scream",
        "laugh",
        "laughter",
        "chuckle",
        "giggle",
        "sigh",
        "gasp",
        "groan",
        "pause",
        "hesitation",
        "hesitate",
        "hesitant",
        "stammer",
        "stutter",
        "mumble",
        "murmur",
        "intonation",
        "inflection",
        "emphasis",
        "sarcasm",
        "sarcastic",
        "trembling",
        "vocal",
    ),
    "speech": (
        "say",
        "said",
        "ask",
        "reply",
        "respond",
        "tells",
        "told",
        "joke",
        "comment",
        "remark",
        "admit",
        "insist",
        "complain",
        "exclaim",
        "interrupt",
        "speak",
        "spoke",
        "talk",
        "speaker",
        "listener",
        "conversation",
        "dialogue",
        "statement",
        "quote",
    ),
    "social": (
        "emotion",
        "emotional",
        "feel",
        "felt",
        "feeling",
        "mood",
        "intent",
        "intention",
        "attitude",
        "relationship",
        "friend",
        "friendly",
        "hostile",
        "tension",
        "comfortable",
        "uncomfortable",
        "nervous",
        "anxious",
        "happy",
        "sad",
        "angry",
        "upset",
        "frustrated",
        "annoyed",
        "embarrassed",
        "confused",
        "surprised",
        "excited",
        "bored",
        "amused",
        "disappointed",
        "afraid",
        "scared",
        "confident",
        "shy",
        "awkward",
        "polite",
        "rude",
        "respect",
        "trust",
        "empathy",
        "sympathy",
        "sincere",
        "tease",
        "flirt",
        "conflict",
        "disagree",
        "reassure",
        "affection",
        "jealous",
        "defensive",
        "dismissive",
        "motivation",
        "reaction",
        "react",
        "impress",
        "want",
    ),
}

DEFAULT_IGNORE_PHRASES: tuple[str, ...] = (
    "the question asks",
    "question asks",
    "question is asking",
    "the question says",
    "question says",
    "the options say",
    "options say",
    "the prompt asks",
    "prompt asks",
    "as the question states",
)

QUOTE_CUE = "<quote>"

_QUOTE = re.compile(r"[\"“”]([^\"“”]{1,400}?)[\"“”]")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SECTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_ANSWER_SPAN = re.compile(r"<answer>.*?</answer>", re.DOTALL)


@dataclass(frozen=True)
class PeopleFocusDetail:
    """Why a completion got its score (for tests, debugging and the sample table)."""

    score: float
    reason: str  # "missing_section" | "empty_section" | "cue_density" | "repetition" | "cues" | "judge"
    cues: dict[str, tuple[str, ...]]  # category -> distinct cues found
    cue_density: float
    repeat_ratio: float


def prepare_options(**options: object) -> dict[str, object]:
    """Validate people-focus options given in config; a judge dict becomes one shared JudgeClient."""
    out = dict(options)
    _settings(**{k: v for k, v in options.items() if k != "judge"})
    if options.get("judge") is not None:
        out["judge"] = _judge_client(options["judge"])
    return out


def people_focus_reward(
    completions: list[str],
    *,
    floor: float = 0.1,
    sections: Sequence[str] = ("context", "think"),
    lexicons: Mapping[str, Sequence[str]] | None = None,
    count_quotes: bool = True,
    ignore_phrases: Sequence[str] = DEFAULT_IGNORE_PHRASES,
    max_cue_density: float = 0.5,
    max_repeat_ratio: float = 0.3,
    min_cues_per_category: int = 1,
    judge: object = None,
    **sample_fields: object,
) -> list[float | None]:
    """Per completion: 0 (no reasoning), floor (no people cues or gamed) … 1.0 (all cue categories)."""
    settings = _settings(
        floor=floor,
        sections=sections,
        lexicons=lexicons,
        count_quotes=count_quotes,
        ignore_phrases=ignore_phrases,
        max_cue_density=max_cue_density,
        max_repeat_ratio=max_repeat_ratio,
        min_cues_per_category=min_cues_per_category,
    )
    details = [_score_one(text, settings) for text in completions]
    if judge is None:
        return [d.score for d in details]
    client = _judge_client(judge)
    to_judge = [i for i, d in enumerate(details) if d.reason == "cues"]
    ratings = client.rate([reasoning_text(completions[i], settings.sections) or "" for i in to_judge])
    scores: list[float | None] = [d.score for d in details]
    for i, rating in zip(to_judge, ratings):
        scores[i] = None if rating is None else settings.floor + (1.0 - settings.floor) * rating
    return scores


people_focus_reward.prepare_options = prepare_options


def explain(completion: str, **options: object) -> PeopleFocusDetail:
    """The lexicon score of one completion with the reason and the cues found (no judge)."""
    return _score_one(completion, _settings(**options))


def reasoning_text(completion: str, sections: Sequence[str] = ("context", "think")) -> str | None:
    """The reasoning sections joined by newlines; None if any is missing, "" if any is empty."""
    parts = []
    for name in sections:
        opening, closing = f"<{name}>", f"</{name}>"
        start = completion.find(opening)
        end = completion.find(closing, start + len(opening)) if start >= 0 else -1
        if end < 0:
            return None
        body = _ANSWER_SPAN.sub(" ", completion[start + len(opening) : end]).strip()
        if not body:
            return ""
        parts.append(body)
    return "\n".join(parts)


@dataclass(frozen=True)
class _Settings:
    floor: float
    sections: tuple[str, ...]
    matcher: _Matcher
    max_cue_density: float
    max_repeat_ratio: float
    min_cues_per_category: int


@dataclass(frozen=True)
class _Matcher:
    categories: tuple[str, ...]
    patterns: tuple[re.Pattern, ...]  # one alternation per category
    cue_of: tuple[dict[str, str], ...]  # per category: matched variant -> cue term
    ignore: re.Pattern | None
    count_quotes: bool


def _score_one(completion: object, s: _Settings) -> PeopleFocusDetail:
    text = reasoning_text(completion, s.sections) if isinstance(completion, str) else None
    if not text:
        reason = "missing_section" if text is None else "empty_section"
        return PeopleFocusDetail(0.0, reason, {}, 0.0, 0.0)
    cues, density = _find_cues(text, s.matcher)
    repeat = _repeat_ratio(_WORD.findall(_clean(text)))
    if density > s.max_cue_density:
        return PeopleFocusDetail(s.floor, "cue_density", cues, density, repeat)
    if repeat > s.max_repeat_ratio:
        return PeopleFocusDetail(s.floor, "repetition", cues, density, repeat)
    covered = sum(len(found) >= s.min_cues_per_category for found in cues.values())
    score = s.floor + (1.0 - s.floor) * covered / len(s.matcher.categories)
    return PeopleFocusDetail(score, "cues", cues, density, repeat)


def _find_cues(text: str, m: _Matcher) -> tuple[dict[str, tuple[str, ...]], float]:
    """Distinct cues per category, and the fraction of words that lie inside cue matches."""
    text = _clean(text)
    if m.ignore is not None:
        text = m.ignore.sub(" ", text)
    n_words = len(_WORD.findall(text))
    spans: list[tuple[int, int]] = []
    cues: dict[str, tuple[str, ...]] = {}
    for category, pattern, cue_of in zip(m.categories, m.patterns, m.cue_of):
        found: dict[str, None] = {}
        for hit in pattern.finditer(text):
            found[cue_of[" ".join(hit.group(0).split())]] = None
            spans.append(hit.span())
        if m.count_quotes and category == "speech":
            if any(len(_WORD.findall(q.group(1))) >= 2 for q in _QUOTE.finditer(text)):
                found[QUOTE_CUE] = None
        cues[category] = tuple(found)
    covered_words = sum(len(_WORD.findall(text[a:b])) for a, b in _merge(spans))
    return cues, (covered_words / n_words if n_words else 0.0)


def _repeat_ratio(words: list[str], n: int = 3) -> float:
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def _clean(text: str) -> str:
    return text.lower().replace("’", "'").replace("‘", "'")


def _inflections(word: str) -> set[str]:
    """Simple English inflections of one word: -s/-es, -ed/-d, -ing (with e-drop and doubling), -ly."""
    forms = {word, word + "s", word + "es", word + "ed", word + "ing", word + "ly"}
    if word.endswith("e"):
        forms |= {word + "d", word[:-1] + "ing", word[:-1] + "y"}
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        forms |= {word[:-1] + "ies", word[:-1] + "ied"}
    if len(word) >= 3 and word[-1] not in "aeiouwxy" and word[-2] in "aeiou" and word[-3] not in "aeiou":
        forms |= {word + word[-1] + "ing", word + word[-1] + "ed"}
    return forms


def _variants(term: str) -> set[str]:
    """Forms of a cue term: inflect a single word, or the first and the last word of a phrase."""
    words = term.split()
    if len(words) == 1:
        return _inflections(words[0])
    firsts, lasts = _inflections(words[0]), _inflections(words[-1])
    return {" ".join([first, *words[1:-1], last]) for first in firsts for last in lasts}


@functools.lru_cache(maxsize=16)
def _compile(
    lexicons: tuple[tuple[str, tuple[str, ...]], ...], ignore: tuple[str, ...], count_quotes: bool
) -> _Matcher:
    patterns, cue_of = [], []
    for _, terms in lexicons:
        mapping: dict[str, str] = {}
        for term in terms:
            for variant in _variants(" ".join(_clean(term).split())):
                mapping.setdefault(variant, term)
        alternation = "|".join(
            r"\s+".join(re.escape(w) for w in v.split()) for v in sorted(mapping, key=len, reverse=True)
        )
        patterns.append(re.compile(rf"(?<![\w'])(?:{alternation})(?![\w'])"))
        cue_of.append(mapping)
    ignore_re = None
    if ignore:
        phrases = sorted((" ".join(_clean(p).split()) for p in ignore), key=len, reverse=True)
        alternation = "|".join(r"\s+".join(map(re.escape, p.split())) for p in phrases)
        ignore_re = re.compile(rf"(?<![\w'])(?:{alternation})(?![\w'])")
    return _Matcher(tuple(c for c, _ in lexicons), tuple(patterns), tuple(cue_of), ignore_re, count_quotes)


def _settings(
    floor: float = 0.1,
    sections: Sequence[str] = ("context", "think"),
    lexicons: Mapping[str, Sequence[str]] | None = None,
    count_quotes: bool = True,
    ignore_phrases: Sequence[str] = DEFAULT_IGNORE_PHRASES,
    max_cue_density: float = 0.5,
    max_repeat_ratio: float = 0.3,
    min_cues_per_category: int = 1,
) -> _Settings:
    """Check every option (ValueError naming the option and what is allowed) and compile the lexicons."""
    if not _is_number(floor) or not 0.0 <= floor < 1.0:
        raise ValueError(f"people_focus option 'floor' must be a number in [0, 1), got {floor!r}")
    if isinstance(sections, str) or not isinstance(sections, Sequence) or not sections:
        raise ValueError(f"people_focus option 'sections' must be a non-empty list of tag names, got {sections!r}")
    for name in sections:
        if not isinstance(name, str) or not _SECTION_NAME.fullmatch(name) or name == "answer":
            raise ValueError(
                f"people_focus option 'sections' holds {name!r}; "
                "use reasoning tag names such as 'think' (never 'answer')"
            )
    lexicons = DEFAULT_LEXICONS if lexicons is None else lexicons
    if not isinstance(lexicons, Mapping) or not lexicons:
        raise ValueError("people_focus option 'lexicons' must map category names to lists of cue terms")
    for category, terms in lexicons.items():
        if isinstance(terms, str) or not isinstance(terms, Sequence) or not terms:
            raise ValueError(f"people_focus lexicon {category!r} must be a non-empty list of cue terms, got {terms!r}")
        if not all(isinstance(t, str) and _WORD.search(_clean(t)) for t in terms):
            raise ValueError(f"people_focus lexicon {category!r} holds an empty or non-text term")
    if isinstance(ignore_phrases, str) or not isinstance(ignore_phrases, Sequence):
        raise ValueError("people_focus option 'ignore_phrases' must be a list of phrases (may be empty)")
    if not all(isinstance(p, str) and p.strip() for p in ignore_phrases):
        raise ValueError("people_focus option 'ignore_phrases' holds an empty or non-text phrase")
    for key, value in (("max_cue_density", max_cue_density), ("max_repeat_ratio", max_repeat_ratio)):
        if not _is_number(value) or not (math.isfinite(value) and 0.0 < value <= 1.0):
            raise ValueError(
                f"people_focus option {key!r} must be a number in (0, 1] (1 turns the check off), got {value!r}"
            )
    if not _is_number(min_cues_per_category) or not isinstance(min_cues_per_category, int) or min_cues_per_category < 1:
        raise ValueError(
            f"people_focus option 'min_cues_per_category' must be an integer >= 1, got {min_cues_per_category!r}"
        )
    if not isinstance(count_quotes, bool):
        raise ValueError("people_focus option 'count_quotes' must be true or false")
    frozen = tuple((str(c), tuple(terms)) for c, terms in lexicons.items())
    matcher = _compile(frozen, tuple(ignore_phrases), count_quotes)
    return _Settings(
        float(floor), tuple(sections), matcher, float(max_cue_density), float(max_repeat_ratio), min_cues_per_category
    )


def _judge_client(judge: object):
    from .judge import JudgeClient, JudgeConfig

    if isinstance(judge, JudgeClient):
        return judge
    if isinstance(judge, JudgeConfig):
        return JudgeClient(judge)
    if isinstance(judge, Mapping):
        return JudgeClient(JudgeConfig.from_dict(judge))
    raise ValueError(
        "people_focus option 'judge' must be null, a mapping of judge settings or a JudgeClient, "
        f"got {type(judge).__name__}"
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
