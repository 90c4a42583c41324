"""Accuracy reward: does the completion's answer match the sample's ``answer``?

Extraction. The predicted answer is the content of the last complete ``<answer>…</answer>`` pair
(tag configurable with ``answer_tag``), stripped. With no such pair the prediction is missing and
scores 0.0, unless ``fallback_to_completion`` is set, in which case the whole completion is used.

Matchers. The sample's ``problem_type`` picks one (a missing type uses ``default_problem_type``).
``normalise_problem_type`` maps the spellings of common datasets onto the five matchers (case, spaces,
hyphens and slashes ignored): see ``PROBLEM_TYPE_ALIASES`` — e.g. Video-R1's "multiple choice",
"numerical", "regression", "OCR", "free-form", "yes/no"; ``known_problem_types()`` lists them for a
startup check. Each matcher returns 1.0 (match) or 0.0 (no match); ``None`` means the sample cannot be
scored: unknown or missing problem type, missing or unreadable gold ``answer``. ``python -m preprocess``
reports unknown types once, with this list, so they never turn into a silent ``None`` every step.

- ``multiple_choice``: gold ``answer`` is a letter ("B", also "(B)", "b"); ``options`` lists the option
  texts for letters A, B, C… in order (a leading "A." / "(A)" on an option text is ignored). The
  prediction names a set of options, read in this order: the whole prediction equal to an option's
  text (normalised case, whitespace, punctuation); a bare letter form ``B``, ``(B)``, ``B.``, ``B)``,
  ``Option B``, ``answer: b``, ``The answer is B``; a letter followed by text (``B. She laughs``, which
  also names any option whose text equals the rest); otherwise every letter marked in running text
  (``(B)``, ``option b``, ``answer: b``, or an upper-case letter standing alone, except "A"/"I" followed
  by a lower-case word other than a connective such as "and"/"or"/"is": "A man", "I think"). Scores
  1.0 when exactly one option is named and it is the gold one; naming two different options, or none,
  scores 0.0. With ``options`` given only their letters count in running text.
- ``multi_label``: gold is letters such as ``"B, E"`` or ``["B", "E"]``; the prediction's set of
  letters (a list like ``"E,B"`` / ``"b and e"``, else the letters marked as above) must equal the gold
  set exactly (``multi_label_scoring: exact``, the default). ``multi_label_scoring: f1`` gives partial
  credit instead: the F1 of the predicted and gold letter sets, 2·|P ∩ G| / (|P| + |G|), 0.0 when they
  share no letter: HumanOmniV2's ``emer_ov_mc`` score (HumanMLLM/HumanOmniV2
  ``src/open-r1-multimodal/eval/eval_humanomniv2.py``, ``emer_ov_mc``: precision and recall of the
  comma-separated letters), here on letter sets so a repeated letter counts once.
- ``yes_no``: gold "yes"/"no" (or a bool). The prediction's first word if it is yes/no, else the only
  one of yes/no occurring as a whole word ("no" never matches "not" or "nobody"); both or neither: 0.0.
- ``numeric``: gold a number ("1,200", "3.5", "40%", 7). The prediction must hold exactly one distinct
  number (digits or the words zero…twenty) and it must be within ``numeric_rel_tol`` /
  ``numeric_abs_tol`` of the gold (``math.isclose``). "regression" uses it too (Video-R1 scores regression
  by relative error; here it is 1.0 within the tolerance, else 0.0).
- ``free_text``: normalised exact match (Unicode NFKC, case-folded, punctuation and symbols removed,
  whitespace collapsed); also "OCR" (Video-R1 scores OCR by word error rate; here exact after normalising).
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Callable, Sequence

PROBLEM_TYPES = ("multiple_choice", "multi_label", "yes_no", "numeric", "free_text")
MULTI_LABEL_SCORING = ("exact", "f1")

# Spellings used by common datasets → matcher; keys are in the form ``_problem_type_key`` gives them.
PROBLEM_TYPE_ALIASES: dict[str, str] = {
    **{
        k: "multiple_choice"
        for k in ("multiple_choice", "mc", "mcq", "choice", "single_choice", "multiple_choice_question")
    },
    **{
        k: "multi_label"
        for k in (
            "multi_label",
            "multilabel",
            "multiple_label",
            "multi_select",
            "multiple_select",
            "multiple_answer",
            "multiple_answers",
            "multi_answer",
            "emer_ov_mc",
        )
    },
    **{k: "yes_no" for k in ("yes_no", "yesno", "yes_or_no", "boolean", "binary", "judge")},
    **{k: "numeric" for k in ("numeric", "numerical", "number", "count", "counting", "regression")},
    **{
        k: "free_text"
        for k in ("free_text", "free_form", "freeform", "open", "open_ended", "short_answer", "ocr", "text")
    },
}

_LETTERS = string.ascii_uppercase
_KEYWORD = r"(?:the\s+)?(?:final\s+|correct\s+|best\s+)?(?:answers?|options?|choices?)(?:\s+(?:is|are))?"
_AFTER_KEYWORD = r"(?:\s*[:\-]\s*|\s+|(?=[(\[]))"
_WHOLE_LETTER = re.compile(rf"(?:{_KEYWORD}{_AFTER_KEYWORD})?[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:)]?", re.IGNORECASE)
_LETTER_THEN_TEXT = re.compile(r"[(\[]?([A-Za-z])\s*[)\].:]\s+(.+)", re.DOTALL)
_MARKED_AFTER_KEYWORD = re.compile(
    rf"\b{_KEYWORD}{_AFTER_KEYWORD}[(\[]?([A-Za-z])(?=\s*(?:[.,;:)\]]|$))", re.IGNORECASE
)
_IN_BRACKETS = re.compile(r"[(\[]([A-Za-z])[)\]]")
_STANDALONE_UPPER = re.compile(r"(?<![\w'’])([A-Z])(?![\w'’])")
_NEXT_WORD = re.compile(r"\s+([a-z]+)")
_CONNECTIVES = frozenset("and or nor but vs versus is was seems fits matches because since would could might".split())
_LIST_PREFIX = re.compile(rf"^{_KEYWORD}{_AFTER_KEYWORD}", re.IGNORECASE)
_LIST_SPLIT = re.compile(r"\s*(?:[,;/&+]|\band\b)\s*|\s+", re.IGNORECASE)
_LETTER_TOKEN = re.compile(r"[(\[]?([A-Za-z])[)\]]?\.?")
_OPTION_PREFIX = re.compile(r"^\s*[(\[]?([A-Za-z])\s*[)\].:]\s+")
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|(?<![\w.])[-+]?\.\d+")
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_STRIP_CHARS = " \t\r\n*`'\"_~"


def prepare_options(**options: object) -> dict[str, object]:
    """Validate accuracy options given in config; return them normalised (raises ValueError)."""
    _check_options(**options)
    return dict(options)


def accuracy_reward(
    completions: list[str],
    *,
    answer_tag: str = "answer",
    fallback_to_completion: bool = False,
    default_problem_type: str | None = None,
    numeric_rel_tol: float = 1e-4,
    numeric_abs_tol: float = 1e-6,
    multi_label_scoring: str = "exact",
    **sample_fields: object,
) -> list[float | None]:
    """1.0 / 0.0 per completion by the sample's ``problem_type`` matcher (multi-label with
    ``multi_label_scoring: f1``: a score in [0, 1]); None when it cannot be scored."""
    _check_options(
        answer_tag=answer_tag,
        fallback_to_completion=fallback_to_completion,
        default_problem_type=default_problem_type,
        numeric_rel_tol=numeric_rel_tol,
        numeric_abs_tol=numeric_abs_tol,
        multi_label_scoring=multi_label_scoring,
    )
    n = len(completions)
    answers = _column(sample_fields, "answer", n)
    options = _column(sample_fields, "options", n)
    problem_types = _column(sample_fields, "problem_type", n)
    scores: list[float | None] = []
    for text, gold, opts, ptype in zip(completions, answers, options, problem_types):
        kind = _problem_type(ptype if ptype is not None else default_problem_type)
        if kind is None or gold is None:
            scores.append(None)
            continue
        pred = extract_answer(text, answer_tag, fallback_to_completion)
        if kind == "numeric":
            scores.append(match_numeric(pred, gold, numeric_rel_tol, numeric_abs_tol))
        elif kind == "multi_label" and multi_label_scoring == "f1":
            scores.append(multi_label_f1(pred, gold, opts))
        else:
            scores.append(_MATCHERS[kind](pred, gold, opts))
    return scores


accuracy_reward.prepare_options = prepare_options


def extract_answer(text: object, tag: str = "answer", fallback_to_completion: bool = False) -> str | None:
    """Content of the last complete ``<tag>…</tag>`` pair, stripped; the whole text if allowed; else None.

    Never raises; the result is None or a substring of ``text``.
    """
    if not isinstance(text, str):
        return None
    opening, closing = f"<{tag}>", f"</{tag}>"
    end = text.rfind(closing)
    while end >= 0:
        start = text.rfind(opening, 0, end)
        if start >= 0:
            return text[start + len(opening) : end].strip()
        end = text.rfind(closing, 0, end)
    return text.strip() if fallback_to_completion else None


def normalize_text(text: str) -> str:
    """NFKC, case-folded, punctuation and symbols replaced by spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(c)[0] in "PS" and unicodedata.category(c) != "Sc" else c for c in text)
    return " ".join(text.split())


def named_options(pred: str, options: Sequence[str] | None = None) -> set[str]:
    """The set of option letters a prediction names (see the module docstring for the rules)."""
    core = pred.strip(_STRIP_CHARS)
    if not core:
        return set()
    texts = _option_texts(options)
    norm = normalize_text(core)
    if norm and norm in texts:
        return {texts[norm]}
    whole = _WHOLE_LETTER.fullmatch(core)
    if whole:
        return {whole.group(1).upper()}
    head = _LETTER_THEN_TEXT.fullmatch(core)
    if head:
        rest = head.group(2).strip(_STRIP_CHARS)
        by_text = texts.get(normalize_text(rest))
        found = {head.group(1).upper()}
        return found | ({by_text} if by_text else _marked_letters(rest, options))
    return _marked_letters(core, options)


def match_multiple_choice(pred: str | None, gold: object, options: Sequence[str] | None = None) -> float | None:
    gold_letter = _gold_letter(gold, options)
    if gold_letter is None:
        return None
    if pred is None:
        return 0.0
    return 1.0 if named_options(pred, options) == {gold_letter} else 0.0


def match_multi_label(pred: str | None, gold: object, options: Sequence[str] | None = None) -> float | None:
    gold_set = _gold_letter_set(gold)
    if not gold_set:
        return None
    if pred is None:
        return 0.0
    return 1.0 if _predicted_letters(pred, options) == gold_set else 0.0


def multi_label_f1(pred: str | None, gold: object, options: Sequence[str] | None = None) -> float | None:
    """F1 of the predicted and gold letter sets (HumanOmniV2's partial credit for ``emer_ov_mc``)."""
    gold_set = _gold_letter_set(gold)
    if not gold_set:
        return None
    if pred is None:
        return 0.0
    found = _predicted_letters(pred, options)
    return 2 * len(found & gold_set) / (len(found) + len(gold_set))


def _predicted_letters(pred: str, options: Sequence[str] | None) -> set[str]:
    core = _LIST_PREFIX.sub("", pred.strip(_STRIP_CHARS)).strip(_STRIP_CHARS)
    listed = _letter_list(core)
    return listed if listed is not None else named_options(core, options)


def match_yes_no(pred: str | None, gold: object, options: object = None) -> float | None:
    if isinstance(gold, bool):
        gold_word = "yes" if gold else "no"
    elif isinstance(gold, str) and normalize_text(gold) in ("yes", "no"):
        gold_word = normalize_text(gold)
    else:
        return None
    if pred is None:
        return 0.0
    words = normalize_text(pred).split()
    if words and words[0] in ("yes", "no"):
        said = words[0]
    else:
        found = {w for w in words if w in ("yes", "no")}
        said = found.pop() if len(found) == 1 else None
    return 1.0 if said == gold_word else 0.0


def match_numeric(pred: str | None, gold: object, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> float | None:
    target = _gold_number(gold)
    if target is None:
        return None
    if pred is None:
        return 0.0
    values: list[float] = []
    for value in _numbers_in(pred):
        if not any(math.isclose(value, v, rel_tol=rel_tol, abs_tol=abs_tol) for v in values):
            values.append(value)
    if len(values) != 1:
        return 0.0
    return 1.0 if math.isclose(values[0], target, rel_tol=rel_tol, abs_tol=abs_tol) else 0.0


def match_free_text(pred: str | None, gold: object, options: object = None) -> float | None:
    if not isinstance(gold, str) or not normalize_text(gold):
        return None
    if pred is None:
        return 0.0
    return 1.0 if normalize_text(pred) == normalize_text(gold) else 0.0


_MATCHERS: dict[str, Callable[[str | None, object, Sequence[str] | None], float | None]] = {
    "multiple_choice": match_multiple_choice,
    "multi_label": match_multi_label,
    "yes_no": match_yes_no,
    "free_text": match_free_text,
}


def _marked_letters(text: str, options: Sequence[str] | None) -> set[str]:
    """Letters marked in running text: keyword markers, bracketed letters, standalone capitals."""
    valid = set(_LETTERS[: len(options)]) if options else set(_LETTERS)
    found = {m.group(1).upper() for m in _MARKED_AFTER_KEYWORD.finditer(text)}
    found |= {m.group(1).upper() for m in _IN_BRACKETS.finditer(text)}
    for m in _STANDALONE_UPPER.finditer(text):
        letter = m.group(1)
        after = _NEXT_WORD.match(text, m.end())
        if letter in "AI" and after and after.group(1) not in _CONNECTIVES:
            continue  # "A man ...", "I think ...": an article or a pronoun, not an option
        found.add(letter)
    return found & valid


def _letter_list(text: str) -> set[str] | None:
    """Letters of a pure list such as "B, E" / "(b) and (e)"; None if any token is not a letter."""
    tokens = [t for t in _LIST_SPLIT.split(text) if t]
    if not tokens:
        return None
    letters = set()
    for token in tokens:
        m = _LETTER_TOKEN.fullmatch(token)
        if not m:
            return None
        letters.add(m.group(1).upper())
    return letters


def _option_texts(options: Sequence[str] | None) -> dict[str, str]:
    """Normalised option text -> letter; a leading "X." naming the option's own letter is dropped."""
    if not options or isinstance(options, str):
        return {}
    texts: dict[str, str] = {}
    for letter, text in zip(_LETTERS, options):
        if not isinstance(text, str):
            continue
        prefix = _OPTION_PREFIX.match(text)
        if prefix and prefix.group(1).upper() == letter:
            text = text[prefix.end() :]
        norm = normalize_text(text)
        if norm:
            texts.setdefault(norm, letter)
    return texts


def _gold_letter(gold: object, options: Sequence[str] | None) -> str | None:
    if not isinstance(gold, str):
        return None
    m = _WHOLE_LETTER.fullmatch(gold.strip(_STRIP_CHARS))
    if not m:
        return None
    letter = m.group(1).upper()
    if options and not isinstance(options, str) and _LETTERS.index(letter) >= len(options):
        return None
    return letter


def _gold_letter_set(gold: object) -> set[str] | None:
    if isinstance(gold, str):
        return _letter_list(_LIST_PREFIX.sub("", gold.strip(_STRIP_CHARS)))
    if isinstance(gold, Sequence) and gold:
        letters = set()
        for item in gold:
            one = _gold_letter(item, None)
            if one is None:
                return None
            letters.add(one)
        return letters
    return None


def _gold_number(gold: object) -> float | None:
    if isinstance(gold, bool):
        return None
    if isinstance(gold, (int, float)):
        return float(gold) if math.isfinite(gold) else None
    if not isinstance(gold, str):
        return None
    values = list(_numbers_in(gold))
    return values[0] if len(values) == 1 else None


def _numbers_in(text: str):
    for m in _NUMBER.finditer(text):
        try:
            value = float(m.group(0).replace(",", ""))
        except ValueError:
            continue
        if math.isfinite(value):
            yield value
    for word in normalize_text(text).split():
        if word in _NUMBER_WORDS:
            yield float(_NUMBER_WORDS[word])


def _problem_type_key(value: str) -> str:
    return re.sub(r"[\s/\-_]+", "_", value.strip().lower()).strip("_")


def normalise_problem_type(value: object) -> str | None:
    """The matcher (one of ``PROBLEM_TYPES``) a dataset's ``problem_type`` spelling names, or None."""
    if not isinstance(value, str):
        return None
    return PROBLEM_TYPE_ALIASES.get(_problem_type_key(value))


def known_problem_types() -> dict[str, list[str]]:
    """Each matcher with the spellings that select it (as normalised keys), for messages and startup checks."""
    known: dict[str, list[str]] = {kind: [] for kind in PROBLEM_TYPES}
    for alias, kind in PROBLEM_TYPE_ALIASES.items():
        known[kind].append(alias)
    return known


def describe_known_problem_types() -> str:
    """One line: every matcher and its accepted spellings."""
    return "; ".join(
        f"{kind} ({', '.join(a for a in aliases if a != kind)})" for kind, aliases in known_problem_types().items()
    )


_problem_type = normalise_problem_type


def _column(fields: dict[str, object], name: str, n: int) -> list:
    column = fields.get(name)
    if column is None:
        return [None] * n
    if not isinstance(column, (list, tuple)) or len(column) != n:
        raise ValueError(f"accuracy: sample field {name!r} must be a list aligned with the {n} completions")
    return list(column)


def _check_options(**options: object) -> None:
    tag = options.get("answer_tag", "answer")
    if not isinstance(tag, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", tag):
        raise ValueError(f"accuracy option 'answer_tag' must be a tag name such as 'answer', got {tag!r}")
    if not isinstance(options.get("fallback_to_completion", False), bool):
        raise ValueError("accuracy option 'fallback_to_completion' must be true or false")
    default = options.get("default_problem_type")
    if default is not None and _problem_type(default) is None:
        raise ValueError(
            f"accuracy option 'default_problem_type' must be one of {list(PROBLEM_TYPES)} or null, got {default!r}"
        )
    if options.get("multi_label_scoring", "exact") not in MULTI_LABEL_SCORING:
        raise ValueError(
            f"accuracy option 'multi_label_scoring' must be one of {list(MULTI_LABEL_SCORING)}, got "
            f"{options.get('multi_label_scoring')!r}"
        )
    for key in ("numeric_rel_tol", "numeric_abs_tol"):
        value = options.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
            raise ValueError(f"accuracy option {key!r} must be a finite number >= 0, got {value!r}")
