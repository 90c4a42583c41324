"""`python -m omni_grpo.evaluate` on the tiny model: a base checkpoint, a trainer-written thinker checkpoint and a
LoRA adapter, each scored through the training prompt and rewards; a killed run resumes, a run compares with
another."""

import json
import re

import pytest
import torch

from omni_grpo import eval_report
from omni_grpo.evaluate import EvalError, evaluate, main, resolve_model_dir
from tests.helpers import build_shards

N_QUESTIONS = 5  # 2 synthetic clips: 2 + 3 questions


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("eval-data"), n_clips=2, seconds=2.0, max_pixels=12544)


def run(model, shards, out, *extra):
    """The command line, in this process; returns the metrics and the prediction lines."""
    argv = [
        "--model",
        str(model),
        "--data",
        str(shards),
        "--output",
        str(out),
        "--max-new-tokens",
        "8",
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--no-progress",
        *extra,
    ]
    assert main(argv) == 0
    metrics = json.loads((out / "summary.json").read_text())
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return metrics, lines


def check(metrics, lines, n_completions):
    assert len(lines) == n_completions == metrics["num_questions"] * metrics["num_generations"]
    for key in ("accuracy", "format_rate", "people_focus", "reward_total", "completion_length", "truncated_ratio"):
        assert key in metrics
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["format_rate"] <= 1.0
    for line in lines:
        assert {"id", "question", "answer", "problem_type", "extra", "completion", "parsed_answer", "rewards"} <= set(
            line
        )
        assert set(line["rewards"]) == {"format", "accuracy", "people_focus"}
        assert line["answer"] in "ABCD" and 1 <= line["length"] <= 8


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("base")


@pytest.fixture(scope="module")
def base_run(tiny_model_dir, shards, base_dir):
    return run(tiny_model_dir, shards, base_dir)


def test_base_checkpoint_greedy(base_run, tiny_model_dir, shards, tmp_path, capsys):
    metrics, lines = base_run
    check(metrics, lines, N_QUESTIONS)
    assert metrics["decoding"] == "greedy" and metrics["model"] == str(tiny_model_dir)
    # Greedy decoding is deterministic; --limit keeps the first questions in shard order; overrides may follow --data.
    again, again_lines = run(tiny_model_dir, shards, tmp_path / "again", "--limit", "2", "use_audio_in_video=true")
    assert [x["completion"] for x in again_lines] == [x["completion"] for x in lines[:2]]
    printed = capsys.readouterr().out
    assert "accuracy " in printed and "format_rate " in printed and "summary.json" in printed


def test_a_killed_run_resumes_where_it_stopped(base_run, tiny_model_dir, shards, tmp_path, monkeypatch, capsys):
    """Killed after its first batch, the same command continues: the rows and the summary equal one pass."""
    from omni_grpo import eval_report

    real_append, batches = eval_report.PredictionLog.append, []

    def append_then_die(self, rows):
        if batches:
            raise KeyboardInterrupt
        real_append(self, rows)
        batches.append(1)

    out = tmp_path / "killed"
    monkeypatch.setattr(eval_report.PredictionLog, "append", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model_dir, shards, out)
    monkeypatch.undo()
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2  # one batch of --batch-size 2
    capsys.readouterr()
    argv = [
        "--model",
        str(tiny_model_dir),
        "--data",
        str(shards),
        "--output",
        str(out),
        "--max-new-tokens",
        "8",
        "--batch-size",
        "2",
        "--num-workers",
        "0",
    ]
    assert main(argv) == 0  # the same command, with its progress bar over questions
    printed = capsys.readouterr()
    assert f"2/{N_QUESTIONS}" in printed.err and f"{N_QUESTIONS}/{N_QUESTIONS}" in printed.err
    assert "question" in printed.err and "2 from an earlier run" in printed.out
    metrics = json.loads((out / "summary.json").read_text())
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    base_metrics, base_lines = base_run
    assert lines == base_lines and metrics["resumed_questions"] == 2
    session = ("seconds", "resumed_questions")
    assert {k: v for k, v in metrics.items() if k not in session} == {
        k: v for k, v in base_metrics.items() if k not in session
    }
    assert main([*argv, "system_prompt=Other."]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another system_prompt" in err and "--output" in err
    assert len((out / "predictions.jsonl").read_text().splitlines()) == N_QUESTIONS


def test_group_by_and_compare_with_a_finished_run(base_run, base_dir, tiny_model_dir, shards, tmp_path, capsys):
    out = tmp_path / "cmp"
    metrics, lines = run(
        tiny_model_dir,
        shards,
        out,
        "--limit",
        "3",
        "--group-by",
        "problem_type,vid_name",
        "--compare",
        str(base_dir / "predictions.jsonl"),
    )
    vids = {line["extra"]["vid_name"] for line in lines}
    assert len(vids) == 2 and set(metrics["groups"]["vid_name"]) == vids
    assert metrics["groups"]["problem_type"]["multiple_choice"]["questions"] == 3
    result = json.loads((out / "compare.json").read_text())
    assert result["paired_questions"] == 3 and result["only_in_b"] == N_QUESTIONS - 3 and result["only_in_a"] == 0
    assert result["overall"]["difference"]["mean"] == 0.0 and result["overall"]["mcnemar_p"] == 1.0  # same model
    assert set(result["groups"]["vid_name"]) == vids
    printed = capsys.readouterr().out
    assert f"A: {tiny_model_dir}" in printed and "McNemar p" in printed and "vid_name=" in printed


@pytest.fixture(scope="module")
def shards_with_a_missing_video(tmp_path_factory):
    """3 synthetic Social-IQ 2.0 clips (2 + 3 + 2 questions) whose first video is missing from the download."""
    from omni_grpo.synthetic import make_siq2_dataset
    from preprocess.build import BuildOptions, build
    from preprocess.media import VideoOptions

    root = tmp_path_factory.mktemp("eval-missing")
    make_siq2_dataset(root / "raw", n_clips=3, seconds=2.0)
    qa = [json.loads(line) for line in (root / "raw" / "qa" / "qa_train.json").read_text().splitlines()]
    gone = qa[0]["vid_name"]
    (root / "raw" / "video" / f"{gone}.mp4").unlink()
    build(
        BuildOptions(
            source="siq2",
            root=root / "raw",
            output=root / "shards",
            workers=0,
            progress=False,
            video=VideoOptions(min_pixels=3136, max_pixels=12544),
        )
    )
    return root / "shards", qa, gone


def test_coverage_counts_the_questions_preprocess_lost(tiny_model_dir, shards_with_a_missing_video, tmp_path, capsys):
    data, qa, gone = shards_with_a_missing_video
    lost = [row["qid"] for row in qa if row["vid_name"] == gone]
    metrics, lines = run(tiny_model_dir, data, tmp_path / "out", "--group-by", "vid_name")
    cover = metrics["coverage"]
    assert cover["released"] == len(qa) == 7 and cover["lost_before_evaluation"] == len(lost) == 2
    assert cover["scored"] == cover["evaluated"] == len(qa) - len(lost) == metrics["num_questions"]
    assert cover["text"] == f"5 of {len(qa)} released questions scored"
    assert cover["lost_reasons"] == {"video file not found: FILE": 2}
    per_video = cover["groups"]["vid_name"]
    assert per_video[gone] == {"scored": 0, "released": len(lost)}  # its category read back from qa_train.json
    for vid in {row["vid_name"] for row in qa} - {gone}:
        n = sum(row["vid_name"] == vid for row in qa)
        assert per_video[vid] == {"scored": n, "released": n}
    assert cover["uncategorised"] == {"vid_name": 0}
    printed = capsys.readouterr().out
    assert f"coverage: 5 of {len(qa)} released questions scored; 2 not in the shards" in printed
    assert f"vid_name={gone}" in printed and "0/2" in printed and f"5/{len(qa)}" in printed


def test_subset_scores_only_the_listed_questions(tiny_model_dir, shards_with_a_missing_video, tmp_path):
    data, qa, gone = shards_with_a_missing_video
    kept = next(row["qid"] for row in qa if row["vid_name"] != gone)
    lost = next(row["qid"] for row in qa if row["vid_name"] == gone)
    (tmp_path / "clean.txt").write_text(f"# a published split\n{kept}\n{lost}\nnot-a-question\n")
    metrics, lines = run(tiny_model_dir, data, tmp_path / "out", "--subset", str(tmp_path / "clean.txt"))
    assert {line["id"] for line in lines} == {kept}
    cover = metrics["coverage"]
    assert (cover["released"], cover["scored"], cover["lost_before_evaluation"]) == (3, 1, 2)
    assert "not in the shards or their failures.jsonl" in cover["lost_reasons"]
    run_file = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_file["subset"]["questions"] == 3
    (tmp_path / "none.txt").write_text("x\ny\n")
    with pytest.raises(EvalError, match="none of its 2 ids is a question of --data"):
        evaluate(str(tiny_model_dir), [str(data)], str(tmp_path / "none"), subset=str(tmp_path / "none.txt"))


def _captured_inputs(monkeypatch):
    """What each generate call of `evaluate` receives: (sample ids, ModelInputs), in batch order."""
    import omni_grpo.rollout as rollout

    seen, real = [], rollout.sample

    def spy(module, net, processor, inputs, samples, *args, **kwargs):
        seen.append(([s["id"] for s in samples], inputs))
        return real(module, net, processor, inputs, samples, *args, **kwargs)

    monkeypatch.setattr(rollout, "sample", spy)
    return seen


@pytest.fixture(scope="module")
def full_inputs(tiny_model_dir, shards, tmp_path_factory):
    """A full run with batch size 1 (each question's own tensors): its folder and each question's inputs."""
    out = tmp_path_factory.mktemp("full")
    with pytest.MonkeyPatch.context() as monkeypatch:
        seen = _captured_inputs(monkeypatch)
        run(tiny_model_dir, shards, out, "--batch-size", "1")
    return out, {ids[0]: inputs for ids, inputs in seen}


@pytest.mark.parametrize("ablate", ["video", "audio", "media"])
def test_ablated_runs_do_not_see_the_blanked_media(tiny_model_dir, shards, full_inputs, tmp_path, monkeypatch, ablate):
    """Ablated, the 5 questions about 2 different clips get one and the same video patches / audio features (so
    the model cannot tell the clips apart), different from the full run's; the prompt ids (its layout) and the
    other stream are the full run's, bit for bit."""
    full_dir, full = full_inputs
    seen = _captured_inputs(monkeypatch)
    metrics, _ = run(tiny_model_dir, shards, tmp_path / ablate, "--batch-size", "1", "--ablate", ablate)
    blank = {ids[0]: inputs for ids, inputs in seen}
    assert sorted(blank) == sorted(full) and len(blank) == N_QUESTIONS
    streams = {
        "video": ["pixel_values_videos"],
        "audio": ["input_features"],
        "media": ["pixel_values_videos", "input_features"],
    }[ablate]
    for q in blank:
        assert torch.equal(blank[q].input_ids, full[q].input_ids)
        for name in ("pixel_values_videos", "input_features"):
            a, b = getattr(blank[q], name), getattr(full[q], name)
            assert a is not None and b is not None
            assert torch.equal(a, b) == (name not in streams), (q, name)
    for name in streams:
        first = getattr(next(iter(blank.values())), name)
        assert all(torch.equal(getattr(x, name), first) for x in blank.values()), name
        assert len({getattr(x, name).sum().item() for x in full.values()}) > 1, f"the full run's {name} is one clip"
    assert metrics["ablate"] == ablate
    assert json.loads((tmp_path / ablate / "run.json").read_text())["ablate"] == ablate
    result = eval_report.compare(
        eval_report.load_predictions(full_dir), eval_report.load_predictions(tmp_path / ablate)
    )
    assert result["paired_questions"] == N_QUESTIONS
    assert eval_report.run_label(tmp_path / ablate).endswith(f" (ablate {ablate})")


def test_text_ablation_leaves_no_media_token_and_the_text_as_is(
    tiny, tiny_model_dir, shards, full_inputs, tmp_path, monkeypatch
):
    full_dir, full = full_inputs
    seen = _captured_inputs(monkeypatch)
    metrics, _ = run(tiny_model_dir, shards, tmp_path / "text", "--batch-size", "1", "--ablate", "text")
    decode = tiny[2].tokenizer.decode
    media = r"<\|vision_bos\|>.*<\|vision_eos\|>|<\|audio_bos\|>.*<\|audio_eos\|>"
    for ids, inputs in seen:
        assert inputs.pixel_values_videos is None and inputs.input_features is None and inputs.pixel_values is None
        with_media = decode(full[ids[0]].input_ids[0])
        assert re.search(media, with_media, re.DOTALL)
        assert decode(inputs.input_ids[0]) == re.sub(media, "", with_media, flags=re.DOTALL)
    assert len(seen) == N_QUESTIONS and metrics["ablate"] == "text"


def test_the_configs_answer_instruction_reaches_the_prompt(tiny, tiny_model_dir, shards, tmp_path, monkeypatch):
    seen = _captured_inputs(monkeypatch)
    run(tiny_model_dir, shards, tmp_path / "out", "--limit", "1", "answer_instructions.multiple_choice=Pick one.")
    prompt = tiny[2].tokenizer.decode(seen[0][1].input_ids[0])
    assert "D. " in prompt and "\nPick one.<|im_end|>" in prompt and "letter of the correct option" not in prompt
    assert json.loads((tmp_path / "out" / "run.json").read_text())["answer_instructions"] == {
        "multiple_choice": "Pick one."
    }
    assert (
        main(
            [
                "--model",
                str(tiny_model_dir),
                "--data",
                str(shards),
                "--output",
                str(tmp_path / "bad"),
                "answer_instructions.yesno=x",
            ]
        )
        == 2
    )


def test_overrides_reach_the_prompt(base_run, tiny_model_dir, shards, tmp_path):
    _, lines = base_run
    _, other = run(tiny_model_dir, shards, tmp_path / "other", "--limit", "2", "system_prompt=Answer now.")
    assert [x["completion"] for x in other] != [x["completion"] for x in lines[:2]]


def test_sampled_generations_report_pass_at_k(tiny_model_dir, shards, tmp_path):
    metrics, lines = run(tiny_model_dir, shards, tmp_path / "k2", "--num-generations", "2", "--limit", "2")
    check(metrics, lines, 4)
    assert metrics["decoding"] == "sampled" and "pass_at_2" in metrics
    assert [x["generation"] for x in lines] == [0, 1, 0, 1]


def test_trainer_checkpoint(tiny_model_dir, shards, tmp_path):
    """One real training step (single process) writes output_dir/checkpoints/step-0000001/{model,config.yaml}."""
    from omni_grpo.config import load_config
    from omni_grpo.trainer import GRPOTrainer

    out = tmp_path / "run"
    cfg = load_config(
        None,
        [
            f"model_name_or_path={tiny_model_dir}",
            f"data=[{shards}]",
            f"output_dir={out}",
            "num_generations=2",
            "max_completion_length=8",
            "max_steps=1",
            "learning_rate=1e-3",
            "entropy_coef=0.01",
            "dataloader_num_workers=0",
            "log_completions=0",
            "system_prompt=Answer the question.",
        ],
    )
    GRPOTrainer(cfg).train()
    step = out / "checkpoints" / "step-0000001"
    assert resolve_model_dir(step) == step / "model" == resolve_model_dir(out)

    metrics, lines = run(step, shards, tmp_path / "trained")
    check(metrics, lines, N_QUESTIONS)
    assert metrics["model"] == str(step / "model")
    # The checkpoint's own config.yaml supplies the system prompt; --config replaces it.
    from omni_grpo.evaluate import eval_config

    assert eval_config(step / "model", None, []).system_prompt == "Answer the question."
    assert eval_config(step / "model", None, ["system_prompt=Other."]).system_prompt == "Other."


def test_lora_adapter(tiny, tiny_model_dir, shards, base_run, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    from omni_grpo.evaluate import load_for_eval

    module, _, _ = tiny
    model = module.load_model(tiny_model_dir)
    lora = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model\..*\.(q_proj|v_proj)$")
    )
    torch.manual_seed(1)
    with torch.no_grad():  # lora_B starts at 0 (a no-op adapter); make it change the outputs
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)

    _, loaded, _ = load_for_eval(adapter, torch.float32, torch.device("cpu"))
    assert isinstance(loaded, PeftModel)
    saved = {k: v for k, v in lora.state_dict().items() if "lora_B" in k}
    got = dict(loaded.state_dict())
    assert saved and all(torch.equal(got[k], v) for k, v in saved.items())

    metrics, lines = run(adapter, shards, tmp_path / "lora")
    check(metrics, lines, N_QUESTIONS)
    _, base_lines = base_run
    assert [x["completion"] for x in lines] != [x["completion"] for x in base_lines]


def test_lora_adapter_with_missing_base(tmp_path, shards):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(EvalError, match="--base-model"):
        evaluate(str(adapter), [str(shards)], str(tmp_path / "out"), num_workers=0, progress=False)


def test_clear_errors(tiny_model_dir, shards, tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nope"), "--data", str(shards), "--output", str(tmp_path / "o")]) == 2
    assert "directory not found" in capsys.readouterr().err
    assert (
        main(["--model", str(tiny_model_dir), "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err
    assert "--data" in err and "bash run_scripts/python.sh -m preprocess --output" in err
    (tmp_path / "empty").mkdir()
    assert main(["--model", str(tmp_path / "empty"), "--data", str(shards), "--output", str(tmp_path / "o")]) == 2
    assert "config.json" in capsys.readouterr().err
    assert (
        main(["--model", str(tiny_model_dir), "--data", str(tmp_path / "empty"), "--output", str(tmp_path / "o")]) == 2
    )
    assert "manifest.json" in capsys.readouterr().err


def exact_lengths(model_dir, shards_dir):
    """(stored, exact): preprocess's count of each sample's prompt (its text estimated, no --tokenizer) and the
    count with the text by the model's tokenizer (finer than the estimate for the tiny kit)."""
    from omni_grpo.data_check import exact_token_lists
    from preprocess.shards import load
    from tests.helpers import tiny_config

    stored = load(shards_dir, verify=False).prompt_tokens
    return stored, exact_token_lists(tiny_config(model_dir, shards_dir, "unused"), [stored])[0]


def test_a_prompt_longer_than_the_limit_is_refused_in_one_line_before_the_model_loads(
    tiny_model_dir, shards, tmp_path, monkeypatch, capsys
):
    """The stored counts (text estimated) all fit the limit; counted with the model's tokenizer, as training's
    check counts, they do not. The command names the first such sample, its true count, the limit and the fixes,
    in one line, before any model loads or anything is written (it used to stop in the first batch with the
    loader worker's traceback)."""
    from omni_grpo import evaluate as evaluate_module

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the prompt length check")

    monkeypatch.setattr(evaluate_module, "load_for_eval", no_load)
    stored, exact = exact_lengths(tiny_model_dir, shards)
    limit = max(stored)
    over = [i for i, n in enumerate(exact) if n > limit]
    assert over and all(n <= limit for n in stored)
    ids = [q for part in evaluate_module.open_data([str(shards)]).parts for q in part.ids]
    argv = ["--model", str(tiny_model_dir), "--data", str(shards), "--output", str(tmp_path / "out")]
    assert main([*argv, "--no-progress", f"max_prompt_length={limit}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith(f"evaluate: error: sample {ids[over[0]]!r}: prompt is {exact[over[0]]} tokens")
    assert f"over max_prompt_length={limit}" in line and f"{len(over)} of the {len(exact)} evaluated" in line
    assert "--tokenizer MODEL_DIR" in line and f"--max-prompt-tokens {limit}" in line
    assert f"max_prompt_length={max(exact)} on this command" in line
    assert not (tmp_path / "out").exists()


def test_a_prompt_found_too_long_in_a_loader_worker_is_one_line(tiny_model_dir, shards, tmp_path, monkeypatch, capsys):
    """Past the check (here switched off), `build_inputs` refuses the prompt in a data-loader worker, which torch
    re-raises with the worker's traceback as the message: the command prints the sample's own line alone."""
    from omni_grpo import evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "check_prompt_lengths", lambda *a, **k: None, raising=False)
    stored, exact = exact_lengths(tiny_model_dir, shards)
    argv = ["--model", str(tiny_model_dir), "--data", str(shards), "--output", str(tmp_path / "out")]
    code = main([*argv, "--num-workers", "1", "--no-progress", "--max-new-tokens", "2", "max_prompt_length=8"])
    assert code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "Loading weights" not in line]
    assert len(err) == 1 and "Traceback" not in err[0], err  # the bar: transformers was imported by the tests
    assert re.match(r"evaluate: error: sample '[^']+': prompt is \d+ tokens .*over max_prompt_length=8\.", err[0])


def test_the_command_prints_no_dependency_noise(tiny_model_dir, shards, tmp_path):
    """`python -m omni_grpo.evaluate` sets up logging as training does: no "Loading weights" bar, no dependency's
    FutureWarning on stderr (both came before), unless --verbose."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "OMNI_GRPO", "HF_HUB_DISABLE"))}
    env.update(PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    argv = ["--model", str(tiny_model_dir), "--data", str(shards), "--limit", "1", "--max-new-tokens", "2"]
    argv += ["--num-workers", "0", "--no-progress"]
    for extra, out in (([], "quiet"), (["--verbose"], "verbose")):
        proc = subprocess.run(
            [sys.executable, "-m", "omni_grpo.evaluate", *argv, "--output", str(tmp_path / out), *extra],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        if extra:
            assert "Loading weights" in proc.stderr  # what the quiet run leaves out
        else:
            assert proc.stderr == "", proc.stderr
