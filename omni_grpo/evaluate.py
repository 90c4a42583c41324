"""python -m omni_grpo.evaluate --model DIR --data SHARDS [SHARDS ...] [--output OUT] [--group-by FIELD[,FIELD]]
                            [--compare OTHER/predictions.jsonl] [--subset IDS] [--ablate KIND] [key=value ...]
python -m omni_grpo.evaluate --compare A/predictions.jsonl B/predictions.jsonl [--group-by FIELD] [--output OUT]

Answers held-out questions with a base checkpoint, a trained thinker or a LoRA adapter, through exactly the
path training takes: the same model module (`build_inputs` with the same system prompt and
`use_audio_in_video`), the trainer's sampling path (`rollout.sample`: towers once per batch, media tokens
banned) and the same reward functions and options. Writes (see `omni_grpo.eval_report` for the formats and the
statistics)

  OUT/run.json           the run header (model, data, settings); a different run into OUT is refused
  OUT/predictions.jsonl  one line per completion, appended after every batch: id, question, options, answer,
                         problem_type, extra (the sample's category fields), generation (the sample index k),
                         completion, parsed_answer (what the accuracy reward read), rewards {name: score or
                         null}, total, length, truncated
  OUT/summary.json       accuracy, format_rate, people_focus, reward_total (the weighted sum training
                         optimises), every reward's mean with a 95 % interval and none ratio, per `--group-by`
                         category the same, completion length, truncation; pass_at_k when k = --samples > 1
  OUT/compare.json       with --compare: both runs per category, A - B with its interval, McNemar's p

summary.json's `coverage` (also the table's first line and its "scored" column) says "N of M released
questions scored", overall and per category: M from the shards' manifest.json and failures.jsonl (the
questions preprocess lost, their categories read back from the source annotation when it is still there),
or with `--subset FILE` the file's question ids (only those are evaluated).

`--ablate video|audio|media|text` keeps the model from the media with the prompt's layout unchanged (every
frame one grey, the audio silence, or both: the same tokens in the same places; text: no media tokens at all,
the text as is), recorded in run.json and
summary.json: `--compare FULL ABLATED` then gives the media's contribution per category.

and prints the summary as a table. `--samples 1` (the default) decodes greedily; k > 1 samples k completions
per question with the config's temperature / top_p / top_k and reports pass@1 averaged over the k.
Re-running the same command into the same OUT resumes: questions already complete in predictions.jsonl are
skipped and the summary covers all of the run's questions. `--compare A B` without --model compares two
finished runs.

--model takes a checkpoint directory with config.json (Qwen2.5-Omni or Qwen3-Omni, full or thinker-only),
a trainer checkpoint `output_dir/checkpoints/step-NNNNNNN` (its `model/` folder is used) or that `model/`
folder, a training `output_dir` (its newest complete checkpoint), or a LoRA adapter directory
(adapter_config.json): the base model it names is loaded with the model module, then the adapter with
`peft.PeftModel.from_pretrained` (--base-model overrides the base path).

Settings come from --config, else from the trainer checkpoint's own config.yaml, else the defaults, then
`key=value` overrides, as in training. Before the model loads, every evaluated prompt is counted as training's
check counts it (`check_prompt_lengths`); one longer than max_prompt_length is refused in one line. The three
built-in rewards are always scored; a reward that training did not use gets weight 0, so `reward_total` stays
the training objective.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from omni_grpo import eval_report

BUILT_IN_METRICS = eval_report.HEADLINE_METRICS
EVAL_SETTINGS = (
    "model_family",
    "attn_implementation",
    "system_prompt",
    "use_audio_in_video",
    "max_prompt_length",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "reward_funcs",
    "reward_weights",
    "reward_kwargs",
)  # the config fields that change a completion or its scores


class EvalError(RuntimeError):
    """A model or data directory is missing or unusable; the message says what to pass instead."""


# ---------------------------------------------------------------------------------------------- locating


def resolve_model_dir(path) -> Path:
    """The directory to load for `--model`: a model, a thinker checkpoint's `model/`, or a LoRA adapter."""
    from omni_grpo import checkpoint as ckpt

    path = Path(path)
    if not path.is_dir():
        raise EvalError(
            f"--model {str(path)!r}: directory not found; pass a checkpoint, a trainer checkpoint "
            "(output_dir/checkpoints/step-NNNNNNN) or a LoRA adapter directory"
        )
    if not _is_model(path) and (path / "checkpoints").is_dir():
        found = ckpt.list_checkpoints(path)
        if not found:
            raise EvalError(f"--model {str(path)!r}: {path / 'checkpoints'} holds no complete checkpoint")
        path = found[-1]
    if not _is_model(path) and (ckpt.STEP_RE.match(path.name) or (path / "COMPLETE").exists()):
        path = path / "model"
    if not _is_model(path):
        raise EvalError(
            f"--model {str(path)!r} has neither config.json (a model) nor adapter_config.json "
            "(a LoRA adapter); pass the checkpoint directory itself"
        )
    return path


def _is_model(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def training_config(model_dir: Path) -> Path | None:
    """The config.yaml the trainer saved next to a checkpoint's `model/` folder, if there is one."""
    candidate = model_dir.parent / "config.yaml"
    if model_dir.name == "model" and (model_dir.parent / "COMPLETE").exists() and candidate.is_file():
        return candidate
    return None


def adapter_base(model_dir: Path, base_model: str | None = None) -> Path | None:
    """The base model of a LoRA adapter directory (None when `model_dir` is not an adapter)."""
    config = model_dir / "adapter_config.json"
    if not config.is_file():
        return None
    base = base_model or json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base or not (Path(base) / "config.json").is_file():
        raise EvalError(
            f"{model_dir} is a LoRA adapter whose base model {base!r} is not a checkpoint directory "
            "here; pass --base-model DIR (the model it was trained from)"
        )
    return Path(base)


# ---------------------------------------------------------------------------------------------- loading


def load_for_eval(
    model_dir: Path,
    dtype,
    device,
    base_model: str | None = None,
    family: str = "auto",
    attn_implementation: str = "sdpa",
):
    """(module, model in eval mode on `device`, processor) for a model, thinker or LoRA adapter directory."""
    from omni_grpo.models import detect_family, get_module

    base = adapter_base(model_dir, base_model)
    weights = base or model_dir
    module = get_module(detect_family(weights) if family == "auto" else family)
    model = module.load_model(weights, dtype=dtype, attn_implementation=attn_implementation)
    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(model_dir))
    has_processor = (model_dir / "tokenizer_config.json").is_file()
    processor = module.load_processor(model_dir if has_processor else weights)
    model.to(device).eval()
    return module, model, processor


def eval_config(model_dir: Path, config: str | None, overrides: list[str]):
    """The TrainConfig whose prompt, generation and reward settings the evaluation uses."""
    from omni_grpo.config import load_config
    from omni_grpo.rewards import check_reward_names
    from omni_grpo.rewards.instructions import check_config_instructions

    path = config if config is not None else training_config(model_dir)
    cfg = load_config(path, [f"model_name_or_path={model_dir}", *overrides])
    check_reward_names(cfg.reward_funcs)
    check_config_instructions(cfg)
    return cfg


def reward_manager(cfg):
    """The config's rewards with their weights, plus any built-in missing from them at weight 0."""
    from omni_grpo.rewards import build_reward_manager

    names = list(cfg.reward_funcs)
    weights = list(cfg.reward_weights) if cfg.reward_weights is not None else [1.0] * len(names)
    for name in BUILT_IN_METRICS:
        if name not in names:
            names.append(name)
            weights.append(0.0)
    return build_reward_manager(
        names, weights, cfg.reward_kwargs, max_consecutive_errors=cfg.max_consecutive_reward_errors
    )


def open_data(dirs: list[str]):
    from omni_grpo.data import PromptDataset
    from preprocess.shards import ShardCorruptError, ShardFormatError

    for d in dirs:
        if not Path(d).is_dir():
            raise EvalError(
                f"--data {d!r}: directory not found; build it with "
                f"bash run_scripts/python.sh -m preprocess --output {d}"
            )
    try:
        return PromptDataset(list(dirs))
    except (ShardFormatError, ShardCorruptError) as err:
        raise EvalError(f"--data: {err}") from None


# ---------------------------------------------------------------------------------------------- running


def evaluate(
    model: str,
    data: list[str],
    output: str = "outputs/eval",
    *,
    config: str | None = None,
    overrides: list[str] = (),
    num_generations: int = 1,
    max_new_tokens: int | None = None,
    limit: int | None = None,
    batch_size: int = 4,
    base_model: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    num_workers: int = 2,
    seed: int | None = None,
    group_by: list[str] = (),
    compare_with: str | None = None,
    progress: bool = True,
    subset: str | None = None,
    ablate: str | None = None,
) -> dict:
    """Generate and score the questions OUT/predictions.jsonl lacks, write OUT/summary.json (and
    OUT/compare.json against the predictions `compare_with`); returns the summary (plus "compare").
    `subset`: a file of question ids; only those are evaluated, and coverage counts them alone.
    `ablate`: one of ABLATIONS, the media the model is kept from (see `ablate_sample`)."""
    import torch
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    from omni_grpo.data import Collate
    from omni_grpo.rewards.accuracy import extract_answer
    from omni_grpo.rollout import sample

    if num_generations < 1 or batch_size < 1 or (limit is not None and limit < 1):
        raise EvalError("--samples, --batch-size and --limit must be >= 1")
    if ablate is not None and ablate not in ABLATIONS:
        raise EvalError(f"--ablate {ablate!r}: use one of {', '.join(ABLATIONS)}")
    other = eval_report.load_predictions(compare_with) if compare_with else None
    wanted = read_subset(subset) if subset is not None else None
    model_dir = resolve_model_dir(model)
    cfg = eval_config(model_dir, config, list(overrides))
    dataset = open_data(data)
    rewards = reward_manager(cfg)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    float_dtype = _dtype(dtype, device)
    max_new_tokens = max_new_tokens or cfg.max_completion_length
    seed = cfg.seed if seed is None else seed
    every = question_ids(dataset)
    chosen = [(i, q) for i, q in enumerate(every) if wanted is None or q in wanted]
    if wanted is not None and not chosen:
        raise EvalError(
            f"--subset {subset}: none of its {len(wanted)} ids is a question of --data "
            f"{' '.join(data)} (e.g. {sorted(wanted)[0]!r}; the shards have e.g. {every[0]!r})"
        )
    positions, ids = [i for i, _ in chosen[:limit]], [q for _, q in chosen[:limit]]
    if not ids:
        raise EvalError(f"--data {' '.join(data)}: the shards hold no questions")
    check_prompt_lengths(cfg, data, dataset, positions, ablate)
    scope = data_coverage(data, wanted, set(every), len(chosen) - len(ids))
    out_dir = Path(output)
    subset_info = (
        None
        if wanted is None
        else {"file": str(Path(subset).resolve()), "questions": len(wanted), "sha256": _ids_digest(wanted)}
    )
    header = run_header(
        model_dir,
        data,
        cfg,
        base_model,
        num_generations=num_generations,
        max_new_tokens=max_new_tokens,
        seed=seed,
        dtype=str(float_dtype).removeprefix("torch."),
        subset=subset_info,
        ablate=ablate,
    )
    done = eval_report.open_run(out_dir, header, num_generations)
    todo = [i for i, question in zip(positions, ids) if question not in done]
    info = dict(
        model=str(model_dir),
        data=[str(d) for d in data],
        num_generations=num_generations,
        decoding="greedy" if num_generations == 1 else "sampled",
        max_new_tokens=max_new_tokens,
        resumed_questions=len(ids) - len(todo),
        subset=subset_info,
        ablate=ablate,
    )
    start = time.time()
    if not todo:
        return _finish(out_dir, ids, rewards, group_by, other, info, start, scope)
    module, net, processor = load_for_eval(
        model_dir, float_dtype, device, base_model, cfg.model_family, cfg.attn_implementation
    )
    collate = Collate(
        module, processor, cfg.system_prompt, cfg.use_audio_in_video, cfg.max_prompt_length, cfg.answer_instructions
    )
    loader = DataLoader(
        Subset(dataset, todo),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate if ablate is None else AblatedCollate(collate, ablate),
    )
    accuracy_options = cfg.reward_kwargs.get("accuracy", {})
    answer_tag = accuracy_options.get("answer_tag", "answer")
    fallback = accuracy_options.get("fallback_to_completion", False)
    torch.manual_seed(seed)
    bar = tqdm(
        total=len(ids),
        initial=len(ids) - len(todo),
        desc="evaluate",
        unit="question",
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar, eval_report.PredictionLog(out_dir) as predictions:
        for batch in loader:
            inputs = batch.inputs.to(device, dtype=float_dtype if float_dtype != torch.float32 else None)
            comps = sample(
                module,
                net,
                processor,
                inputs,
                batch.samples,
                num_generations,
                max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                top_k=cfg.top_k,
                repetition_penalty=cfg.repetition_penalty,
                do_sample=num_generations > 1,
            )
            texts, samples = comps.texts, comps.samples
            scored = rewards(texts, samples)
            row_lengths = comps.completion_mask.sum(-1).tolist()
            predictions.append(
                _prediction(
                    samples[i],
                    i % num_generations,
                    text,
                    extract_answer(text, answer_tag, fallback),
                    scored,
                    i,
                    row_lengths[i],
                    bool(comps.truncated[i]),
                )
                for i, text in enumerate(texts)
            )
            bar.update(len(batch.samples))
    return _finish(out_dir, ids, rewards, group_by, other, info, start, scope)


ABLATIONS = ("video", "audio", "media", "text")
ABLATION_GREY = 128  # the value of every pixel of an ablated video frame or image


def ablate_sample(sample: dict, ablate: str) -> dict:
    """The sample with its media blanked, its prompt's layout unchanged: ``video`` makes every frame (and an
    image) one constant grey of the same size, ``audio`` makes the audio silence of the same length, ``media``
    does both; ``text`` removes the media altogether (the prompt holds no media tokens, the rest as is)."""
    if ablate == "text":
        return {**sample, "modality": "text", "frames": None, "image": None, "audio": None, "has_audio": False}
    out = dict(sample)
    if ablate in ("video", "media"):
        for key in ("frames", "image"):
            if out.get(key) is not None:
                out[key] = np.full_like(np.asarray(out[key]), ABLATION_GREY)
    if ablate in ("audio", "media") and out.get("audio") is not None:
        out["audio"] = np.zeros_like(np.asarray(out["audio"]))
    return out


class AblatedCollate:
    """A `Collate` that blanks each sample's media first (`ablate_sample`)."""

    def __init__(self, collate, ablate: str):
        self.collate, self.ablate = collate, ablate

    def __call__(self, items: list):
        return self.collate([ablate_sample(item, self.ablate) for item in items])


def check_prompt_lengths(cfg, data: list[str], dataset, positions: list[int], ablate: str | None = None) -> None:
    """EvalError, before any model loads, when an evaluated sample (`positions` in `dataset`) has a prompt longer
    than `cfg.max_prompt_length`: counted as training's check counts it (`data_check.exact_token_lists`: the media
    tokens preprocess stored, the text with the model's tokenizer). The line names the first such sample, its
    count, the limit and the fixes. `--ablate text` prompts hold no media tokens: not checked here (the media
    counts would overstate them); `build_inputs` still refuses one that is too long."""
    from omni_grpo.data_check import exact_token_lists

    if ablate == "text":
        return
    counts = [n for part in exact_token_lists(cfg, [p.prompt_tokens for p in dataset.parts], data) for n in part]
    limit = cfg.max_prompt_length
    over = [i for i in positions if counts[i] is not None and counts[i] > limit]
    if not over:
        return
    ids = question_ids(dataset)
    first, longest = over[0], max(counts[i] for i in over)
    more = f" ({len(over)} of the {len(positions)} evaluated samples are over it, the longest {longest})"
    more = more if len(over) > 1 else ""
    raise EvalError(
        f"sample {ids[first]!r}: prompt is {counts[first]} tokens (media included, its text counted with the "
        f"model's tokenizer), over max_prompt_length={limit}{more}; re-run python -m preprocess with "
        f"--max-prompt-tokens {limit} --tokenizer MODEL_DIR to fit them, or raise the limit: "
        f"max_prompt_length={longest} on this command"
    )


def question_ids(dataset) -> list[str]:
    """Every question id of the shards in order (reads no media); a repeated id is an EvalError."""
    ids = [question for part in dataset.parts for question in part.ids]
    seen = set()
    for question in ids:
        if question in seen:
            raise EvalError(
                f"--data holds question id {question!r} twice; predictions are keyed by id, so "
                "evaluate each copy into its own --output"
            )
        seen.add(question)
    return ids


def read_subset(path) -> set[str]:
    """The question ids of a `--subset` file: a JSON list of ids, or one id per line (blank lines and lines
    starting with # ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise EvalError(
            f"--subset {path}: cannot read it ({err.strerror or err}); pass a file of question ids, one per line"
        ) from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as err:
            raise EvalError(f"--subset {path}: not a JSON list of ids ({err})") from None
        if not all(isinstance(item, (str, int)) and not isinstance(item, bool) for item in items):
            raise EvalError(f"--subset {path}: the JSON list must hold question ids (strings)")
        ids = {str(item) for item in items}
    else:
        ids = {line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")}
    if not ids:
        raise EvalError(f"--subset {path} holds no question ids; pass a file with one id per line")
    return ids


def _ids_digest(ids: set[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()


TRUE_DUPLICATE = "duplicate of line"  # a failure line for a repeated record, not a released question


def data_coverage(dirs: list[str], wanted: set[str] | None, in_shards: set[str], not_evaluated: int) -> dict:
    """{released, lost, not_evaluated} for `eval_report.coverage`: the questions the annotation files hold
    (the shards' manifest counts; with `wanted`, those ids), and an entry per released question that is not
    in the shards (preprocess's failures.jsonl; with `wanted`, also the ids found nowhere), its categories
    read back from the source annotation when that is still where preprocess read it."""
    from preprocess.shards import FAILURES_NAME, read_manifest

    released, lost = 0, []
    for d in dirs:
        manifest = read_manifest(d)
        failures = []
        path = Path(d) / FAILURES_NAME
        if path.is_file():
            failures = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        duplicates = sum(str(f.get("reason", "")).startswith(TRUE_DUPLICATE) for f in failures)
        released += int((manifest.get("counts") or {}).get("samples", 0)) - duplicates
        failed = [
            f
            for f in failures
            if not str(f.get("reason", "")).startswith(TRUE_DUPLICATE) and (wanted is None or f.get("id") in wanted)
        ]
        known = _source_questions(manifest) if failed else {}
        lost += [
            {
                "id": f.get("id"),
                "reason": f.get("reason"),
                "path": f.get("path"),
                **known.get(f.get("id"), {"extra": None}),
            }
            for f in failed
        ]
    if wanted is not None:
        released = len(wanted)
        placed = in_shards | {entry["id"] for entry in lost}
        lost += [
            {"id": q, "reason": "not in the shards or their failures.jsonl", "extra": None}
            for q in sorted(wanted - placed)
        ]
    return {"released": released, "lost": lost, "not_evaluated": not_evaluated}


def _source_questions(manifest: dict) -> dict[str, dict]:
    """id -> {problem_type, extra} of every question the manifest's source annotation holds ({} when that
    annotation is not readable here); reads no media."""
    from preprocess.benchmarks import BENCHMARKS
    from preprocess.sources import SourceError, read_jsonl, read_siq2

    source = manifest.get("source") or {}
    kind, split = source.get("kind"), (manifest.get("options") or {}).get("split") or "train"
    try:
        if kind == "jsonl" and source.get("manifest") and Path(source["manifest"]).is_file():
            data = read_jsonl(source["manifest"])
        elif kind == "siq2" and source.get("root"):
            data = read_siq2(source["root"], split)
        elif kind in BENCHMARKS and source.get("root"):
            data = BENCHMARKS[kind].read(source["root"], split)
        else:
            return {}
    except (SourceError, OSError, ValueError):
        return {}
    return {s.id: {"problem_type": s.problem_type, "extra": s.extra} for s in data.samples}


def run_header(model_dir: Path, data: list[str], cfg, base_model: str | None = None, **settings) -> dict:
    """What OUT/run.json records: resolved model, base model and data paths, `settings` and EVAL_SETTINGS."""
    base = adapter_base(model_dir, base_model)
    return {
        "model": str(model_dir.resolve()),
        "base_model": None if base is None else str(base.resolve()),
        "data": [str(Path(d).resolve()) for d in data],
        **settings,
        **{name: getattr(cfg, name) for name in EVAL_SETTINGS},
        **({"answer_instructions": cfg.answer_instructions} if cfg.answer_instructions else {}),
    }


def _finish(out_dir: Path, ids: list[str], rewards, group_by, other, info: dict, start: float, scope: dict) -> dict:
    """Summarise the run's questions into OUT/summary.json, and compare them with `other` if given."""
    wanted = set(ids)
    rows = [row for row in eval_report.load_predictions(out_dir) if row["id"] in wanted]
    summary = eval_report.summarize(rows, rewards.names, rewards.weights, info["num_generations"], group_by)
    summary["coverage"] = eval_report.coverage(rows, scope["released"], scope["lost"], group_by, scope["not_evaluated"])
    summary.update(info, seconds=round(time.time() - start, 2))
    eval_report.write_json(out_dir / eval_report.SUMMARY_FILE, summary)
    if other is not None:
        summary["compare"] = eval_report.compare(rows, other, group_by)
        eval_report.write_json(out_dir / eval_report.COMPARE_FILE, summary["compare"])
    return summary


def _dtype(name: str, device):
    import torch

    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def _prediction(
    sample: dict, generation: int, text: str, parsed: str | None, scored, row: int, length: int, truncated: bool
) -> dict:
    return {
        "id": sample.get("id"),
        "question": sample.get("question"),
        "options": sample.get("options"),
        "answer": sample.get("answer"),
        "problem_type": sample.get("problem_type"),
        "extra": sample.get("extra") or {},
        "generation": generation,
        "completion": text,
        "parsed_answer": parsed,
        "rewards": scored.per_sample[row],
        "total": float(scored.total[row]),
        "length": int(length),
        "truncated": truncated,
    }


# ---------------------------------------------------------------------------------------------- command line


OUTPUTS_HELP = """outputs, in --output (default outputs/eval):
  run.json           the run header (model, data, settings): re-running the same
                     command resumes where it stopped; a different model or
                     setting into the same folder is refused
  predictions.jsonl  one line per completion (question, answer, completion,
                     parsed answer, every reward), written after every batch
  summary.json       accuracy, format rate and every reward's mean, overall and
                     per --group-by category, each with a 95% confidence
                     interval; also printed as a table
  compare.json       with --compare: both runs' accuracy per category, A - B
                     with a 95% paired-bootstrap interval, McNemar's exact p
                     (A = this run, B = the file given)
--compare A B without --model compares two finished runs: it prints the table
and writes compare.json only when --output is given."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m omni_grpo.evaluate",
        epilog=OUTPUTS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Answer held-out questions and score them with the training rewards.",
    )
    parser.add_argument(
        "--model", help="checkpoint dir, trainer checkpoint (step-NNNNNNN or its model/), output_dir, or LoRA adapter"
    )
    parser.add_argument(
        "--data", nargs="+", default=[], help="shard directories written by bash run_scripts/python.sh -m preprocess"
    )
    parser.add_argument("--output", help="the evaluation folder (default outputs/eval); see the list below")
    parser.add_argument(
        "--config",
        help="training YAML for the system prompt, generation and reward options "
        "(default: the checkpoint's config.yaml, else the defaults)",
    )
    parser.add_argument(
        "--samples",
        "--num-generations",
        dest="num_generations",
        type=int,
        default=1,
        metavar="K",
        help="completions per question; 1 = greedy, K > 1 = sampled, pass@1 averaged over K",
    )
    parser.add_argument(
        "--group-by",
        default="",
        metavar="FIELD[,FIELD]",
        help="also report per value of these sample fields (problem_type or a benchmark field)",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="PREDICTIONS",
        help="with --model: another run's predictions.jsonl (or its folder) to compare with; without: two of them, A B",
    )
    parser.add_argument(
        "--ablate",
        choices=ABLATIONS,
        help="keep the model from the media, the prompt's layout unchanged: video = every frame "
        "one grey, audio = silence, media = both, text = no media tokens at all; --compare "
        "with the full run gives the media's contribution",
    )
    parser.add_argument("--max-new-tokens", type=int, help="default: the config's max_completion_length")
    parser.add_argument("--limit", type=int, help="evaluate only the first N questions")
    parser.add_argument(
        "--subset",
        metavar="FILE",
        help="evaluate only these question ids (one per line, or a JSON list), e.g. a published "
        "clean / hard split; coverage then counts these questions",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="questions per generate call")
    parser.add_argument("--base-model", help="base model of a LoRA adapter (default: the path the adapter names)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="auto: bfloat16 on a GPU that supports it, else float32",
    )
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--num-workers", type=int, default=2, help="data-loading processes; 0 = in this process")
    parser.add_argument("--seed", type=int, help="sampling seed (default: the config's seed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show dependencies' warnings and weight-loading bars (same as OMNI_GRPO_VERBOSE=1)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. use_audio_in_video=false")
    args = parser.parse_args(argv)
    from omni_grpo.logging import configure_logging

    configure_logging(0, verbose=args.verbose or os.environ.get("OMNI_GRPO_VERBOSE", "") not in ("", "0"))
    overrides = list(args.overrides)
    data, compare = _paths(args.data, overrides), _paths(args.compare, overrides)
    group_by = [field.strip() for field in args.group_by.split(",") if field.strip()]
    if args.model is None:
        if len(compare) != 2 or data or overrides:
            parser.error("--model and --data are required, or --compare A B (two predictions files) alone")
        return _compare_runs(compare, group_by, args.output)
    if not data or len(compare) > 1:
        parser.error("--model needs --data, and --compare with --model takes one predictions file (B)")
    output = Path(args.output or "outputs/eval")

    from omni_grpo.config import ConfigError
    from omni_grpo.rewards import RewardError

    try:
        metrics = evaluate(
            args.model,
            data,
            str(output),
            config=args.config,
            overrides=overrides,
            num_generations=args.num_generations,
            max_new_tokens=args.max_new_tokens,
            limit=args.limit,
            batch_size=args.batch_size,
            base_model=args.base_model,
            dtype=args.dtype,
            device=args.device,
            num_workers=args.num_workers,
            seed=args.seed,
            group_by=group_by,
            compare_with=compare[0] if compare else None,
            progress=not args.no_progress,
            subset=args.subset,
            ablate=args.ablate,
        )
    except (EvalError, ConfigError, FileNotFoundError, ValueError, RewardError) as err:
        return _error(err)
    print(eval_report.format_summary(metrics))
    headline = "  ".join(f"{key} {_fmt(metrics[key])}" for key in (*BUILT_IN_METRICS.values(), "reward_total"))
    resumed = f", {metrics['resumed_questions']} from an earlier run" if metrics["resumed_questions"] else ""
    ablated = f", ablate {metrics['ablate']}" if metrics.get("ablate") else ""
    print(
        f"{headline}  ({metrics['num_questions']} questions x {metrics['num_generations']}, {metrics['decoding']}"
        f"{ablated}{resumed}, {metrics['seconds']:.1f} s)"
    )
    written = [eval_report.PREDICTIONS_FILE, eval_report.SUMMARY_FILE]
    if "compare" in metrics:
        label = metrics["model"] + (f" (ablate {metrics['ablate']})" if metrics.get("ablate") else "")
        print(eval_report.format_compare(metrics["compare"], label, eval_report.run_label(compare[0])))
        written.append(eval_report.COMPARE_FILE)
    print(f"wrote {', '.join(str(output / name) for name in written)}")
    return 0


def _compare_runs(paths: list[str], group_by: list[str], output: str | None) -> int:
    """--compare A B without a model: print the table, and write OUT/compare.json when --output is given."""
    try:
        result = eval_report.compare(*(eval_report.load_predictions(p) for p in paths), group_by)
    except eval_report.ReportError as err:
        return _error(err)
    print(eval_report.format_compare(result, *map(eval_report.run_label, paths)))
    if output:
        Path(output).mkdir(parents=True, exist_ok=True)
        eval_report.write_json(Path(output) / eval_report.COMPARE_FILE, result)
        print(f"wrote {Path(output) / eval_report.COMPARE_FILE}")
    return 0


def _paths(items: list[str], overrides: list[str]) -> list[str]:
    """The paths among `items`; `key=value` items that are not paths go to `overrides` (nargs="+" takes them)."""
    paths = []
    for item in items:
        (overrides if "=" in item and not Path(item).exists() else paths).append(item)
    return paths


def _error(err: Exception) -> int:
    """One line on stderr, exit code 2; an error re-raised from a data-loader worker keeps its own message only."""
    from omni_grpo.logging import one_line

    print(f"evaluate: error: {one_line(err)}", file=sys.stderr)
    return 2


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
