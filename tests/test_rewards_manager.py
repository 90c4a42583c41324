import logging
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from omni_grpo.rewards import REWARDS, RewardError, RewardOutput, build_reward_manager, resolve_reward

OPTIONS = ["She is bored.", "She is amused by his joke.", "She is angry at him.", "She wants to leave."]
SAMPLE = {"answer": "B", "options": OPTIONS, "problem_type": "multiple_choice", "id": "clip-1"}
GOOD = (
    "<context>The woman laughs and smiles at him while he tells the story.</context>"
    "<think>Her laughter and warm tone suggest she is amused.</think><answer>B</answer>"
)


def group_advantages(total: torch.Tensor, group_size: int) -> torch.Tensor:
    """(r - mean_group) / (std_group + 1e-6), the GRPO advantage, over consecutive groups."""
    r = total.view(-1, group_size)
    return ((r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + 1e-6)).view(-1)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A throwaway module on sys.path holding user rewards, importable as 'my_rewards:<fn>'."""
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent(
            """
            calls = []

            def length(completions, *, scale=1.0, **kwargs):
                calls.append(sorted(kwargs))
                return [scale * len(c) for c in completions]

            def needs_option(completions, *, threshold, **kwargs):
                return [float(len(c) > threshold) for c in completions]

            def no_kwargs(completions):
                return [0.0 for _ in completions]

            NOT_CALLABLE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("my_rewards", None)


def scripted(values_per_call):
    """A reward returning (or raising) the next scripted item on each call."""
    script = list(values_per_call)

    def reward(completions, **kwargs):
        item = script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return reward


def manager_with(monkeypatch, reward, **kwargs):
    monkeypatch.setitem(REWARDS, "scripted", reward)
    return build_reward_manager(["scripted"], **kwargs)


# resolve_reward


def test_resolve_builtins_and_user_rewards(user_module):
    assert resolve_reward("format") is REWARDS["format"]
    assert resolve_reward("my_rewards:length").__name__ == "length"


@pytest.mark.parametrize(
    "name, match",
    [
        ("formatt", "unknown reward 'formatt'.*format"),
        ("my_rewards.length", "import path 'package.module:function'"),
        ("no_such_module_xyz:fn", "cannot import module"),
        ("my_rewards:missing", "no attribute 'missing'"),
        ("my_rewards:NOT_CALLABLE", "not callable"),
        (3, "must be a string"),
    ],
)
def test_resolve_errors(user_module, name, match):
    with pytest.raises(ValueError, match=match):
        resolve_reward(name)


# build_reward_manager validation


def test_defaults_and_user_options(user_module):
    manager = build_reward_manager(["format", "my_rewards:length"], reward_kwargs={"my_rewards:length": {"scale": 2.0}})
    assert manager.names == ["format", "my_rewards:length"] and manager.weights == [1.0, 1.0]
    out = manager(["ab", "abcd"], [{"id": 1}, {"id": 2, "extra": "x"}])
    assert out.scores[:, 1].tolist() == [4.0, 8.0]
    assert sys.modules["my_rewards"].calls[-1] == ["extra", "id"]  # missing fields arrive as None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(reward_funcs=[]), "non-empty list"),
        (dict(reward_funcs="format"), "non-empty list"),
        (dict(reward_funcs=["format", "format"]), "more than once"),
        (dict(reward_funcs=["format", "accuracy"], reward_weights=[1.0]), "one number per reward"),
        (dict(reward_funcs=["format"], reward_weights=[float("nan")]), "finite"),
        (dict(reward_funcs=["format"], reward_weights=[float("inf")]), "finite"),
        (dict(reward_funcs=["format"], reward_weights=["1"]), "finite"),
        (dict(reward_funcs=["format"], reward_kwargs={"accuracy": {}}), "not in reward_funcs"),
        (
            dict(reward_funcs=["format"], reward_kwargs={"format": {"tag": ["think"]}}),
            r"reward 'format'.*\['tag'\].*valid options are \['partial_credit', 'tags'\]",
        ),
        (dict(reward_funcs=["format"], reward_kwargs={"format": {"tags": []}}), "reward 'format': bad option"),
        (dict(reward_funcs=["people_focus"], reward_kwargs={"people_focus": {"floor": 2}}), "floor"),
        (dict(reward_funcs=["my_rewards:needs_option"]), r"needs option\(s\) \['threshold'\]"),
        (dict(reward_funcs=["my_rewards:no_kwargs"]), r"\*\*kwargs"),
        (dict(reward_funcs=["format"], max_consecutive_errors=0), "max_consecutive_errors"),
    ],
)
def test_build_rejects_bad_config(user_module, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_reward_manager(**kwargs)


def test_option_clashing_with_a_sample_field_is_an_error(user_module):
    manager = build_reward_manager(["my_rewards:length"], reward_kwargs={"my_rewards:length": {"scale": 2.0}})
    with pytest.raises(ValueError, match="scale"):
        manager(["a"], [{"scale": 3}])


def test_batch_shape_errors():
    manager = build_reward_manager(["format"])
    with pytest.raises(ValueError, match="1 samples"):
        manager(["a", "b"], [SAMPLE])
    with pytest.raises(ValueError, match="no completions"):
        manager([], [])


# outputs


def test_output_shapes_metrics_and_per_sample():
    manager = build_reward_manager(["format", "accuracy", "people_focus"], reward_weights=[0.5, 1.0, 2.0])
    bad = "<answer>C</answer>"
    out = manager([GOOD, bad], [SAMPLE, {**SAMPLE, "problem_type": "essay"}])
    assert isinstance(out, RewardOutput)
    assert out.scores.dtype == torch.float32 and out.scores.shape == (2, 3) and out.total.shape == (2,)
    assert out.per_sample == [
        {"format": 1.0, "accuracy": 1.0, "people_focus": 1.0},
        {"format": 0.0, "accuracy": None, "people_focus": 0.0},
    ]
    assert torch.isnan(out.scores[1, 1])
    assert out.total.tolist() == [3.5, 0.0]
    m = out.metrics
    assert m["reward/accuracy"] == 1.0 and m["reward/accuracy_std"] == 0.0 and m["reward/accuracy/none_ratio"] == 0.5
    assert m["reward/format"] == 0.5 and m["reward/format_std"] == 0.5 and m["reward/format/none_ratio"] == 0.0
    assert m["reward/total"] == 1.75 and m["reward/total_std"] == 1.75
    for name in manager.names:
        assert m[f"reward/{name}/errors"] == 0.0 and m[f"reward/{name}/nonfinite"] == 0.0


def test_all_none_reward_has_nan_mean_and_full_none_ratio(monkeypatch):
    out = manager_with(monkeypatch, scripted([[None, None]]))(["a", "b"], [{}, {}])
    assert math.isnan(out.metrics["reward/scripted"]) and out.metrics["reward/scripted/none_ratio"] == 1.0
    assert out.total.tolist() == [0.0, 0.0]


def test_nonfinite_values_become_none_and_are_counted(monkeypatch):
    out = manager_with(monkeypatch, scripted([[1.0, float("nan"), float("inf"), -float("inf"), 1e300]]))(
        ["a"] * 5, [{}] * 5
    )
    assert out.per_sample == [{"scripted": 1.0}] + [{"scripted": None}] * 4
    assert out.metrics["reward/scripted/nonfinite"] == 4.0 and out.metrics["reward/scripted/none_ratio"] == 0.8
    assert out.metrics["reward/scripted/errors"] == 0.0 and out.total.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "bad", [RuntimeError("judge down"), [1.0], [1.0, 2.0, 3.0], 1.0, "10", ["x", 1.0], [[1.0], 2.0]]
)
def test_a_failing_reward_is_none_for_the_batch_counted_and_logged(monkeypatch, caplog, bad):
    manager = manager_with(monkeypatch, scripted([bad, [0.5, 0.5]]))
    with caplog.at_level(logging.WARNING, logger="omni_grpo.rewards.manager"):
        out = manager(["a", "b"], [{}, {}])
    assert out.per_sample == [{"scripted": None}, {"scripted": None}]
    assert out.metrics["reward/scripted/errors"] == 1.0 and out.metrics["reward/scripted/none_ratio"] == 1.0
    assert "'scripted' failed" in caplog.text
    out = manager(["a", "b"], [{}, {}])
    assert out.metrics["reward/scripted/errors"] == 1.0  # cumulative
    assert out.per_sample == [{"scripted": 0.5}, {"scripted": 0.5}]


def test_consecutive_failures_raise_reward_error(monkeypatch):
    boom = ValueError("boom")
    manager = manager_with(monkeypatch, scripted([boom, boom, [1.0], boom, boom, boom]), max_consecutive_errors=3)
    for _ in range(2):
        manager(["a"], [{}])
    assert manager(["a"], [{}]).metrics["reward/scripted/errors"] == 2.0  # success resets the streak
    manager(["a"], [{}])
    manager(["a"], [{}])
    with pytest.raises(RewardError, match=r"'scripted' failed on 3 consecutive batches.*boom"):
        manager(["a"], [{}])


def test_other_rewards_still_score_when_one_fails(monkeypatch):
    monkeypatch.setitem(REWARDS, "scripted", scripted([RuntimeError("x")]))
    out = build_reward_manager(["format", "scripted"])([GOOD], [SAMPLE])
    assert out.per_sample == [{"format": 1.0, "scripted": None}] and out.total.tolist() == [1.0]


def test_weights_scale_the_total(monkeypatch):
    monkeypatch.setitem(REWARDS, "a", lambda completions, **kw: [1.0] * len(completions))
    monkeypatch.setitem(REWARDS, "b", lambda completions, **kw: [10.0] * len(completions))
    assert build_reward_manager(["a", "b"], reward_weights=[2.0, 0.5])(["x"], [{}]).total.tolist() == [7.0]
    assert build_reward_manager(["a", "b"], reward_weights=[1.0, 0.0])(["x"], [{}]).total.tolist() == [1.0]
    assert build_reward_manager(["a", "b"], reward_weights=[-1.0, 1.0])(["x"], [{}]).total.tolist() == [9.0]


# every reward reaches the advantages

G = 4
COMPLETIONS = [
    GOOD,
    GOOD.replace("<answer>B</answer>", "<answer>C</answer>"),
    "<think>Maybe B.</think><answer>B</answer>",
    "<context>A room.</context><think>Option B fits.</think><answer>B</answer>",
    GOOD,
    GOOD.replace("<answer>B</answer>", "<answer>A</answer>"),
    "B",
    "<context>A room.</context><think>Not sure.</think><answer>D</answer>",
]
# For each built-in, an edit of completion 3 that changes that reward's score and no other.
EDITS = {
    "format": "Sure. <context>A room.</context><think>Option B fits.</think><answer>B</answer>",
    "accuracy": "<context>A room.</context><think>Option B fits.</think><answer>C</answer>",
    "people_focus": "<context>A room.</context><think>He says it fits.</think><answer>B</answer>",
}


@pytest.mark.parametrize("name", ["format", "accuracy", "people_focus"])
def test_each_reward_changes_the_group_advantages(name):
    manager = build_reward_manager(["format", "accuracy", "people_focus"], reward_weights=[0.5, 1.0, 0.5])
    samples = [SAMPLE] * len(COMPLETIONS)
    before = manager(COMPLETIONS, samples)
    edited = list(COMPLETIONS)
    edited[3] = EDITS[name]
    after = manager(edited, samples)
    changed = [n for f, n in enumerate(manager.names) if after.scores[3, f] != before.scores[3, f]]
    assert changed == [name]
    assert torch.equal(after.scores[:3], before.scores[:3]) and torch.equal(after.scores[4:], before.scores[4:])
    assert after.total[3] != before.total[3]
    adv_before, adv_after = group_advantages(before.total, G), group_advantages(after.total, G)
    assert not torch.allclose(adv_before[:G], adv_after[:G])  # the edited completion's group moves
    assert torch.equal(adv_before[G:], adv_after[G:])  # the other group does not


def test_a_user_reward_changes_the_advantages(monkeypatch):
    values = {"x": 0.0, "y": 0.5}
    monkeypatch.setitem(REWARDS, "probe", lambda completions, **kw: [values.get(c, 1.0) for c in completions])
    manager = build_reward_manager(["format", "probe"], reward_weights=[1.0, 0.3])
    completions, samples = [GOOD, "y", "x", GOOD], [SAMPLE] * G
    before = group_advantages(manager(completions, samples).total, G)
    values["x"] = 1.0
    after = group_advantages(manager(completions, samples).total, G)
    assert not torch.allclose(before, after)


def test_importing_the_registry_does_not_import_torch():
    code = (
        "import sys, omni_grpo.rewards as r; assert 'torch' not in sys.modules; "
        "assert set(r.REWARDS) == {'format', 'accuracy', 'people_focus'}"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"PATH": ""})
