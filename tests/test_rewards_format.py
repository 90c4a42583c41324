import pytest

from omni_grpo.rewards import REWARDS
from omni_grpo.rewards.format import format_reward, is_well_formed, prepare_options

GOOD = "<context>A man and a woman talk.</context><think>She smiles, so she agrees.</think><answer>B</answer>"


@pytest.mark.parametrize(
    "completion, expected",
    [
        (GOOD, 1.0),
        ("  \n" + GOOD.replace("</context>", "</context>\n\n").replace("</think>", "</think>\n") + "\n ", 1.0),
        ("<context>\nmulti\nline\n</context><think>t</think><answer>B</answer>", 1.0),
        ("<think>She smiles.</think><answer>B</answer>", 0.0),  # context missing
        ("<context> </context><think>t</think><answer>B</answer>", 0.0),  # empty context
        ("<context>c</context><think>\n</think><answer>B</answer>", 0.0),  # empty think
        ("<context>c</context><think>t</think><answer></answer>", 0.0),  # empty answer
        ("<think>t</think><context>c</context><answer>B</answer>", 0.0),  # wrong order
        ("Sure! " + GOOD, 0.0),  # text before
        (GOOD + " Hope this helps.", 0.0),  # text after
        ("<context>c</context> and <think>t</think><answer>B</answer>", 0.0),  # text between
        ("<context>c</context><think>t <think>again</think><answer>B</answer>", 0.0),  # nested tag
        (GOOD + "<answer>C</answer>", 0.0),  # answer twice
        ("<context>c</context><think>t</think><answer>B", 0.0),  # truncated
        ("<Context>c</Context><think>t</think><answer>B</answer>", 0.0),  # tags are case-sensitive
        ("<context >c</context><think>t</think><answer>B</answer>", 0.0),  # no attributes / spaces
        ("", 0.0),
        ("systemsystemsystemsystem", 0.0),
    ],
)
def test_default_stage4_layout(completion, expected):
    assert format_reward([completion]) == [expected]
    assert is_well_formed(completion) is (expected == 1.0)


def test_r1_layout_via_tags_option():
    r1 = "<think>She smiles.</think>\n<answer>B</answer>"
    assert format_reward([r1, GOOD], tags=["think", "answer"]) == [1.0, 0.0]
    assert format_reward([r1]) == [0.0]


def test_partial_credit_is_below_full_structure():
    wrong_order = "<think>t</think><context>c</context><answer>B</answer>"
    two_of_three = "<think>t</think><answer>B</answer>"
    scores = format_reward([GOOD, wrong_order, two_of_three, "no tags", "<think></think>"], partial_credit=0.5)
    assert scores == [1.0, 0.5, pytest.approx(0.5 * 2 / 3), 0.0, 0.0]


def test_never_none_and_ignores_sample_fields():
    scores = format_reward([GOOD, "x", None], answer=["B"] * 3, id=[1, 2, 3], anything_else=[0] * 3)
    assert scores == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "options, match",
    [
        ({"tags": []}, "non-empty list"),
        ({"tags": "think"}, "non-empty list"),
        ({"tags": ["<think>"]}, "tag name"),
        ({"tags": ["think", "think"]}, "repeats"),
        ({"partial_credit": 1.0}, r"\[0, 1\)"),
        ({"partial_credit": -0.1}, r"\[0, 1\)"),
        ({"partial_credit": True}, r"\[0, 1\)"),
    ],
)
def test_bad_options_are_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        prepare_options(**options)
    with pytest.raises(ValueError, match=match):
        format_reward([GOOD], **options)


def test_registered_under_its_name():
    assert REWARDS["format"] is format_reward
