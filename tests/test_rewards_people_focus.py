import pytest

from omni_grpo.rewards import REWARDS
from omni_grpo.rewards.judge import JudgeClient, JudgeConfig
from omni_grpo.rewards.people_focus import (
    DEFAULT_LEXICONS,
    QUOTE_CUE,
    explain,
    people_focus_reward,
    prepare_options,
    reasoning_text,
)


def stage4(context: str, think: str, answer: str = "B") -> str:
    return f"<context>{context}</context><think>{think}</think><answer>{answer}</answer>"


GROUNDED = stage4(
    "The woman leans back with her arms crossed and avoids eye contact while the man talks. When he asks "
    '"are you coming tonight?", she sighs and replies in a flat, quiet tone after a long pause.',
    "Her posture and the hesitation in her voice suggest she is reluctant and a little annoyed; "
    "she does not want to hurt him, but her intent is to decline.",
)
PARTLY_GROUNDED = stage4(
    "Two people are in a kitchen. The man smiles at her.",
    "The question asks whether she agrees. He seems friendly, so the best option is B.",
)
GENERIC_WITH_SOCIAL = stage4(
    "The video shows two people in a room.",
    "The question is about how the woman feels. Option B is the most reasonable choice here.",
)
GENERIC = stage4(
    "The video shows two people in a room with a table.",
    "Considering all the options carefully, B is the most plausible answer to this question.",
)
KEYWORD_STUFFING = stage4(
    "face smile gaze eye contact gesture posture nod",
    "tone pitch laughter sigh pause says asks replies speaker emotion intent attitude relationship",
)
REPEATED = stage4(
    "She smiles at him and says hello in a warm tone.",
    "She smiles at him and says hello in a warm tone. She smiles at him and says hello in a warm tone. "
    "She smiles at him and says hello in a warm tone. She seems happy.",
)


def score(text: str, **options) -> float:
    (value,) = people_focus_reward([text], **options)
    return value


def test_ranked_as_a_person_would():
    ranked = [GROUNDED, PARTLY_GROUNDED, GENERIC_WITH_SOCIAL, KEYWORD_STUFFING]
    scores = [score(t) for t in ranked]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == 1.0
    assert scores[0] > scores[1] > scores[2] > scores[3] == pytest.approx(0.1)


def test_generic_and_gamed_reasoning_score_the_floor():
    assert score(GENERIC) == pytest.approx(0.1)
    assert explain(KEYWORD_STUFFING).reason == "cue_density"
    assert score(KEYWORD_STUFFING) == pytest.approx(0.1)
    assert explain(REPEATED).reason == "repetition"
    assert score(REPEATED) == pytest.approx(0.1)


def test_score_formula_counts_covered_categories():
    detail = explain(PARTLY_GROUNDED)
    covered = [c for c, cues in detail.cues.items() if cues]
    assert covered == ["visual", "social"]
    assert detail.score == pytest.approx(0.1 + 0.9 * 2 / 4)
    assert score(GENERIC_WITH_SOCIAL) == pytest.approx(0.1 + 0.9 * 1 / 4)


@pytest.mark.parametrize(
    "completion",
    [
        "<think>She smiles and says hi.</think><answer>B</answer>",  # context missing
        stage4("   ", "She smiles and says hi."),  # empty context
        stage4("She smiles and says hi.", "\n"),  # empty think
        "<context>She smiles and says hi.<think>unclosed</think>",
        "",
        "systemsystemsystemsystemsystem",
        None,
    ],
)
def test_missing_or_empty_reasoning_scores_zero(completion):
    assert score(completion) == 0.0


def test_the_answer_is_never_scored():
    answer_only = stage4("A room.", "Option B.", answer="She smiles, sighs, says 'no' and feels annoyed.")
    assert score(answer_only) == pytest.approx(0.1)
    nested = stage4("A room.", "Hmm. <answer>She smiles, sighs and feels upset</answer>")
    assert score(nested) == pytest.approx(0.1)
    assert "smiles" not in reasoning_text(nested)


def test_inflections_and_word_boundaries():
    hits = explain(stage4("He kept nodding and smiled; she laughed.", "He asked twice.")).cues
    assert set(hits["visual"]) == {"nod", "smile"} and hits["vocal"] == ("laugh",) and hits["speech"] == ("ask",)
    misses = explain(
        stage4("The surface of the stone table.", "A pitcher of water sits there; the toner is empty.")
    ).cues
    assert not any(misses.values())


def test_each_cue_counts_once():
    once = explain(stage4("She smiles.", "She is calm."))
    many = explain(stage4("She smiles.", "She smiles again, smiles, and smiles more, smiling at everyone in the room."))
    assert many.cues["visual"] == ("smile",) and many.score == once.score
    assert score(stage4("She smiles.", "He frowns."), min_cues_per_category=2) > score(
        stage4("She smiles.", "She smiles again later in the clip."), min_cues_per_category=2
    )


def test_quotes_count_as_speech_and_task_phrases_do_not():
    quoted = explain(stage4("The man, smiling: \u201cyou did great today\u201d.", "He is proud of her."))
    assert QUOTE_CUE in quoted.cues["speech"]
    assert score(stage4("Nothing visible.", '"you did great today"'), count_quotes=False) == pytest.approx(0.1)
    assert explain(stage4("The question asks about her.", "Pick B.")).cues["speech"] == ()


def test_options_floor_sections_and_lexicons():
    assert score(GENERIC, floor=0.2) == pytest.approx(0.2)
    assert score(GENERIC, floor=0.0) == 0.0
    r1 = "<think>She smiles and says 'thanks' warmly; she feels grateful.</think><answer>B</answer>"
    assert score(r1) == 0.0
    assert score(r1, sections=["think"]) > 0.1
    lexicons = {"gaze": ["gaze", "eye contact"], "touch": ["hug", "touch"]}
    assert score(stage4("He hugs her.", "Their eye contact is long."), lexicons=lexicons) == 1.0
    assert score(stage4("He hugs her.", "Nothing else."), lexicons=lexicons) == pytest.approx(0.1 + 0.9 / 2)


def test_scores_lie_in_zero_or_floor_to_one():
    texts = [GROUNDED, PARTLY_GROUNDED, GENERIC, KEYWORD_STUFFING, REPEATED, "", GENERIC_WITH_SOCIAL]
    for value in people_focus_reward(texts, floor=0.25, id=list(range(len(texts))), answer=["B"] * len(texts)):
        assert value == 0.0 or 0.25 <= value <= 1.0


def test_default_lexicons_have_the_four_categories():
    assert list(DEFAULT_LEXICONS) == ["visual", "vocal", "speech", "social"]


@pytest.mark.parametrize(
    "options, match",
    [
        ({"floor": 1.0}, "floor"),
        ({"floor": -0.1}, "floor"),
        ({"sections": []}, "sections"),
        ({"sections": ["answer"]}, "sections"),
        ({"lexicons": {}}, "lexicons"),
        ({"lexicons": {"visual": []}}, "visual"),
        ({"lexicons": {"visual": ["   "]}}, "visual"),
        ({"max_cue_density": 0}, "max_cue_density"),
        ({"max_repeat_ratio": 1.5}, "max_repeat_ratio"),
        ({"min_cues_per_category": 0}, "min_cues_per_category"),
        ({"ignore_phrases": "the question"}, "ignore_phrases"),
        ({"judge": "http://localhost"}, "judge"),
        ({"judge": {"url": "http://127.0.0.1:1/v1/chat/completions"}}, "model"),
    ],
)
def test_bad_options_are_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        prepare_options(**options)


class FakeJudge(JudgeClient):
    """Rates by a fixed table; records what it was asked."""

    def __init__(self, ratings):
        super().__init__(JudgeConfig(url="http://127.0.0.1:9/v1/chat/completions", model="fake"))
        self.ratings, self.asked = ratings, []

    def rate(self, texts):
        self.asked.extend(texts)
        return [self.ratings.get(t) for t in texts]


def test_judge_scores_only_what_passes_the_local_checks():
    grounded_text = reasoning_text(GROUNDED)
    judge = FakeJudge({grounded_text: 0.8})
    scores = people_focus_reward([GROUNDED, GENERIC, KEYWORD_STUFFING, ""], judge=judge)
    assert scores[0] == pytest.approx(0.1 + 0.9 * 0.8)
    assert scores[1] is None  # the fake has no rating for it: a failure is None, never 0
    assert scores[2:] == [pytest.approx(0.1), 0.0]
    assert judge.asked == [grounded_text, reasoning_text(GENERIC)]


def test_prepare_options_builds_one_judge_client():
    options = prepare_options(judge={"url": "http://127.0.0.1:9/v1/chat/completions", "model": "m"}, floor=0.2)
    assert isinstance(options["judge"], JudgeClient) and options["floor"] == 0.2


def test_registered_under_its_name():
    assert REWARDS["people_focus"] is people_focus_reward
