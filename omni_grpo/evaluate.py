"""python -m omni_grpo.evaluate --model DIR --data SHARDS [SHARDS ...] [--output OUT] [key=value ...]

Answers held-out questions with a base checkpoint, a trained thinker or a LoRA adapter, through exactly the
path training takes: the same model module (`build_inputs` with the same system prompt and
`use_audio_in_video`, towers run once per batch, `models.generate` with media tokens banned) and the same
reward functions and options. Writes

  OUT/metrics.json       accuracy, format_rate, people_focus (means over the completions each reward could
                         score), reward_total (the weighted sum training optimises), every reward's mean and
                         none ratio, completion length, truncation; pass_at_k when k = --num-generations > 1
  OUT/predictions.jsonl  one line per completion: id, question, options, answer, generation, completion,
                         rewards {name: score or null}, total, length, truncated

and prints the metrics. `--num-generations 1` (the default) decodes greedily; k > 1 samples k completions per
question with the config's temperature / top_p / top_k.

--model takes a checkpoint directory with config.json (a full Qwen2.5-Omni checkpoint or a thinker-only one),
a trainer checkpoint `output_dir/checkpoints/step-NNNNNNN` (its `model/` folder is used) or that `model/`
folder, a training `output_dir` (its newest complete checkpoint), or a LoRA adapter directory
(adapter_config.json): the base model it names is loaded with the model module, then the adapter with
`peft.PeftModel.from_pretrained` (--base-model overrides the base path).

Settings come from --config, else from the trainer checkpoint's own config.yaml, else the defaults, then
`key=value` overrides, as in training. The three built-in rewards are always scored; a reward that training
did not use gets weight 0, so `reward_total` stays the training objective.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

BUILT_IN_METRICS = {"accuracy": "accuracy", "format": "format_rate", "people_focus": "people_focus"}


class EvalError(RuntimeError):
    """A model or data directory is missing or unusable; the message says what to pass instead."""


# ---------------------------------------------------------------------------------------------- locating


def resolve_model_dir(path) -> Path:
    """The directory to load for `--model`: a model, a thinker checkpoint's `model/`, or a LoRA adapter."""
    from omni_grpo import checkpoint as ckpt

    path = Path(path)
    if not path.is_dir():
        raise EvalError(f"--model {str(path)!r}: directory not found; pass a checkpoint, a trainer checkpoint "
                        "(output_dir/checkpoints/step-NNNNNNN) or a LoRA adapter directory")
    if not _is_model(path) and (path / "checkpoints").is_dir():
        found = ckpt.list_checkpoints(path)
        if not found:
            raise EvalError(f"--model {str(path)!r}: {path / 'checkpoints'} holds no complete checkpoint")
        path = found[-1]
    if not _is_model(path) and (ckpt.STEP_RE.match(path.name) or (path / "COMPLETE").exists()):
        path = path / "model"
    if not _is_model(path):
        raise EvalError(f"--model {str(path)!r} has neither config.json (a model) nor adapter_config.json "
                        "(a LoRA adapter); pass the checkpoint directory itself")
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
        raise EvalError(f"{model_dir} is a LoRA adapter whose base model {base!r} is not a checkpoint directory "
                        "here; pass --base-model DIR (the model it was trained from)")
    return Path(base)


# ---------------------------------------------------------------------------------------------- loading


def load_for_eval(model_dir: Path, dtype, device, base_model: str | None = None, family: str = "auto",
                  attn_implementation: str = "sdpa"):
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

    path = config if config is not None else training_config(model_dir)
    return load_config(path, [f"model_name_or_path={model_dir}", *overrides])


def reward_manager(cfg):
    """The config's rewards with their weights, plus any built-in missing from them at weight 0."""
    from omni_grpo.rewards import build_reward_manager

    names = list(cfg.reward_funcs)
    weights = list(cfg.reward_weights) if cfg.reward_weights is not None else [1.0] * len(names)
    for name in BUILT_IN_METRICS:
        if name not in names:
            names.append(name)
            weights.append(0.0)
    return build_reward_manager(names, weights, cfg.reward_kwargs,
                                max_consecutive_errors=cfg.max_consecutive_reward_errors)


def open_data(dirs: list[str]):
    from preprocess.shards import ShardCorruptError, ShardFormatError

    from omni_grpo.data import PromptDataset

    for d in dirs:
        if not Path(d).is_dir():
            raise EvalError(f"--data {d!r}: directory not found; build it with python -m preprocess --output {d}")
    try:
        return PromptDataset(list(dirs))
    except (ShardFormatError, ShardCorruptError) as err:
        raise EvalError(f"--data: {err}") from None


# ---------------------------------------------------------------------------------------------- running


def evaluate(model: str, data: list[str], output: str = "outputs/eval", *, config: str | None = None,
             overrides: list[str] = (), num_generations: int = 1, max_new_tokens: int | None = None,
             limit: int | None = None, batch_size: int = 4, base_model: str | None = None, dtype: str = "auto",
             device: str | None = None, num_workers: int = 2, seed: int | None = None,
             progress: bool = True) -> dict:
    """Generate, score and write OUT/metrics.json and OUT/predictions.jsonl; returns the metrics."""
    import torch
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    from omni_grpo.data import Collate
    from omni_grpo.rollout import sample

    if num_generations < 1 or batch_size < 1 or (limit is not None and limit < 1):
        raise EvalError("--num-generations, --batch-size and --limit must be >= 1")
    model_dir = resolve_model_dir(model)
    cfg = eval_config(model_dir, config, list(overrides))
    dataset = open_data(data)
    rewards = reward_manager(cfg)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    float_dtype = _dtype(dtype, device)
    module, net, processor = load_for_eval(model_dir, float_dtype, device, base_model, cfg.model_family,
                                           cfg.attn_implementation)
    max_new_tokens = max_new_tokens or cfg.max_completion_length
    n = len(dataset) if limit is None else min(limit, len(dataset))
    collate = Collate(module, processor, cfg.system_prompt, cfg.use_audio_in_video, cfg.max_prompt_length)
    loader = DataLoader(Subset(dataset, range(n)), batch_size=batch_size, collate_fn=collate,
                        num_workers=num_workers)
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed if seed is None else seed)
    scores, lengths, truncated = [], [], []
    start = time.time()
    with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as predictions:
        for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress, dynamic_ncols=True):
            inputs = batch.inputs.to(device, dtype=float_dtype if float_dtype != torch.float32 else None)
            comps = sample(module, net, processor, inputs, batch.samples, num_generations, max_new_tokens,
                           temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                           repetition_penalty=cfg.repetition_penalty, do_sample=num_generations > 1)
            texts, samples = comps.texts, comps.samples
            scored = rewards(texts, samples)
            row_lengths = comps.completion_mask.sum(-1).tolist()
            for i, text in enumerate(texts):
                predictions.write(json.dumps(_prediction(samples[i], i % num_generations, text, scored, i,
                                                         row_lengths[i], bool(comps.truncated[i]))) + "\n")
            scores.append(scored.scores)
            lengths += row_lengths
            truncated += comps.truncated.tolist()
    metrics = _metrics(rewards, torch.cat(scores), lengths, truncated, num_generations)
    metrics.update(model=str(model_dir), data=[str(d) for d in data], num_questions=n,
                   num_generations=num_generations, decoding="greedy" if num_generations == 1 else "sampled",
                   max_new_tokens=max_new_tokens, seconds=round(time.time() - start, 2))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    return metrics


def _dtype(name: str, device):
    import torch

    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def _prediction(sample: dict, generation: int, text: str, scored, row: int, length: int, truncated: bool) -> dict:
    return {
        "id": sample.get("id"),
        "question": sample.get("question"),
        "options": sample.get("options"),
        "answer": sample.get("answer"),
        "generation": generation,
        "completion": text,
        "rewards": scored.per_sample[row],
        "total": float(scored.total[row]),
        "length": int(length),
        "truncated": truncated,
    }


def _metrics(rewards, scores, lengths: list[int], truncated: list[bool], k: int) -> dict:
    """Means over the completions each reward could score (NaN = could not), as JSON-safe numbers."""
    import torch

    weights = torch.tensor(rewards.weights)
    per_reward = {}
    for f, name in enumerate(rewards.names):
        column = scores[:, f]
        ok = ~torch.isnan(column)
        per_reward[name] = {"mean": _num(column[ok].mean()) if ok.any() else None,
                            "none_ratio": _num(1.0 - ok.float().mean()), "weight": float(weights[f])}
    metrics = {key: per_reward[name]["mean"] for name, key in BUILT_IN_METRICS.items()}
    metrics["reward_total"] = _num(torch.nansum(scores * weights, dim=1).mean())
    if k > 1:
        accuracy = scores[:, rewards.names.index("accuracy")].view(-1, k)
        metrics[f"pass_at_{k}"] = _num((accuracy == 1.0).any(dim=1).float().mean())
    metrics["completion_length"] = sum(lengths) / len(lengths)
    metrics["truncated_ratio"] = sum(truncated) / len(truncated)
    metrics["rewards"] = per_reward
    return metrics


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _num(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omni_grpo.evaluate",
                                     description="Answer held-out questions and score them with the training rewards.")
    parser.add_argument("--model", required=True,
                        help="checkpoint dir, trainer checkpoint (step-NNNNNNN or its model/), output_dir, or LoRA adapter")
    parser.add_argument("--data", required=True, nargs="+", help="shard directories written by python -m preprocess")
    parser.add_argument("--output", default="outputs/eval", help="where metrics.json and predictions.jsonl go")
    parser.add_argument("--config", help="training YAML for the system prompt, generation and reward options "
                                         "(default: the checkpoint's config.yaml, else the defaults)")
    parser.add_argument("--num-generations", type=int, default=1, help="completions per question; 1 = greedy")
    parser.add_argument("--max-new-tokens", type=int, help="default: the config's max_completion_length")
    parser.add_argument("--limit", type=int, help="evaluate only the first N questions")
    parser.add_argument("--batch-size", type=int, default=4, help="questions per generate call")
    parser.add_argument("--base-model", help="base model of a LoRA adapter (default: the path the adapter names)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="auto: bfloat16 on a GPU that supports it, else float32")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--num-workers", type=int, default=2, help="data-loading processes; 0 = in this process")
    parser.add_argument("--seed", type=int, help="sampling seed (default: the config's seed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. use_audio_in_video=false")
    args = parser.parse_args(argv)
    overrides, data = list(args.overrides), []
    for item in args.data:  # `--data A B key=value`: nargs="+" also takes the overrides that follow it
        (overrides if "=" in item and not Path(item).exists() else data).append(item)

    from omni_grpo.config import ConfigError
    from omni_grpo.rewards import RewardError

    try:
        metrics = evaluate(args.model, data, args.output, config=args.config, overrides=overrides,
                           num_generations=args.num_generations, max_new_tokens=args.max_new_tokens,
                           limit=args.limit, batch_size=args.batch_size, base_model=args.base_model,
                           dtype=args.dtype, device=args.device, num_workers=args.num_workers, seed=args.seed,
                           progress=not args.no_progress)
    except (EvalError, ConfigError, FileNotFoundError, ValueError, RewardError) as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 2
    headline = "  ".join(f"{key} {_fmt(metrics[key])}" for key in (*BUILT_IN_METRICS.values(), "reward_total"))
    print(f"{headline}  ({metrics['num_questions']} questions x {metrics['num_generations']}, {metrics['decoding']}, "
          f"{metrics['seconds']:.1f} s)")
    print(f"wrote {Path(args.output) / 'metrics.json'} and {Path(args.output) / 'predictions.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
