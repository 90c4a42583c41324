import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_grpo.rewards import REWARDS
from omni_grpo.rewards.accuracy import (
    PROBLEM_TYPES,
    accuracy_reward,
    extract_answer,
    known_problem_types,
    named_options,
    normalise_problem_type,
    normalize_text,
    prepare_options,
)

OPTS = ["She is bored.", "She is amused by his joke.", "She is angry at him.", "She wants to leave."]
MC, ML, YN, NUM, FT = PROBLEM_TYPES


def wrap(answer: str) -> str:
    return f"<context>c</context><think>t</think><answer>{answer}</answer>"


# (problem_type, gold answer, options, content of <answer>, expected score)
CASES = [
    # multiple choice: every letter form (a past bug: bare letter only was accepted)
    (MC, "B", OPTS, "B", 1.0),
    (MC, "B", OPTS, "b", 1.0),
    (MC, "B", OPTS, "(B)", 1.0),
    (MC, "B", OPTS, "B.", 1.0),
    (MC, "B", OPTS, "B)", 1.0),
    (MC, "B", OPTS, "[B]", 1.0),
    (MC, "B", OPTS, "Option B", 1.0),
    (MC, "B", OPTS, "option b", 1.0),
    (MC, "B", OPTS, "answer: b", 1.0),
    (MC, "B", OPTS, "Answer: (B)", 1.0),
    (MC, "B", OPTS, "The answer is B.", 1.0),
    (MC, "B", OPTS, "**B**", 1.0),
    (MC, "B", OPTS, "  B  \n", 1.0),
    (MC, "B", OPTS, "B. She is amused by his joke.", 1.0),
    (MC, "B", OPTS, "(B) She is amused by his joke", 1.0),
    (MC, "B", OPTS, "I think it is B", 1.0),
    # the option's exact text, normalised case / whitespace / punctuation
    (MC, "B", OPTS, "She is amused by his joke.", 1.0),
    (MC, "B", OPTS, "she is   AMUSED by his joke", 1.0),
    (MC, "B", OPTS, "She is amused, by his joke!", 1.0),
    (MC, "B", ["A. She is bored.", "B. She is amused by his joke."], "She is amused by his joke", 1.0),
    # wrong or ambiguous
    (MC, "B", OPTS, "C", 0.0),
    (MC, "B", OPTS, "She is angry at him.", 0.0),
    (MC, "B", OPTS, "B or C", 0.0),
    (MC, "B", OPTS, "A and B", 0.0),
    (MC, "B", OPTS, "(B) or (C)", 0.0),
    (MC, "B", OPTS, "B. She is angry at him.", 0.0),  # letter and text name two options
    (MC, "B", OPTS, "She is amused", 0.0),  # not an option's exact text
    (MC, "B", OPTS, "", 0.0),
    (MC, "B", OPTS, "I don't know", 0.0),
    (MC, "B", OPTS, "E", 0.0),  # not one of the four options
    (MC, "A", OPTS, "A man is talking", 0.0),  # "A" used as an article names no option
    (MC, "A", OPTS, "A", 1.0),
    (MC, "D", OPTS, "answer: d.", 1.0),
    # multi-label (a past bug: "B, E" != "B,E")
    (ML, "B, E", None, "B,E", 1.0),
    (ML, "B, E", None, "B, E", 1.0),
    (ML, "B, E", None, "E,B", 1.0),
    (ML, "B,E", None, "e and b", 1.0),
    (ML, ["B", "E"], None, "(B) (E)", 1.0),
    (ML, "B, E", None, "Answers: B; E", 1.0),
    (ML, "B, E", None, "B", 0.0),
    (ML, "B, E", None, "B, C, E", 0.0),
    (ML, "B", None, "B", 1.0),
    # yes / no with word boundaries (a past bug: "no" matched "not")
    (YN, "no", None, "No", 1.0),
    (YN, "no", None, "no.", 1.0),
    (YN, "no", None, "It is not clear", 0.0),
    (YN, "no", None, "Nobody knows", 0.0),
    (YN, "yes", None, "Yes, she is not angry", 1.0),
    (YN, "yes", None, "I would say yes", 1.0),
    (YN, "yes", None, "I cannot tell", 0.0),
    (YN, "yes", None, "maybe yes, maybe no", 0.0),
    (YN, True, None, "YES", 1.0),
    # numeric with tolerance
    (NUM, "3", None, "3", 1.0),
    (NUM, "3", None, "3.0", 1.0),
    (NUM, "3", None, "There are 3 people.", 1.0),
    (NUM, "3", None, "three", 1.0),
    (NUM, "3", None, "3 (three)", 1.0),
    (NUM, 1200, None, "1,200", 1.0),
    (NUM, "0.5", None, "0.50001", 1.0),
    (NUM, "3", None, "4", 0.0),
    (NUM, "3", None, "3 or 4", 0.0),
    (NUM, "3", None, "13", 0.0),
    (NUM, "3", None, "none", 0.0),
    # free text: normalised exact match
    (FT, "New York", None, "new york", 1.0),
    (FT, "New York", None, " New  York. ", 1.0),
    (FT, "New York", None, "New York City", 0.0),
]


@pytest.mark.parametrize("problem_type, gold, options, answer, expected", CASES)
def test_answer_table(problem_type, gold, options, answer, expected):
    scores = accuracy_reward([wrap(answer)], answer=[gold], options=[options], problem_type=[problem_type])
    assert scores == [expected]


def test_table_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize(
    "problem_type, gold",
    [
        ("essay", "B"),
        (None, "B"),
        (MC, None),
        (MC, "Z"),
        (MC, 1),
        (ML, "B, maybe"),
        (YN, "perhaps"),
        (NUM, "many"),
        (FT, " "),
    ],
)
def test_cannot_score_gives_none(problem_type, gold):
    assert accuracy_reward([wrap("B")], answer=[gold], options=[OPTS], problem_type=[problem_type]) == [None]


def test_problem_type_spelling_and_default():
    fields = dict(answer=["B", "B"], options=[OPTS, OPTS])
    assert accuracy_reward([wrap("B")] * 2, problem_type=["Multiple-Choice", "multiple choice"], **fields) == [1.0, 1.0]
    assert accuracy_reward([wrap("B")] * 2, **fields) == [None, None]
    assert accuracy_reward([wrap("B")] * 2, default_problem_type=MC, **fields) == [1.0, 1.0]


def test_missing_answer_tag_scores_zero_unless_fallback():
    fields = dict(answer=["B"], options=[OPTS], problem_type=[MC])
    assert accuracy_reward(["The answer is B."], **fields) == [0.0]
    assert accuracy_reward(["The answer is B."], fallback_to_completion=True, **fields) == [1.0]
    assert accuracy_reward(["<answer>B"], **fields) == [0.0]  # truncated


def test_answer_is_taken_from_the_answer_section_only():
    text = "<context>Option C looks tempting.</context><think>Not C: she laughs.</think><answer>B</answer>"
    assert accuracy_reward([text], answer=["B"], options=[OPTS], problem_type=[MC]) == [1.0]


def test_ignores_unknown_fields_and_checks_alignment():
    scores = accuracy_reward([wrap("B")], answer=["B"], options=[OPTS], problem_type=[MC], id=["x"], video=["v.mp4"])
    assert scores == [1.0]
    with pytest.raises(ValueError, match="aligned"):
        accuracy_reward([wrap("B"), wrap("C")], answer=["B"], problem_type=[MC, MC])


def test_numeric_tolerance_options():
    fields = dict(answer=["10"], problem_type=[NUM])
    assert accuracy_reward([wrap("10.5")], **fields) == [0.0]
    assert accuracy_reward([wrap("10.5")], numeric_rel_tol=0.1, **fields) == [1.0]
    assert accuracy_reward([wrap("10.5")], numeric_abs_tol=1.0, **fields) == [1.0]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>B</answer>", "B"),
        ("<answer>  B \n</answer>", "B"),
        ("<answer>A</answer> then <answer>C</answer>", "C"),
        ("<answer>A</answer> then <answer>C", "A"),
        ("<answer></answer>", ""),
        ("no tags", None),
        ("</answer><answer>", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_custom_tag_and_fallback():
    assert extract_answer("<final>B</final>", tag="final") == "B"
    assert extract_answer("  B  ", fallback_to_completion=True) == "B"


def test_named_options_reports_every_option_named():
    assert named_options("A and C", OPTS) == {"A", "C"}
    assert named_options("She is bored", OPTS) == {"A"}
    assert named_options("nothing here", OPTS) == set()


def test_normalize_text():
    assert normalize_text("  Hello,   WORLD!! ") == "hello world"
    assert normalize_text("Ｂ") == "b"


@pytest.mark.parametrize(
    "options, match",
    [
        ({"answer_tag": "<answer>"}, "answer_tag"),
        ({"fallback_to_completion": "yes"}, "fallback_to_completion"),
        ({"default_problem_type": "essay"}, "default_problem_type"),
        ({"numeric_rel_tol": -1}, "numeric_rel_tol"),
        ({"numeric_abs_tol": float("nan")}, "numeric_abs_tol"),
    ],
)
def test_bad_options_are_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        prepare_options(**options)


def test_registered_under_its_name():
    assert REWARDS["accuracy"] is accuracy_reward


@settings(max_examples=300, deadline=None)
@given(st.text(), st.sampled_from(["answer", "think", "a"]), st.booleans())
def test_extract_answer_never_raises_and_returns_a_substring(text, tag, fallback):
    result = extract_answer(text, tag, fallback)
    assert result is None or result in text


_TAGGY = st.text(alphabet=st.sampled_from(list("<>/answer ABCDbe(),.:;-0123456789yesno\n")), max_size=60)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.text(max_size=80), _TAGGY),
    st.sampled_from(PROBLEM_TYPES),
    st.sampled_from(["B", "B, E", "yes", "3", "x"]),
)
def test_accuracy_never_raises_on_arbitrary_text(text, problem_type, gold):
    (score,) = accuracy_reward(
        [text], answer=[gold], options=[OPTS], problem_type=[problem_type], fallback_to_completion=True
    )
    assert score is None or score in (0.0, 1.0)
    assert score is None or not math.isnan(score)


# (problem_type as datasets spell it, gold, options, content of <answer>, expected): every spelling scores
# ("yes/no" and Video-R1's types used to give None every step)
SPELLINGS = [
    ("yes/no", "yes", None, "Yes, she is.", 1.0),
    ("Yes/No", "no", None, "yes", 0.0),
    ("yes_no", "no", None, "No", 1.0),
    ("yes or no", "yes", None, "yes", 1.0),
    ("boolean", True, None, "yes", 1.0),
    ("multiple choice", "B", OPTS, "B", 1.0),
    ("multiple_choice", "B", OPTS, "(C)", 0.0),
    ("Multiple-Choice", "B", OPTS, "b", 1.0),
    ("MCQ", "C", OPTS, "C. She is angry at him.", 1.0),
    ("multi-label", "B, E", None, "E,B", 1.0),
    ("multi_label", ["B", "E"], None, "b and e", 1.0),
    ("multilabel", "A,C", None, "A", 0.0),
    ("multiple answers", "A, C", None, "C, A", 1.0),
    ("numerical", "12", None, "twelve", 1.0),
    ("numeric", "3.5", None, "3.6", 0.0),
    ("regression", "40%", None, "40", 1.0),
    ("counting", 7, None, "There are 7 people.", 1.0),
    ("free-form", "a red car", None, "A red car.", 1.0),
    ("free_form", "a red car", None, "a blue car", 0.0),
    ("Free Form", "hello", None, "Hello!", 1.0),
    ("OCR", "STOP", None, "stop", 1.0),
    ("ocr", "EXIT 12", None, "exit 13", 0.0),
    ("open-ended", "happy", None, "happy", 1.0),
]


@pytest.mark.parametrize("problem_type, gold, options, answer, expected", SPELLINGS)
def test_dataset_spellings_of_problem_types(problem_type, gold, options, answer, expected):
    scores = accuracy_reward([wrap(answer)], answer=[gold], options=[options], problem_type=[problem_type])
    assert scores == [expected]


@pytest.mark.parametrize(
    "spelling, kind",
    [
        ("yes/no", YN),
        ("YES_NO", YN),
        ("multiple choice", MC),
        ("multi-label", ML),
        ("numerical", NUM),
        ("regression", NUM),
        ("free-form", FT),
        ("OCR", FT),
        (" Free  Form ", FT),
        ("essay", None),
        ("", None),
        (3, None),
    ],
)
def test_normalise_problem_type(spelling, kind):
    assert normalise_problem_type(spelling) == kind


def test_known_problem_types_lists_every_matcher_and_spelling():
    known = known_problem_types()
    assert list(known) == list(PROBLEM_TYPES)
    for kind, spellings in known.items():
        assert kind in spellings and all(normalise_problem_type(s) == kind for s in spellings)


# --- multi-label partial credit (HumanOmniV2's emer_ov_mc F1) ------------------------------------------


def _humanomniv2_emer_ov_mc(reference: str, hypothesis: str) -> float:
    """HumanOmniV2's definition (HumanMLLM/HumanOmniV2 src/open-r1-multimodal/eval/eval_humanomniv2.py,
    d9123e68, ``emer_ov_mc``), restated: F1 of the comma-separated letters."""
    a, b = reference.split(","), hypothesis.split(",")
    tp = len(set(a) & set(b))
    p, r = tp / len(a), tp / len(b)
    return 2 * p * r / (p + r) if p + r else 0.0


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("A,E", "A,E"),
        ("A", "A,E"),
        ("A,B,E", "A,E"),
        ("C", "A,E"),
        ("B,C,D", "B"),
        ("A,B,C,D", "A,B,C,D"),
        ("D,A", "A,D,E"),
    ],
)
def test_multi_label_f1_is_humanomniv2s_partial_credit(pred, gold):
    got = accuracy_reward(
        [f"<answer>{pred}</answer>"],
        answer=[gold],
        options=[list("ABCDE")],
        problem_type=["emer_ov_mc"],
        multi_label_scoring="f1",
    )[0]
    assert got == pytest.approx(_humanomniv2_emer_ov_mc(gold, pred))
    exact = accuracy_reward(
        [f"<answer>{pred}</answer>"], answer=[gold], options=[list("ABCDE")], problem_type=["multi_label"]
    )[0]
    assert exact == (1.0 if set(pred.split(",")) == set(gold.split(",")) else 0.0)


def test_multi_label_f1_reads_the_same_letter_forms_and_rejects_bad_settings():
    score = accuracy_reward(
        ["<answer>(b) and (e)</answer>", "no answer", "<answer>B, C</answer>"],
        answer=["B, E"] * 3,
        options=[list("ABCDE")] * 3,
        problem_type=["multi_label"] * 3,
        multi_label_scoring="f1",
    )
    assert score == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="multi_label_scoring"):
        accuracy_reward(["x"], answer=["A"], problem_type=["multi_label"], multi_label_scoring="partial")


def test_humanomniv2_type_names_select_our_matchers():
    assert normalise_problem_type("emer_ov_mc") == "multi_label"
    assert normalise_problem_type("judge") == "yes_no"
    assert normalise_problem_type("multiple choice") == "multiple_choice"
    assert normalise_problem_type("numerical") == normalise_problem_type("regression") == "numeric"
    assert normalise_problem_type("OCR") == normalise_problem_type("free-form") == "free_text"


# --- the answer instruction ---------------------------------------------------------------------------


def test_each_problem_type_gets_its_own_instruction():
    from omni_grpo.rewards.instructions import DEFAULT_INSTRUCTIONS, instruction

    options = ["x", "y", "z"]
    assert (
        instruction({"problem_type": "multiple_choice", "options": options})
        == DEFAULT_INSTRUCTIONS["multiple_choice"]
        == "Answer with the letter of the correct option."
    )
    assert "letters of all correct options" in instruction({"problem_type": "emer_ov_mc", "options": options})
    assert instruction({"problem_type": "judge", "options": []}) == "Answer yes or no."
    assert instruction({"problem_type": "numerical"}) == "Answer with a number."
    assert instruction({"problem_type": "free-form"}) == instruction({"problem_type": "OCR"}) != ""
    assert instruction({"problem_type": None, "options": options}) == DEFAULT_INSTRUCTIONS["multiple_choice"]
    assert instruction({"problem_type": "something else"}) == ""
    assert len(set(DEFAULT_INSTRUCTIONS.values())) == 5


def test_instruction_overrides_replace_one_type_and_are_checked():
    from omni_grpo.rewards.instructions import check_instructions, instruction

    overrides = check_instructions({"yes_no": "Reply Yes or No.", "numeric": ""})
    assert instruction({"problem_type": "yes_no"}, overrides) == "Reply Yes or No."
    assert instruction({"problem_type": "numeric"}, overrides) == ""
    assert instruction({"problem_type": "multi_label", "options": ["a", "b"]}, overrides).startswith("Answer with")
    with pytest.raises(ValueError, match="'yesno' is not a problem type"):
        check_instructions({"yesno": "x"})
    with pytest.raises(ValueError, match="must be a string"):
        check_instructions({"yes_no": 3})


def test_format_question_ends_with_the_instruction_of_the_samples_type():
    from omni_grpo.models.base import format_question

    mc = {"question": "Who?", "options": ["x", "y"], "problem_type": "multiple_choice"}
    assert format_question(mc) == "Who?\nOptions:\nA. x\nB. y\nAnswer with the letter of the correct option."
    assert format_question({**mc, "problem_type": "emer_ov_mc"}).endswith(
        "B. y\nAnswer with the letters of all correct options, separated by commas (e.g. A,C)."
    )
    assert format_question({"question": "Is it red?", "problem_type": "judge"}) == "Is it red?\nAnswer yes or no."
    assert format_question({"question": "How many?", "problem_type": "numerical"}) == "How many?\nAnswer with a number."
    assert format_question({**mc, "instruction": "Pick one."}).endswith("B. y\nPick one.")
    assert format_question({**mc, "instruction": ""}) == "Who?\nOptions:\nA. x\nB. y"
    assert format_question({"question": "What?", "problem_type": None}) == "What?"
