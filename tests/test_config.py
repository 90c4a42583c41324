"""omni_grpo.config: YAML + overrides, helpful errors, path checks, and the generated reference doc."""

import dataclasses
import json
from pathlib import Path

import pytest

from omni_grpo.config import (
    ConfigError,
    JudgeConfig,
    LoraConfig,
    TrainConfig,
    check_paths,
    config_to_dict,
    load_config,
    reference_markdown,
    save_config,
)

REPO = Path(__file__).resolve().parents[1]
MODEL = "model_name_or_path=checkpoints/tiny"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_and_overrides(tmp_path):
    config_file = write(
        tmp_path / "run.yaml",
        "model_name_or_path: checkpoints/tiny\n"
        "learning_rate: 1e-6\n"  # PyYAML alone would read this as a string
        "bf16: true\n"
        "data: [shards/a, shards/b]\n"
        "num_generations: 4\n"
        "lora: {alpha: 16}\n"
        "reward_kwargs: {format: {partial_credit: 0.5}}\n",
    )
    cfg = load_config(config_file, ["num_generations=6", "lora.r=8", "--clip_high=0.28", "beta=0"])
    assert cfg.learning_rate == 1e-6 and isinstance(cfg.learning_rate, float)
    assert cfg.bf16 is True
    assert cfg.data == ["shards/a", "shards/b"]
    assert cfg.num_generations == 6
    assert cfg.clip_high == 0.28
    assert cfg.beta == 0.0 and not cfg.uses_reference_model
    assert (cfg.lora.r, cfg.lora.alpha) == (8, 16)  # nested sections merge key by key
    assert cfg.reward_kwargs == {"format": {"partial_credit": 0.5}}


def test_nested_dot_overrides():
    cfg = load_config(
        None,
        [
            MODEL,
            "lora.enabled=true",
            "lora.target_modules=[q_proj, v_proj]",
            "judge.timeout_s=5",
            "reward_kwargs.accuracy.strict=true",
            "reward_kwargs.accuracy.tolerance=1e-3",
        ],
    )
    assert cfg.lora == LoraConfig(enabled=True, target_modules=["q_proj", "v_proj"])
    assert cfg.judge.timeout_s == 5.0
    assert cfg.reward_kwargs == {"accuracy": {"strict": True, "tolerance": 1e-3}}


def test_override_values_are_yaml_but_strings_stay_strings():
    cfg = load_config(
        None,
        [
            MODEL,
            "system_prompt=Answer: yes or no.",
            "data=shards/one",
            "temperature_final=null",
            "resume_from_checkpoint=latest",
            "temperature=1",
        ],
    )
    assert cfg.system_prompt == "Answer: yes or no."
    assert cfg.data == ["shards/one"]
    assert cfg.temperature_final is None
    assert cfg.resume_from_checkpoint == "latest"
    assert cfg.temperature == 1.0 and isinstance(cfg.temperature, float)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (
            ["learnig_rate=1e-6"],
            "unknown config key 'learnig_rate' in override 'learnig_rate=1e-6'; did you mean 'learning_rate'?",
        ),
        (["lora.rr=8"], "unknown config key 'lora.rr' in override 'lora.rr=8'; did you mean 'lora.r'?"),
        (["r=8"], "did you mean 'lora.r'?"),
        (["per_device_train_batch_size=2"], "did you mean 'per_device_prompts'?"),
        (["judge.urll=http://x"], "did you mean 'judge.url'?"),
        (
            ["beta.value=1"],
            "beta in override 'beta.value=1' is an option, not a section with sub-keys; set it as beta=VALUE",
        ),
        (["learning_rate"], "must look like key=value"),
    ],
)
def test_unknown_or_malformed_override_names_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, [MODEL, *overrides])
    assert fragment in str(info.value)


def test_unknown_yaml_key_names_file_key_and_suggestion(tmp_path):
    config_file = write(tmp_path / "bad.yaml", "model_name_or_path: m\nlora:\n  enabled: true\n  dropuot: 0.1\n")
    with pytest.raises(
        ConfigError, match=r"unknown config key 'lora.dropuot' in .*bad.yaml; did you mean 'lora.dropout'\?"
    ):
        load_config(config_file)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path / "list.yaml", "- a\n- b\n"))


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["num_generations=1"], "G must be >= 2; set num_generations=8"),
        (
            ["num_generations=4", "per_device_prompts=2", "micro_batch_size=3"],
            "micro_batch_size=3 does not divide the 8 rows of a micro-step (per_device_prompts=2 × num_generations=4); "
            "use one of [1, 2, 4, 8], or 0",
        ),
        (["learning_rate=0"], "learning_rate=0.0 must be > 0"),
        (["learning_rate=-1e-6"], "must be > 0"),
        (["learning_rate=.nan"], "learning_rate must be a finite number"),
        (["beta=-0.1"], "beta=-0.1 must be >= 0"),
        (["beta_schedule=linear"], "beta_schedule=linear needs beta_final"),
        (["beta_schedule_fraction=0"], "beta_schedule_fraction=0.0 must be in (0, 1]"),
        (["temperature_schedule=linear", "temperature_final=0"], "temperature_final=0.0 must be > 0"),
        (
            ["loss_agg=token-mean"],
            "loss_agg='token-mean' is not one of token_mean, seq_mean_token_mean, "
            "seq_mean_token_sum_norm; did you mean 'token_mean'?",
        ),
        (["kl_estimator=k4"], "kl_estimator='k4' is not one of k1, k2, k3"),
        (["advantage_scale=global"], "advantage_scale='global' is not one of group, batch, none"),
        (["model_family=qwen25"], "model_family='qwen25' is not one of"),
        (["reward_weights=[1.0, 2.0]"], "reward_weights has 2 values for 3 rewards"),
        (["reward_weights=[1.0, .inf, 1.0]"], "reward_weights[1] must be a finite number"),
        (["reward_weights=[0, 0, 0]"], "reward_weights are all 0"),
        (["reward_funcs=[format, format]"], "more than once"),
        (["reward_kwargs.acuracy.x=1"], "reward_kwargs has options for 'acuracy', which is not in reward_funcs"),
        (["num_iterations=0"], "num_iterations=0 must be >= 1"),
        (["clip_low=0"], "clip_low=0.0 must be in (0, 1)"),
        (["clip_high=-0.1"], "clip_high=-0.1 must be > 0"),
        (["max_completion_length=0"], "max_completion_length=0 must be > 0 tokens"),
        (["max_prompt_length=-5"], "max_prompt_length=-5 must be > 0 tokens"),
        (["top_p=0"], "top_p=0.0 must be in (0, 1]"),
        (["top_p=1.5"], "top_p=1.5 must be in (0, 1]"),
        (["judge.enabled=true"], "judge.enabled=true needs judge.url"),
        (["judge.enabled=true", "judge.url=http://127.0.0.1:8000/v1/chat/completions"], "needs judge.model=NAME"),
        (["judge.api_key_env=sk-abc123"], "NAME of an environment variable"),
        (["lora.r=0"], "lora.r=0 must be >= 1"),
        (["eval_steps=10"], "eval_steps=10 needs held-out data; pass eval_data="),
        (["kl_estimator=k1"], "kl_estimator=k1 as a loss term has zero expected gradient"),
        (["max_steps=0"], "max_steps=0 must be > 0, or -1"),
        (["num_generations=2.5"], "num_generations must be an integer"),
        (["bf16=1"], "bf16 must be true or false"),
        (["learning_rate=fast"], "learning_rate must be a number"),
        (["data={a: 1}"], "data in override 'data={a: 1}' is an option, not a section"),
    ],
)
def test_invalid_values_are_rejected_with_what_to_do(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, [MODEL, *overrides])
    assert fragment in str(info.value)


def test_model_is_required():
    with pytest.raises(ConfigError, match=r"model_name_or_path is required; pass model_name_or_path=DIR"):
        load_config(None)


def test_derived_sizes():
    cfg = TrainConfig(model_name_or_path="m", num_generations=4, per_device_prompts=3)
    assert cfg.rows_per_micro_step == 12 and cfg.update_micro_batch_size == 12
    assert TrainConfig(model_name_or_path="m", num_generations=4, micro_batch_size=2).update_micro_batch_size == 2
    ramp = TrainConfig(model_name_or_path="m", beta=0.0, beta_schedule="linear", beta_final=0.1)
    assert ramp.uses_reference_model


def test_save_and_load_round_trip(tmp_path):
    cfg = load_config(
        None,
        [
            MODEL,
            "learning_rate=3e-7",
            "data=[s/a, s/b]",
            "lora.enabled=true",
            "reward_weights=[1, 0.5, 2]",
            "reward_kwargs.format.partial_credit=0.25",
            "beta_schedule=linear",
            "beta_final=0.1",
            "temperature_final=0.5",
        ],
    )
    save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(tmp_path / "out" / "config.yaml")
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)


def test_judge_key_is_never_stored(tmp_path, monkeypatch):
    secret = "sk-do-not-store-1234567890"
    monkeypatch.setenv("JUDGE_API_KEY", secret)
    cfg = load_config(
        None,
        [
            MODEL,
            "judge.enabled=true",
            "judge.url=http://127.0.0.1:8000/v1/chat/completions",
            "judge.model=qwen",
            "judge.api_key_env=JUDGE_API_KEY",
        ],
    )
    assert cfg.judge.api_key() == secret
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text(encoding="utf-8")
    assert secret not in text and secret not in repr(cfg) and secret not in json.dumps(config_to_dict(cfg))
    assert "JUDGE_API_KEY" in text
    assert "key" not in {f.name for f in dataclasses.fields(JudgeConfig)}
    with pytest.raises(ConfigError, match="never the key itself"):
        JudgeConfig(api_key_env=secret)
    monkeypatch.delenv("JUDGE_API_KEY")
    with pytest.raises(ConfigError, match="JUDGE_API_KEY .* is not set"):
        cfg.judge.api_key()


def test_reference_doc_is_current():
    doc = REPO / "docs" / "config_reference.md"
    assert doc.read_text(encoding="utf-8") == reference_markdown(), (
        "docs/config_reference.md is out of date; regenerate it: python -m omni_grpo.config > docs/config_reference.md"
    )


def test_reference_lists_every_option_with_help():
    text = reference_markdown()
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"], f.name
        if f.name in ("lora", "judge"):
            section = LoraConfig if f.name == "lora" else JudgeConfig
            for sub in dataclasses.fields(section):
                assert f"| `{f.name}.{sub.name}` |" in text
        else:
            assert f"| `{f.name}` |" in text


# ------------------------------------------------------------------------------------------------- rewards


def test_reward_names_are_resolved_by_check_reward_names():
    from omni_grpo.rewards import check_reward_names

    check_reward_names(load_config(None, [MODEL]).reward_funcs)
    cfg = load_config(None, [MODEL, "reward_funcs=[format, acuracy]"])  # a config builds without the registry
    assert cfg.reward_funcs == ["format", "acuracy"]
    with pytest.raises(ConfigError, match=r"reward_funcs: .*acuracy.*did you mean 'accuracy'\?"):
        check_reward_names(cfg.reward_funcs)


# ---------------------------------------------------------------------------------------------- path checks


def make_shards(root: Path, with_audio: int = 3, written: int = 3) -> Path:
    root.mkdir(parents=True)
    counts = {"written": written, "failed": 0, "with_audio": with_audio, "without_audio": written - with_audio}
    write(root / "manifest.json", json.dumps({"format_version": 1, "counts": counts}))
    return root


@pytest.fixture
def model_dir(tmp_path):
    path = tmp_path / "model"
    path.mkdir()
    write(path / "config.json", "{}")
    return path


def test_check_paths_accepts_a_complete_setup(tmp_path, model_dir):
    shards = make_shards(tmp_path / "shards")
    cfg = TrainConfig(model_name_or_path=str(model_dir), data=[str(shards)])
    assert check_paths(cfg) is None


def test_check_paths_model_directory(tmp_path):
    shards = make_shards(tmp_path / "shards")
    with pytest.raises(ConfigError, match=r"not found; pass model_name_or_path=DIR \(a Qwen2.5-Omni or Qwen3-Omni"):
        check_paths(TrainConfig(model_name_or_path=str(tmp_path / "nope"), data=[str(shards)]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        check_paths(TrainConfig(model_name_or_path=str(tmp_path / "empty"), data=[str(shards)]))


def test_check_paths_data_directories(tmp_path, model_dir):
    with pytest.raises(ConfigError, match=r"no training data; pass data=\[DIR, \.\.\.\]"):
        check_paths(TrainConfig(model_name_or_path=str(model_dir)))
    check_paths(TrainConfig(model_name_or_path=str(model_dir)), for_training=False)
    with pytest.raises(ConfigError, match="not found; build it with bash run_scripts/python.sh -m preprocess"):
        check_paths(TrainConfig(model_name_or_path=str(model_dir), data=[str(tmp_path / "missing")]))
    # An empty folder: no preprocess ran there, so the message says how to write shards, not that one was cut short.
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ConfigError,
        match=r"holds no shards \(no manifest.json\); write them with "
        r"bash run_scripts/python\.sh -m preprocess --output .*empty",
    ) as empty:
        check_paths(TrainConfig(model_name_or_path=str(model_dir), data=[str(tmp_path / "empty")]))
    assert "did not finish" not in str(empty.value)
    for leftover in ("shard-00000.parquet", ".shard-00000.parquet.partial"):  # what an interrupted preprocess leaves
        unfinished = tmp_path / f"unfinished{leftover}"
        unfinished.mkdir()
        (unfinished / leftover).write_bytes(b"")
        with pytest.raises(
            ConfigError,
            match="has no manifest.json, so preprocess did not finish writing it; "
            "re-run bash run_scripts/python.sh -m preprocess",
        ):
            check_paths(TrainConfig(model_name_or_path=str(model_dir), data=[str(unfinished)]))
    good = make_shards(tmp_path / "good")
    with pytest.raises(ConfigError, match="resume_from_checkpoint"):
        check_paths(
            TrainConfig(model_name_or_path=str(model_dir), data=[str(good)], resume_from_checkpoint="ckpt/none")
        )


def test_check_paths_rejects_silent_shards_when_audio_is_used(tmp_path, model_dir):
    silent = make_shards(tmp_path / "silent", with_audio=0)
    cfg = TrainConfig(model_name_or_path=str(model_dir), data=[str(silent)])
    with pytest.raises(
        ConfigError,
        match="re-run bash run_scripts/python.sh -m preprocess on clips with audio, or set use_audio_in_video=false",
    ):
        check_paths(cfg)
    check_paths(dataclasses.replace(cfg, use_audio_in_video=False))


def test_top_level_judge_reaches_people_focus_without_the_key():
    from omni_grpo.rewards import effective_reward_kwargs

    cfg = load_config(
        None,
        [
            "model_name_or_path=m",
            "judge.enabled=true",
            "judge.url=http://127.0.0.1:9/v1",
            "judge.model=judge",
            "judge.api_key_env=JUDGE_KEY",
            "judge.temperature=0.3",
            "judge.max_cache_entries=7",
        ],
    )
    kw = effective_reward_kwargs(cfg)
    assert kw["people_focus"]["judge"]["api_key_env"] == "JUDGE_KEY"
    from omni_grpo.rewards.judge import JudgeConfig

    judge = JudgeConfig.from_dict(kw["people_focus"]["judge"])  # what the reward builds its client from
    assert (judge.temperature, judge.max_cache_entries) == (0.3, 7)
    assert "sk-" not in repr(kw)
    off = effective_reward_kwargs(load_config(None, ["model_name_or_path=m"]))
    assert "people_focus" not in off or "judge" not in off["people_focus"]
