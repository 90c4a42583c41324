"""Memory model of one GRPO step per GPU, phase by phase, in the model's dimensions; and its check on a CPU.

Dimensions: decoder layers ``L``, hidden ``H``, attention heads ``n_h``, key/value heads ``n_kv``, head dim
``d``, MLP width ``I``, vocabulary ``V``; parameter counts ``N`` (all), ``N_layer`` (one decoder layer),
``N_towers`` (vision + audio); trainable ``T`` (LoRA adapters, or the language model); prompt ``P``,
completion ``C``, ``G`` completions per prompt, update / log-prob micro-batch ``m`` rows, world size ``W``,
``b`` = 2 bytes (bf16), KV bytes per token per layer ``k = 2·n_kv·d·b``, GQA expansion ``e = n_h / n_kv``
(transformers' sdpa path calls ``repeat_kv`` whenever it passes an attention mask, which the completion pass
over a prompt prefix always does). Terms (bytes per GPU; ZeRO-3 shards weights, gradients and optimizer
state over ``W``):

* resident in every phase: weights ``N·b/W`` (+ the reference copy ``N·b/W`` for full fine-tuning; LoRA
  scores the reference with the adapter off), optimizer state ``T·s/W`` (``s`` bytes per trainable parameter:
  16 under DeepSpeed with fp32 masters — master, Adam m and v, fp32 gradient; 4 for torch AdamW on bf16
  weights, the CPU check, whose bf16 gradients are the update's ``gradients`` term).
* rollout: all weights gathered for the token loop ``N·b·(1 − 1/W)``; KV cache ``L·k·(G·P + G·C)`` with the
  prompt repeated per row (``batch_repeat_interleave``), ``L·k·(P + G·C)`` with one prompt copy; the prefill's
  one-layer working set ``F(P) = P·(4H + 4I)·b`` (residual, normed input, attention output, the MLP's gate,
  up, activation and product alive together).
* reference (no gradient, per micro-batch): gathered ``(2·N_layer + V·H)·b`` (a layer and its prefetch, the
  head); the prompt's recorded keys/values ``L·k·P``; the per-row copies ``L·k·m·P`` (every layer's
  ``keys[inverse]`` is built before the completion pass), none with one copy; the prompt pass's ``F(P)``;
  one layer's attention working set ``k·m·(P + C)·(1 + e)`` (the concatenated prefix and its GQA expansion); the
  vocabulary projection: sliced (LoRA, or one process) ``3·min(1024, m·C)·min(16384, V)·4`` (one float32 tile of
  ``head_logprobs``, its exponentials, its gradient), else (a ZeRO-3 trainable head, run as its module) the chunk
  ``3·m·min(c, C)·V·4`` (``c`` = 256 positions, float32 logits, log-softmax, softmax).
* update (gradient, per micro-batch): as the reference, held through backward, plus saved activations: with
  gradient checkpointing the layer inputs ``L·(P + m·C)·H·b`` and one layer's recompute
  ``(P + m·C)·A`` (``A = (10H + 2·n_kv·d + 4I)·b`` saved bytes per token of a Qwen2 decoder layer: norms
  in float32, q/k/v, attention output, the MLP's gate/up/product) with its attention working set, without it
  ``L·(P + m·C)·A`` and every layer's attention working set; one layer's activation gradients
  ``F(P + m·C)`` on top; gradients ``T·b/W``; sliced with a trainable head, the head's float32 gradient
  ``V·H·4`` while the projection's backward runs. The prompt runs once per micro-batch now (its
  activations ``P`` are in every micro-batch's pass; running it once per group changes compute, not this
  peak). Attention itself is memory-efficient (no ``P²`` score tensor: SDPA's flash/efficient kernels).

``python bench/memory_model.py`` prints the model for Qwen2.5-Omni-3B and -7B at a 60 s clip (the 2,048-token
budget and the 19,573-token prompt of qwen-omni-utils' default frames), G = 8, C = 512, W = 8.
``--check`` runs ``bench/gpu_bench.py``'s step on this CPU at the 3B widths with fewer layers and prints
each phase's measured resident-set growth next to the model's terms for the same run (W = 1).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from omni_grpo.models.head_logprobs import POSITION_BLOCK, VOCAB_SLICE

HERE = Path(__file__).resolve().parent
GB = 2**30


@dataclass(frozen=True)
class Dims:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    params: int  # N: every parameter of the thinker
    layer_params: int  # N_layer
    towers: int  # vision + audio parameters
    lm_params: int  # the language model with its embedding and head (what full fine-tuning trains)
    lora_params: int  # LoRA adapters at rank `lora_r` on the language model's linear layers

    @property
    def kv_bytes(self) -> int:
        """k / b: key + value elements per token per layer."""
        return 2 * self.kv_heads * self.head_dim

    @property
    def expand(self) -> float:
        return self.heads / self.kv_heads


@dataclass(frozen=True)
class Run:
    prompt: int
    completion: int
    generations: int
    micro_batch: int
    world: int = 8
    lora: bool = True
    checkpointing: bool = True
    one_prompt_copy: bool = False  # attend to one copy of the prompt's keys/values
    bytes_per_weight: int = 2
    optimizer_bytes: int = 16  # per trainable parameter (16: DeepSpeed fp32 master + Adam + fp32 grad)
    vocab_chunk: int = 256


def load_gpu_bench():
    name = "bench_gpu_bench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "gpu_bench.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def dims(name: str, layers: int | None = None, tower_layers: int | None = None, lora_r: int = 16) -> Dims:
    """The dimensions and parameter counts of a thinker of `gpu_bench.thinker_config` (built on the meta
    device: no memory), optionally at fewer decoder / tower layers."""
    import torch
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    gb = load_gpu_bench()
    if name == "tiny":
        _, ids = gb.build_processor("tiny")
        config = gb.thinker_config("tiny", ids, max(ids.values()) + 1, layers, tower_layers)
    else:
        config = gb.thinker_config(name, layers=layers, tower_layers=tower_layers)
    with torch.device("meta"):
        model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    return dims_of(model, name, lora_r)


def dims_of(model, name: str = "model", lora_r: int = 16) -> Dims:
    """`Dims` of a Qwen2.5-Omni thinker (real or on the meta device)."""
    import torch

    from omni_grpo.config import LoraConfig
    from omni_grpo.models import get_module
    from omni_grpo.models.base import _getattr_path

    module = get_module("qwen2_5_omni")
    counts = load_gpu_bench()._param_counts(model, module)
    text = model.config.text_config
    layer = _getattr_path(model, module.language_model).layers[0]
    targets = set(LoraConfig().target_modules)
    lora = sum(
        lora_r * (mod.in_features + mod.out_features)
        for mod_name, mod in layer.named_modules()
        if mod_name.split(".")[-1] in targets and isinstance(mod, torch.nn.Linear)
    )
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return Dims(
        name=name,
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        heads=text.num_attention_heads,
        kv_heads=text.num_key_value_heads,
        head_dim=head_dim,
        intermediate=text.intermediate_size,
        vocab=text.vocab_size,
        params=sum(p.numel() for p in model.parameters()),
        layer_params=sum(p.numel() for p in layer.parameters()),
        towers=counts["vision"] + counts["audio"],
        lm_params=counts["decoder"] + counts["embed"] + counts["lm_head"],
        lora_params=lora * text.num_hidden_layers,
    )


def activation_bytes(d: Dims, b: int) -> int:
    """A: bytes a Qwen2 decoder layer saves for backward per token (norm inputs in float32 counted as 2b)."""
    return (10 * d.hidden + d.kv_bytes + 4 * d.intermediate) * b


def layer_working_set(d: Dims, tokens: int, b: int) -> int:
    """Bytes alive at once inside one decoder layer's forward (or its activation gradients in backward):
    the residual, the normed input, the attention output, the MLP's gate, up, activation and product."""
    return tokens * (4 * d.hidden + 4 * d.intermediate) * b


def terms(d: Dims, r: Run) -> dict[str, dict[str, float]]:
    """Phase -> term -> bytes (see the module docstring). `held` terms add up; the phase peak adds the
    largest `transient` term of that phase on top."""
    b, w, L = r.bytes_per_weight, r.world, d.layers
    P, C, G, m = r.prompt, r.completion, r.generations, r.micro_batch or r.generations
    k = d.kv_bytes * b
    trainable = d.lora_params if r.lora else d.lm_params
    resident = {
        "weights": d.params * b / w,
        "reference weights": 0.0 if r.lora else d.params * b / w,
        "optimizer state": trainable * r.optimizer_bytes / w,
    }
    prompt_copies = 1 if r.one_prompt_copy else G
    rollout = {
        "gathered weights (all)": d.params * b * (1 - 1 / w),
        "KV cache": L * k * (prompt_copies * P + G * C),
        "transient: prefill layer": layer_working_set(d, P, b),
    }
    gathered = (2 * d.layer_params + d.vocab * d.hidden) * b if w > 1 else 0.0
    attention = k * m * (P + C) * (1 + d.expand)
    # The vocabulary projection: sliced (omni_grpo.models.head_logprobs: a [positions, slice] float32 tile, its
    # exponentials and its gradient) everywhere but a ZeRO-3 trainable head, which runs as a module per chunk of
    # `vocab_chunk` positions (float32 logits, log-softmax, softmax over the whole vocabulary).
    sliced = r.lora or w == 1
    if sliced:
        vocab = 3 * min(POSITION_BLOCK, m * C) * min(VOCAB_SLICE, d.vocab) * 4
    else:
        vocab = 3 * m * min(r.vocab_chunk, C) * d.vocab * 4
    # sliced with a trainable head: the head's gradient is summed in float32 over the slices, then cast
    head_grad = d.vocab * d.hidden * 4 if sliced and not r.lora else 0.0
    copies = 0.0 if r.one_prompt_copy else L * k * m * P
    reference = {
        "gathered weights (a layer)": gathered,
        "prompt keys/values": L * k * P,
        "prompt copies": copies,
        "transient: prompt pass layer": layer_working_set(d, P, b),
        "transient: attention (one layer)": attention,
        "transient: vocabulary chunk": vocab,
    }
    a = activation_bytes(d, b)
    tokens = P + m * C
    backward = layer_working_set(d, tokens, b)  # one layer's activation gradients
    if r.checkpointing:
        saved = {
            "saved activations (layer inputs)": L * tokens * d.hidden * b,
            "transient: recompute + backward of one layer": tokens * a + attention + backward,
        }
    else:
        saved = {"saved activations": L * tokens * a + L * attention, "transient: backward of one layer": backward}
    update = {
        "gathered weights (a layer)": gathered,
        "prompt keys/values": L * k * P,
        "prompt copies": copies,
        **saved,
        "gradients": trainable * b / w,
        "transient: vocabulary chunk": vocab + head_grad,
    }
    return {"resident": resident, "rollout": rollout, "reference": reference, "update": update}


def phase_peaks(d: Dims, r: Run) -> dict[str, float]:
    """Per phase: what it adds above the resident state (held terms + its largest transient), and the total."""
    t = terms(d, r)
    resident = sum(t["resident"].values())
    out = {"resident": resident}
    for phase in ("rollout", "reference", "update"):
        held = sum(v for n, v in t[phase].items() if not n.startswith("transient"))
        transient = max([v for n, v in t[phase].items() if n.startswith("transient")], default=0.0)
        out[phase] = held + transient
        out[phase + " total"] = resident + held + transient
    return out


def model_table(rows: list[tuple[str, Dims, Run]]) -> str:
    lines = [
        "| model | mode | prompt P | prompt copies | resident GB | rollout GB (KV) | reference GB | update GB | "
        "peak GB |",
        "|" + "---|" * 9,
    ]
    for label, d, r in rows:
        t, pk = terms(d, r), phase_peaks(d, r)
        peak = max(pk["rollout total"], pk["reference total"], pk["update total"])
        lines.append(
            f"| {d.name} | {'LoRA' if r.lora else 'full'} | {r.prompt:,} | "
            f"{'one' if r.one_prompt_copy else 'G'} | {pk['resident'] / GB:.1f} | "
            f"{pk['rollout'] / GB:.1f} ({t['rollout']['KV cache'] / GB:.1f}) | {pk['reference'] / GB:.1f} | "
            f"{pk['update'] / GB:.1f} | {peak / GB:.1f} |"
        )
    return "\n".join(lines)


def terms_table(d: Dims, r: Run) -> str:
    lines = ["| phase | term | GB |", "|---|---|---|"]
    for phase, items in terms(d, r).items():
        for name, value in items.items():
            lines.append(f"| {phase} | {name} | {value / GB:.2f} |")
    return "\n".join(lines)


def evaluate() -> str:
    out = []
    for name in ("3b", "7b"):
        d = dims(name)
        rows = []
        for lora in (True, False):
            for prompt in (2048, 19573):
                for one in (False, True):
                    rows.append(
                        (
                            name,
                            d,
                            Run(
                                prompt=prompt,
                                completion=512,
                                generations=8,
                                micro_batch=8,
                                world=8,
                                lora=lora,
                                one_prompt_copy=one,
                            ),
                        )
                    )
        out.append(
            f"{name}: L={d.layers} H={d.hidden} heads {d.heads}/{d.kv_heads} d={d.head_dim} I={d.intermediate} "
            f"V={d.vocab}; N={d.params / 1e9:.2f}B (towers {d.towers / 1e9:.2f}B), LoRA r=16 "
            f"{d.lora_params / 1e6:.1f}M, language model {d.lm_params / 1e9:.2f}B"
        )
        out.append("")
        out.append(model_table(rows))
        out.append("")
    d = dims("7b")
    r = Run(prompt=19573, completion=512, generations=8, micro_batch=8, world=8, lora=True)
    out.append("7b, LoRA, P = 19,573, G = 8, C = 512, m = 8, W = 8, term by term:")
    out.append("")
    out.append(terms_table(d, r))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ check
MMAP_THRESHOLD = "131072"  # glibc: allocations from 128 KiB up are mapped and unmapped on free


def check(args) -> list[dict]:
    """gpu_bench's step on this CPU at real widths and reduced depth; measured vs modelled growth per phase.

    Run with ``MALLOC_MMAP_THRESHOLD_`` fixed (the script re-executes itself with it): glibc otherwise raises its
    mmap threshold after the first frees and keeps freed tensors resident in its heap, so a phase would reuse
    the previous phase's pages and its resident-set growth would read as ~0."""
    gb = load_gpu_bench()
    import torch

    if args.model == "tiny":  # the test kit's thinker in float32 (gpu_bench --tiny), for a fast smoke run
        bench_args = gb.parse_args(["--tiny", "--modes", *args.modes])
        bench_args.generations, bench_args.completion_length = args.generations, args.completion_length
    else:
        bench_args = gb.parse_args(
            gb.options(
                models=args.model,
                modes=args.modes,
                device="cpu",
                layers=args.layers,
                tower_layers=args.tower_layers,
                generations=args.generations,
                completion_length=args.completion_length,
                seconds=args.seconds,
                max_prompt_tokens=args.max_prompt_tokens,
                steps=1,
                warmup=args.warmup,
                no_gradient_checkpointing=args.no_gradient_checkpointing,
            )
        )
    d = dims(args.model, args.layers, args.tower_layers)
    records = []
    for mode in args.modes:
        rec = gb.run(bench_args, args.model, mode, torch.device("cpu"))
        if rec["error"]:
            records.append(rec)
            continue
        rec["check"] = {
            "model": args.model,
            "layers": args.layers,
            "tower_layers": args.tower_layers,
            "generations": args.generations,
            "completion": args.completion_length,
            "checkpointing": not bench_args.no_gradient_checkpointing,
        }
        records.append(modelled(rec, d))
    return records


def modelled(rec: dict, d: Dims) -> dict:
    """`rec` (a check's measurement) with the model's terms and phase growths for the same run (W = 1)."""
    c = rec["check"]
    r = Run(
        prompt=rec["prompt_tokens"],
        completion=c["completion"],
        generations=c["generations"],
        micro_batch=c["generations"],
        world=1,
        lora=rec["mode"] == "lora",
        checkpointing=c["checkpointing"],
        optimizer_bytes=4,
        bytes_per_weight=4 if c["model"] == "tiny" else 2,
    )
    model = phase_peaks(d, r)
    rec["layers"] = d.layers
    rec["model_gb"] = {
        "rollout": model["rollout"] / GB,
        "ref": model["reference"] / GB,
        "policy": model["update"] / GB,
        "resident": model["resident"] / GB,
        "weights": (d.params * r.bytes_per_weight * (1 if r.lora else 2)) / GB,
    }
    rec["terms_gb"] = {ph: {n: v / GB for n, v in items.items()} for ph, items in terms(d, r).items()}
    return rec


def check_table(records: list[dict]) -> str:
    lines = [
        "| model | mode | layers | prompt tok | frames | phase | measured added GB | modelled GB | measured / model |",
        "|" + "---|" * 9,
    ]
    for rec in records:
        if rec.get("error"):
            lines.append(f"| {rec['model']} | {rec['mode']} | — | — | — | — | {rec['error']} | — | — |")
            continue
        for phase in ("rollout", "ref", "policy"):
            got, want = rec["added_gb"][phase], rec["model_gb"][phase]
            lines.append(
                f"| {rec['model']} | {rec['mode']} | {rec['layers']} | "
                f"{rec['prompt_tokens']} | {rec['frames'][0]}x{rec['frames'][1]}x{rec['frames'][2]} | "
                f"{phase} | {got:.2f} | {want:.2f} | {got / want:.2f} |"
            )
        lines.append(
            f"| {rec['model']} | {rec['mode']} | | | | resident after build | {rec['rss_built_gb']:.2f} | "
            f"{rec['model_gb']['weights']:.2f} weights + the Python/torch runtime (optimizer state is "
            "allocated at the first step) | |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="measure on this CPU and compare (see the docstring)")
    p.add_argument("--model", default="3b", choices=["3b", "7b", "tiny"], help="widths for --check (default: 3b)")
    p.add_argument("--modes", nargs="+", default=["lora"], choices=["lora", "full"])
    p.add_argument("--layers", type=int, default=2, help="decoder layers for --check (default: 2)")
    p.add_argument("--tower-layers", type=int, default=1, help="tower layers for --check (default: 1)")
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--completion-length", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--max-prompt-tokens", type=int, default=2048)
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before the measured one (default: 1)")
    p.add_argument("--json", type=Path, default=None, help="--check: also write the measurements here")
    p.add_argument(
        "--report",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="print the check table of saved --check runs against the current model",
    )
    return p.parse_args(argv)


def main(argv=None):
    import logging
    import warnings

    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("omni_grpo").setLevel(logging.ERROR)
    if args.report:
        records = []
        for path in args.report:
            for rec in json.loads(path.read_text()):
                if not rec.get("error"):
                    c = rec["check"]
                    records.append(modelled(rec, dims(c["model"], c["layers"], c["tower_layers"])))
        print(check_table(records))
        return records
    if not args.check:
        text = evaluate()
        print(text)
        return text
    records = check(args)
    print(check_table(records))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1, default=str))
    return records


if __name__ == "__main__":
    if "--check" in sys.argv[1:] and os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:
        os.execve(
            sys.executable,
            [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]],
            dict(os.environ, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD),
        )
    main()
