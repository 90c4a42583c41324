"""The data checks before any model loads: prompt lengths against `max_prompt_length` (stop, or skip with
`skip_long_prompts`), shards without counts, unknown problem types reported once."""

import json
import logging
import shutil
from types import SimpleNamespace

import pytest

from omni_grpo.config import ConfigError
from omni_grpo.data_check import check_data, find_long_prompts
from tests.helpers import TINY_RUN, run_args, tiny_config


def lengths(shards_dir, model_dir):
    """Each sample's prompt length as the check counts it: preprocess's media tokens, the text by the model's
    tokenizer (the tiny kit's tokenizer splits finer than preprocess's estimate)."""
    from omni_grpo.data_check import exact_token_lists
    from preprocess import shards

    stored = shards.load(shards_dir, verify=False).prompt_tokens
    return exact_token_lists(tiny_config(model_dir, shards_dir, "unused"), [stored])[0]


def test_check_stops_on_long_prompts_with_count_longest_and_fixes(tiny_model_dir, tiny_shards, tmp_path, capsys):
    """`python -m omni_grpo.train --check` exits 2 with one line: how many, the longest, both fixes."""
    from omni_grpo.train import main

    tokens = lengths(tiny_shards, tiny_model_dir)
    limit = sorted(tokens)[len(tokens) // 2]
    over = sum(t > limit for t in tokens)
    assert 0 < over < len(tokens)
    argv = run_args(tiny_model_dir, tiny_shards, tmp_path / "out", TINY_RUN, max_prompt_length=limit)
    assert main(["--check", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("config error:")
    assert f"{over} of {len(tokens)} samples" in err and f"longest is {max(tokens)}" in err
    assert f"--max-prompt-tokens {limit}" in err and "raise max_prompt_length" in err and "skip_long_prompts" in err
    argv = run_args(tiny_model_dir, tiny_shards, tmp_path / "out", TINY_RUN, max_prompt_length=max(tokens))
    assert main(["--check", *argv]) == 0


def test_trainer_refuses_before_loading_the_model(tiny_model_dir, tiny_shards, tmp_path, monkeypatch):
    from omni_grpo import checkpoint
    from omni_grpo.trainer import GRPOTrainer

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the data check")

    monkeypatch.setattr(checkpoint, "load_policy", no_load)
    shortest = min(lengths(tiny_shards, tiny_model_dir))
    cfg = tiny_config(tiny_model_dir, tiny_shards, tmp_path, max_prompt_length=shortest - 1)
    with pytest.raises(ConfigError, match="longer than max_prompt_length"):
        GRPOTrainer(cfg)


def test_skip_long_prompts_leaves_them_out_counted_and_logged(tiny_model_dir, tiny_shards, tmp_path, caplog):
    from omni_grpo.trainer import GRPOTrainer

    tokens = lengths(tiny_shards, tiny_model_dir)
    limit = sorted(tokens)[len(tokens) // 2]
    cfg = tiny_config(tiny_model_dir, tiny_shards, tmp_path, max_prompt_length=limit, skip_long_prompts=True)
    with caplog.at_level(logging.WARNING, logger="omni_grpo"):
        trainer = GRPOTrainer(cfg)
    kept = [t for t in tokens if t <= limit]
    assert len(trainer.dataset) == len(kept) and trainer.skipped_long_prompts == len(tokens) - len(kept)
    from preprocess import shards

    ids = shards.load(tiny_shards, verify=False).ids
    kept_ids = sorted(ids[i] for i, t in enumerate(tokens) if t <= limit)
    assert sorted(trainer.dataset[i]["id"] for i in range(len(trainer.dataset))) == kept_ids
    assert any(f"leaving out {len(tokens) - len(kept)} of {len(tokens)}" in r.getMessage() for r in caplog.records)


def test_shards_without_counts_are_reported_as_unchecked():
    found = find_long_prompts(["v2", "v1"], [[10, 30], [None, None]], limit=20)
    assert found.over == [1] and found.longest == 30 and found.unchecked == ["v1"]


def test_unknown_problem_types_reported_with_the_known_ones_unless_report_is_off(tiny_shards, tmp_path, caplog):
    data = tmp_path / "shards"
    shutil.copytree(tiny_shards, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["problem_types"] = {"matched": {"multiple_choice": 3}, "unknown": {"essay": 2}}
    (data / "manifest.json").write_text(json.dumps(manifest))
    cfg = SimpleNamespace(
        data=[str(data)], max_prompt_length=10**6, skip_long_prompts=False, model_family="qwen2_5_omni"
    )
    with caplog.at_level(logging.WARNING, logger="omni_grpo"):
        check_data(cfg, report=False)
        assert not caplog.records
        check_data(cfg)
    lines = [r.getMessage() for r in caplog.records if "unknown problem_type" in r.getMessage()]
    assert len(lines) == 1 and "'essay' (2 samples)" in lines[0] and "multiple_choice" in lines[0]
    assert "multiple_choice" not in lines[0].split("Known types")[0]


def test_training_logs_each_data_warning_once(tiny_model_dir, tiny_shards, tmp_path, monkeypatch, caplog):
    """The command checks the data before the trainer checks it again: the warnings come out once."""
    from omni_grpo import checkpoint
    from omni_grpo.train import run

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    data = tmp_path / "shards"
    shutil.copytree(tiny_shards, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["problem_types"] = {"matched": {}, "unknown": {"essay": 2}}
    (data / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(checkpoint, "load_policy", stop)  # after the trainer's data check
    with caplog.at_level(logging.WARNING, logger="omni_grpo"), pytest.raises(Stop):
        run(None, run_args(tiny_model_dir, data, tmp_path / "out", TINY_RUN))
    assert sum("unknown problem_type" in r.getMessage() for r in caplog.records) == 1


def test_shards_for_another_family_stop_the_check_with_the_fix(tiny_model_dir, tiny_shards, tmp_path, capsys):
    """Shards sized for Qwen3-Omni's 32-px grid refused for a Qwen2.5-Omni model before it loads (and accepted
    as they were written)."""
    from omni_grpo.train import main

    argv = run_args(tiny_model_dir, tiny_shards, tmp_path / "out", TINY_RUN)
    assert main(["--check", *argv]) == 0
    other = tmp_path / "qwen3-shards"
    shutil.copytree(tiny_shards, other)
    manifest = json.loads((other / "manifest.json").read_text())
    assert manifest["options"]["family"] == "qwen2_5_omni"
    manifest["options"]["family"] = "qwen3_omni"
    (other / "manifest.json").write_text(json.dumps(manifest))
    argv = run_args(tiny_model_dir, other, tmp_path / "out2", TINY_RUN)
    assert main(["--check", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "preprocessed for qwen3_omni" in err and "the model is qwen2_5_omni" in err
    assert "--family qwen2_5_omni" in err


def test_the_text_is_counted_with_the_models_tokenizer_where_the_estimate_undercounts(
    tiny, tiny_model_dir, tiny_shards, tmp_path
):
    """preprocess estimates the text without --tokenizer; the tiny kit's tokenizer splits finer than that estimate,
    so every stored count is short of the real prompt. The check counts the text with the model's tokenizer:
    its count is the prompt `build_inputs` builds, and a limit the stored counts pass is refused before any
    model loads (it used to stop the run at the step that drew such a sample)."""
    from preprocess import shards

    module, _, processor = tiny
    reader = shards.load(tiny_shards, verify=False)
    stored, exact = reader.prompt_tokens, lengths(tiny_shards, tiny_model_dir)
    cfg = tiny_config(tiny_model_dir, tiny_shards, tmp_path, max_prompt_length=max(stored))
    for i in (0, len(reader) - 1):
        built = module.build_inputs(processor, [reader[i]], cfg.system_prompt, cfg.use_audio_in_video, 100_000)
        assert int(built.attention_mask[0].sum()) == exact[i] > stored[i]
    with pytest.raises(ConfigError) as refused:
        check_data(cfg)
    line = str(refused.value)
    assert f"longest is {max(exact)}, its text counted with the model's tokenizer" in line
    assert "--tokenizer MODEL_DIR" in line and "\n" not in line


def test_the_exact_count_closes_the_question_with_the_configs_answer_instructions(
    tiny, tiny_model_dir, tiny_shards, tmp_path
):
    """A config whose `answer_instructions` replace the default sentence: `Collate` builds the prompt with them, so
    the check counts them too (it counted the default sentence, short of the prompt by the difference)."""
    from omni_grpo.data import Collate
    from omni_grpo.data_check import exact_token_lists
    from preprocess import shards

    module, _, processor = tiny
    longer = "Think it through, then give only the letter of the one option that answers the question best."
    cfg = tiny_config(tiny_model_dir, tiny_shards, tmp_path, **{"answer_instructions.multiple_choice": longer})
    reader = shards.load(tiny_shards, verify=False)
    counted = exact_token_lists(cfg, [reader.prompt_tokens])[0]
    default = lengths(tiny_shards, tiny_model_dir)
    collate = Collate(module, processor, cfg.system_prompt, cfg.use_audio_in_video, 100_000, cfg.answer_instructions)
    for i in (0, len(reader) - 1):
        built = collate([reader[i]]).inputs
        assert int(built.attention_mask[0].sum()) == counted[i] > default[i]
    # shards preprocessed with the same sentence (`--answer-instructions`, recorded in the manifest): their stored
    # counts hold it, and the recount takes out that sentence, not the default one
    from tests.helpers import build_shards

    instructed = build_shards(
        tmp_path / "instructed", n_clips=1, seconds=2.0, answer_instructions=cfg.answer_instructions
    )
    reader = shards.load(instructed, verify=False)
    counted = exact_token_lists(cfg, [reader.prompt_tokens], [instructed])[0]
    for i in range(len(reader)):
        assert int(collate([reader[i]]).inputs.attention_mask[0].sum()) == counted[i]
