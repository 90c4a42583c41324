"""GPU benchmark of one GRPO step on the real Qwen2.5-Omni-3B and -7B thinker shapes (random weights).

No checkpoint is needed for speed: the thinker is built from the public config.json values written out below
(language model, 32-layer vision tower, 32-layer audio encoder) on the meta device, then materialised with
``to_empty`` and initialised on the GPU (``init_weights`` also recomputes the rotary and sinusoid buffers).
The processor is the offline one of ``omni_grpo.tiny_models`` with the real Qwen2 BPE, whose special tokens sit
at the real ids.

One step on one prompt, through the package's own functions (``rollout.sample`` — encode once, one batched
``generate`` — then ``log_probs`` and ``core_algos.policy_loss``):

* a 60 s clip (360x640 source) with its audio in the video, its frames chosen as ``python -m preprocess`` does
  under the prompt budget (``--max-prompt-tokens``, 2048 by default, ``preprocess.budget``): qwen-omni-utils'
  2 fps plan reduced until video + audio (1,500 tokens for 60 s) + text fit, about 2k prompt tokens;
* encode: the vision and audio towers once for the prompt;
* rollout: G = 8 completions of exactly 512 tokens in one batched ``generate`` (the prompt prefilled once;
  ``min_new_tokens`` = ``max_new_tokens``, so EOS cannot end them early);
* ref: reference log-probs (the base model with the adapter off under LoRA, a second copy for full
  training), no gradient;
* policy: policy log-probs with gradient, the GRPO loss, backward, with gradient checkpointing (the decoder
  layers are put in training mode for this pass: Hugging Face checkpoints a layer only when ``training``);
* optimizer: torch's fused AdamW step, as the trainer's one-process engine takes it (LoRA adapters, or every
  language-model weight for ``full``), bf16 weights.

Reported per model x mode: rollout tokens/s (G x 512 / rollout seconds), each phase's seconds and peak
memory (GPU: ``max_memory_allocated``; CPU: the process's resident-set high-water mark, reset at each phase
start through ``/proc/self/clear_refs``, with what the phase added above the resident set it started from),
and the update phase's achieved TFLOP/s and MFU against ``--peak-tflops`` (989 = H100 SXM dense bf16). FLOPs
are counted as 6·N·tokens for the trained language-model part (N = decoder parameters over the positions it
runs: the prompt once per micro-batch — the package's shared-prompt forward; G times with
``--no-share-prompt`` — plus the G·512 completion tokens; and the LM head's parameters over the completion
tokens, where the log-prob pass projects the vocabulary) plus 2·N·tokens for the towers' forward (vision
parameters x patches, audio parameters x encoder frames); the update phase is encode + policy + optimizer.
The reference pass is reported on its own (2·N·tokens). Attention FLOPs are not counted, so MFU is a lower
bound; under LoRA the weight-gradient third of 6·N is not computed, so LoRA's MFU is "model FLOPs"
utilisation, not hardware utilisation.

    python bench/gpu_bench.py                                # 3B and 7B, LoRA and full, on cuda:0
    python bench/gpu_bench.py --models 7b --modes lora --attn flash_attention_2
    python bench/gpu_bench.py --tiny                         # a tiny config on CPU in seconds (the test)
    python bench/gpu_bench.py --models 3b --modes lora --layers 2 --tower-layers 1 --device cpu \
        --completion-length 16 --generations 4    # real widths, reduced depth: bench/memory_model.py --check

One H100/H200 runs the default command (3B and 7B, LoRA and full, one warm-up and one timed step each) in
about 4-6 minutes by the sizes (not measured: no GPU has been lent to this project's benchmark tasks).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import statistics
import time
from pathlib import Path

# The public config.json values of the two thinkers (Qwen/Qwen2.5-Omni-3B, Qwen/Qwen2.5-Omni-7B).
# tie_word_embeddings is False for both: each thinker ships its own lm_head weight.
TEXT = {
    "3b": dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
    ),
    "7b": dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
    ),
}
TEXT_COMMON = dict(
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    use_sliding_window=False,
    sliding_window=32768,
    max_window_layers=28,
    attention_dropout=0.0,
    tie_word_embeddings=False,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    pad_token_id=151643,
    bos_token_id=151644,
    eos_token_id=151645,
)
VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    in_channels=3,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    hidden_act="silu",
    tokens_per_second=25,
)
AUDIO = dict(
    num_mel_bins=128,
    encoder_layers=32,
    encoder_attention_heads=20,
    encoder_ffn_dim=5120,
    d_model=1280,
    n_window=100,
    max_source_positions=1500,
    activation_function="gelu",
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    scale_embedding=False,
)
TOKENS = dict(
    audio_token_index=151646,
    image_token_index=151655,
    video_token_index=151656,
    audio_start_token_id=151647,
    audio_end_token_id=151648,
    position_id_per_seconds=25,
    seconds_per_chunk=2,
    user_token_id=872,
    initializer_range=0.02,
)
PHASES = ("encode", "rollout", "ref", "policy", "optimizer")
SOURCE_SIZE = (360, 640)  # the synthetic clips' frame size (bench/step_bench.py), as a 640x360 source video


def thinker_config(
    name: str,
    ids: dict | None = None,
    vocab_size: int | None = None,
    layers: int | None = None,
    tower_layers: int | None = None,
):
    """The thinker config of `name` ("3b", "7b"), or the test kit's tiny one ("tiny", with `ids`).
    `layers` / `tower_layers`: fewer decoder / tower layers at the same widths (the CPU memory check)."""
    from transformers import Qwen2_5OmniThinkerConfig

    if name == "tiny":
        from omni_grpo.tiny_models import tiny_thinker_config

        return tiny_thinker_config("qwen2_5_omni", vocab_size, ids, hidden=64, layers=layers or 2, init_range=0.02)
    text = dict(TEXT[name], **TEXT_COMMON)
    if layers:
        text["num_hidden_layers"] = layers
    vision, audio = dict(VISION), dict(AUDIO)
    if tower_layers:
        vision["depth"], audio["encoder_layers"] = tower_layers, tower_layers
        vision["fullatt_block_indexes"] = [i for i in VISION["fullatt_block_indexes"] if i < tower_layers]
    hidden = text["hidden_size"]
    config = Qwen2_5OmniThinkerConfig(
        text_config=text,
        vision_config=dict(vision, out_hidden_size=hidden),
        audio_config=dict(audio, output_dim=hidden),
        **TOKENS,
    )
    config.vision_start_token_id, config.vision_end_token_id = 151652, 151653
    config.pad_token_id, config.eos_token_id = 151643, 151645
    return config


def build_thinker(config, device, dtype, attn: str):
    """Random thinker: constructed on the meta device, materialised on `device`, initialised there."""
    import torch
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation=attn)
    model = model.to_empty(device=device)
    model.init_weights()  # weights, and the rotary / sinusoid buffers `to_empty` left uninitialised
    return model.eval()


def build_processor(vocab: str):
    from omni_grpo.tiny_models import _build_processor, _build_tokenizer

    tokenizer, ids = _build_tokenizer(vocab, 400)
    return _build_processor(tokenizer, "qwen2_5_omni"), ids


QUESTION = "Why does the person in the video raise their voice?"
OPTIONS = ["They are nervous.", "They are excited.", "They are angry.", "They are bored."]


def budget_frames(
    seconds: float, fps: float, max_prompt_tokens: int, source: tuple[int, int] = SOURCE_SIZE
) -> tuple[int, tuple[int, int]]:
    """Frame count and (H, W) that ``python -m preprocess`` keeps for a `seconds` clip of `source` frames at 30
    fps with its audio: qwen-omni-utils' plan at `fps`, reduced to fit `max_prompt_tokens` (0: no budget)."""
    from omni_grpo.config import DEFAULT_SYSTEM_PROMPT
    from preprocess.budget import PromptBudget, TextCounter, fit_video, media_tokens, pixel_grid
    from preprocess.media import VideoOptions, _grid_size, min_frames, resized_size, sample_indices

    options = VideoOptions(fps=fps)
    indices, _ = sample_indices(int(round(seconds * 30)), 30.0, options)
    size = resized_size(*source, len(indices), options)
    if not max_prompt_tokens:
        return len(indices), size
    text = TextCounter(DEFAULT_SYSTEM_PROMPT).count(
        QUESTION + "\n" + "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(OPTIONS))
    )
    sound = media_tokens("video", audio_samples=int(16000 * seconds))
    budget = PromptBudget(max_prompt_tokens, text)
    return fit_video(
        len(indices),
        size,
        source,
        text + sound,
        budget,
        min_frames(options),
        lambda h, w, pixels: _grid_size(h, w, pixel_grid() ** 2, pixels, "video"),
    )


def make_sample(seconds: float, fps: float, size: tuple[int, int], seed: int = 0, n_frames: int | None = None) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    n = n_frames or max(2, int(round(seconds * fps)))
    frames = rng.integers(0, 255, (n, size[0], size[1], 3), dtype=np.uint8)
    audio = (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)
    return dict(
        id="bench",
        question=QUESTION,
        options=OPTIONS,
        answer="B",
        problem_type="multiple_choice",
        frames=frames,
        fps=n / seconds,
        audio=audio,
        sample_rate=16000,
    )


@contextlib.contextmanager
def _forced_length(n: int):
    """For the block, every token loop bans stop tokens before `n` new tokens (forced length: no stop token ends a
    row): `generate` looks up `sampling_processors` at each call, and gets it with `min_new_tokens`. Restored
    afterwards, so a caller in the same process (the tests) samples as the package does."""
    import functools

    from omni_grpo.models import sampling

    real = sampling.sampling_processors
    sampling.sampling_processors = functools.partial(getattr(real, "func", real), min_new_tokens=n)
    try:
        yield
    finally:
        sampling.sampling_processors = real


def _rss_gb(key: str) -> float:
    """VmRSS / VmHWM of this process in GiB (Linux), nan elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return math.nan


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        return True
    except OSError:
        return False


class Phases:
    """Seconds and peak memory per phase (CUDA-synchronised on a GPU; resident set on a CPU): `peak_gb` the
    phase's peak, `added_gb` that peak above the memory in use when the phase started."""

    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch
        self.seconds: dict[str, float] = {}
        self.peak_gb: dict[str, float] = {}
        self.added_gb: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        torch = self.torch
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start_gb = torch.cuda.memory_allocated() / 2**30
        else:
            start_gb = _rss_gb("VmRSS") if _reset_rss_peak() else math.nan
        start = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_gb[name] = torch.cuda.max_memory_allocated() / 2**30
        elif math.isfinite(start_gb):
            self.peak_gb[name] = _rss_gb("VmHWM")
        if name in self.peak_gb:
            self.added_gb[name] = self.peak_gb[name] - start_gb
        self.seconds[name] = time.perf_counter() - start


class Bench:
    """One model x mode: the policy (and reference), inputs, optimizer; `step()` times one GRPO step."""

    def __init__(self, args, name: str, mode: str, device):
        import torch

        from omni_grpo.config import LoraConfig, TrainConfig
        from omni_grpo.models import get_module
        from omni_grpo.models.base import base_thinker

        self.args, self.name, self.mode, self.device = args, name, mode, device
        self.dtype = torch.float32 if args.tiny and device.type == "cpu" else torch.bfloat16
        self.module = get_module("qwen2_5_omni")
        self.processor, ids = build_processor("tiny" if args.tiny else "qwen")
        config = thinker_config(name, ids, max(ids.values()) + 1, args.layers, args.tower_layers)
        self.config = config
        torch.manual_seed(0)
        policy = build_thinker(config, device, self.dtype, args.attn)
        for tower in self.module.tower_modules(policy).values():
            tower.requires_grad_(False)
        self.counts = _param_counts(policy, self.module)
        if not args.no_gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.reference = None
        if mode == "lora":
            from peft import LoraConfig as PeftLora
            from peft import get_peft_model

            lm = self.module.language_model.replace(".", r"\.")
            targets = "|".join(LoraConfig().target_modules)
            towers = "|".join(p.split(".")[-1] for p in (self.module.vision_tower, self.module.audio_tower))
            policy = get_peft_model(
                policy,
                PeftLora(
                    r=args.lora_r,
                    lora_alpha=2 * args.lora_r,
                    lora_dropout=0.0,
                    target_modules=rf".*{lm}\..*\.({targets})$",
                    exclude_modules=rf".*\.({towers})\..*",
                ),
            )
        elif args.beta > 0:
            self.reference = build_thinker(
                thinker_config(name, ids, max(ids.values()) + 1, args.layers, args.tower_layers),
                device,
                self.dtype,
                args.attn,
            ).requires_grad_(False)
        self.policy, self.thinker = policy, base_thinker(policy)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in self.params)
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-6, fused=True)  # as the one-process engine builds it
        if args.frame_size:
            n_frames, size = None, tuple(args.frame_size)
        else:
            n_frames, size = budget_frames(args.seconds, args.fps, args.max_prompt_tokens)
        self.frames = (n_frames or max(2, int(round(args.seconds * args.fps))), *size)
        sample = make_sample(args.seconds, args.fps, size, n_frames=n_frames)
        system = TrainConfig.__dataclass_fields__["system_prompt"].default
        inputs = self.module.build_inputs(self.processor, [sample], system, True)
        self.inputs = inputs.to(device, dtype=self.dtype)
        self.prompt_tokens = int(inputs.attention_mask.sum())
        self.vision_patches = int(inputs.pixel_values_videos.shape[0])
        self.audio_frames = int(inputs.feature_attention_mask.sum()) // 2  # after the encoder's stride-2 conv
        tok = self.processor.tokenizer
        self.stop_ids, self.pad_id = self.module.stop_token_ids(tok), self.module.pad_token_id(tok)
        self.banned = self.module.banned_token_ids(tok)
        self.weights_gb = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan

    def step(self) -> Phases:
        import torch

        from omni_grpo import core_algos
        from omni_grpo.engine import training_mode
        from omni_grpo.models import log_probs
        from omni_grpo.rollout import sample

        a, g, c = self.args, self.args.generations, self.args.completion_length
        ph = Phases(self.device)
        inputs = self.inputs
        # The trainer's sampling path (encode once, one batched generate, texts decoded, rows repeated).
        with _forced_length(c):
            comps = sample(self.module, self.policy, self.processor, inputs, [{}], g, c, timer=ph, do_sample=True)
        # Forced length: no stop token ends a row, so every completion token is scored.
        ids, mask = comps.completion_ids, torch.ones_like(comps.completion_ids)
        rows = comps.inputs
        advantages = core_algos.group_advantages(torch.randn(g, device=self.device), g)
        mb = a.micro_batch or g
        share = not a.no_share_prompt
        ref = None
        if a.beta > 0:
            with ph("ref"), torch.no_grad():
                parts = []
                for s in range(0, g, mb):
                    part = rows.select(list(range(s, s + mb)))
                    if self.reference is not None:
                        parts.append(
                            log_probs(
                                self.module, self.reference, part, ids[s : s + mb], mask[s : s + mb], share_prompt=share
                            )[0]
                        )
                    else:
                        with self.policy.disable_adapter():
                            parts.append(
                                log_probs(
                                    self.module,
                                    self.policy,
                                    part,
                                    ids[s : s + mb],
                                    mask[s : s + mb],
                                    share_prompt=share,
                                )[0]
                            )
                ref = torch.cat(parts)
        with ph("policy"), training_mode(self.thinker):
            tokens, seqs = mask.sum().float(), torch.tensor(float(g), device=self.device)
            for s in range(0, g, mb):
                part = rows.select(list(range(s, s + mb)))
                # with_entropy as in the trainer's policy pass (its metrics log the entropy)
                lp, _ = log_probs(
                    self.module,
                    self.policy,
                    part,
                    ids[s : s + mb],
                    mask[s : s + mb],
                    with_entropy=True,
                    share_prompt=share,
                )
                loss, _ = core_algos.policy_loss(
                    lp,
                    lp.detach(),
                    advantages[s : s + mb],
                    mask[s : s + mb].to(lp.dtype),
                    0.2,
                    0.2,
                    "token_mean",
                    ref_log_probs=None if ref is None else ref[s : s + mb],
                    beta=a.beta,
                    global_tokens=tokens,
                    global_seqs=seqs,
                    max_length=c,
                )
                loss.backward()
        with ph("optimizer"):
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        inputs.encoded = None
        return ph

    def flops(self) -> dict[str, float]:
        """Counted FLOPs per phase (see the module docstring)."""
        g, c, n = self.args.generations, self.args.completion_length, self.counts
        mb = self.args.micro_batch or g
        # positions the language model runs: the prompt once per micro-batch with the shared-prompt forward
        prompt_runs = g // mb if not self.args.no_share_prompt else g
        lm_tokens = prompt_runs * self.prompt_tokens + g * c
        lm_pass = n["decoder"] * lm_tokens + n["lm_head"] * g * c  # parameters x tokens of one forward
        towers = 2 * (n["vision"] * self.vision_patches + n["audio"] * self.audio_frames)
        return {
            "encode": towers,
            "ref": 2 * lm_pass if self.args.beta > 0 else 0.0,
            "policy": 6 * lm_pass,
            "rollout": 2 * n["decoder"] * (self.prompt_tokens + g * c) + 2 * n["lm_head"] * g * c,
        }

    def close(self) -> None:
        import torch

        self.policy = self.thinker = self.reference = self.optimizer = self.params = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _param_counts(model, module) -> dict[str, int]:
    from omni_grpo.models.base import _getattr_path

    lm = _getattr_path(model, module.language_model)
    embed = lm.embed_tokens.weight.numel()
    return {
        "decoder": sum(p.numel() for p in lm.parameters()) - embed,
        "lm_head": model.lm_head.weight.numel(),
        "embed": embed,
        "vision": sum(p.numel() for p in _getattr_path(model, module.vision_tower).parameters()),
        "audio": sum(p.numel() for p in _getattr_path(model, module.audio_tower).parameters()),
    }


def run(args, name: str, mode: str, device) -> dict:
    """Warm-up and timed steps of one model x mode; an out-of-memory error is reported, not raised."""
    import torch

    rec = {"model": name, "mode": mode, "device": str(device), "error": None}
    bench = None
    try:
        bench = Bench(args, name, mode, device)
        rec.update(
            prompt_tokens=bench.prompt_tokens,
            trainable=bench.trainable,
            params=bench.counts,
            weights_gb=bench.weights_gb,
        )
        rec.update(frames=bench.frames, rss_built_gb=_rss_gb("VmRSS") if device.type == "cpu" else math.nan)
        steps = [bench.step() for _ in range(args.warmup + args.steps)][args.warmup :]
        seconds = {p: statistics.median(s.seconds.get(p, 0.0) for s in steps) for p in PHASES}
        peak = {p: max((s.peak_gb.get(p, math.nan) for s in steps), default=math.nan) for p in PHASES}
        rec["added_gb"] = {p: max((s.added_gb.get(p, math.nan) for s in steps), default=math.nan) for p in PHASES}
        flops = bench.flops()
        update_s = seconds["encode"] + seconds["policy"] + seconds["optimizer"]
        update_flops = flops["encode"] + flops["policy"]
        rec.update(
            seconds=seconds,
            peak_gb=peak,
            flops=flops,
            rollout_tokens_per_s=args.generations * args.completion_length / seconds["rollout"],
            update_s=update_s,
            update_tflops=update_flops / update_s / 1e12,
            ref_tflops=flops["ref"] / seconds["ref"] / 1e12 if seconds["ref"] else math.nan,
            step_s=sum(seconds.values()),
        )
        rec["update_mfu"] = rec["update_tflops"] / args.peak_tflops if device.type == "cuda" else math.nan
    except torch.cuda.OutOfMemoryError as exc:
        rec["error"] = f"out of GPU memory: {str(exc).splitlines()[0][:200]}"
    finally:
        if bench is not None:
            bench.close()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rec


def table(records: list[dict], args) -> str:
    head = (
        "| model | mode | prompt tok | trainable | rollout tok/s | encode s | rollout s | ref s | policy s | "
        "optimizer s | step s | update TFLOP/s | update MFU | ref TFLOP/s | peak GB enc/roll/ref/pol/opt |\n|"
        + "---|"
        * 15
    )
    lines = [head]
    for r in records:
        if r["error"]:
            lines.append(
                f"| {r['model']} | {r['mode']} | {r.get('prompt_tokens', '—')} | — | "
                + " | ".join(["—"] * 10)
                + f" | {r['error']} |"
            )
            continue
        s, pk = r["seconds"], r["peak_gb"]
        mfu = f"{100 * r['update_mfu']:.1f}%" if math.isfinite(r["update_mfu"]) else "—"
        peaks = "/".join("—" if not math.isfinite(pk[p]) else f"{pk[p]:.1f}" for p in PHASES)
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['prompt_tokens']} | {r['trainable'] / 1e6:.3g}M | "
            f"{r['rollout_tokens_per_s']:.1f} | {s['encode']:.3f} | {s['rollout']:.2f} | {s['ref']:.3f} | "
            f"{s['policy']:.3f} | {s['optimizer']:.3f} | {r['step_s']:.2f} | {r['update_tflops']:.3g} | {mfu} | "
            f"{r['ref_tflops']:.3g} | "
            f"{peaks} |"
        )
    return "\n".join(lines)


def options(**values) -> list[str]:
    """The command line of `parse_args` for these options, named as in Python (``completion_length=16`` ->
    ``--completion-length 16``; a list gives several values, True a bare flag, None or False nothing): how the
    scripts that run this benchmark's step pass it their settings."""
    argv = []
    for name, value in values.items():
        if value is None or value is False:
            continue
        argv.append("--" + name.replace("_", "-"))
        if value is not True:
            argv += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    return argv


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["3b", "7b"], choices=["3b", "7b"])
    p.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    p.add_argument("--generations", type=int, default=8, help="G (default: 8)")
    p.add_argument("--completion-length", type=int, default=512, help="forced new tokens (default: 512)")
    p.add_argument("--seconds", type=float, default=60.0, help="clip length (default: 60)")
    p.add_argument("--fps", type=float, default=2.0, help="frames per second before the budget (default: 2)")
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=2048,
        help="preprocess's prompt budget that chooses the frames (default: 2048; 0: qwen-omni-utils' "
        "frames, 19.6k tokens at 60 s)",
    )
    p.add_argument(
        "--frame-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="frame size, multiples of 28, at --fps, instead of the budget's frames",
    )
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default: the model's)")
    p.add_argument("--tower-layers", type=int, default=None, help="vision and audio tower layers (default: 32)")
    p.add_argument("--micro-batch", type=int, default=0, help="rows per log-prob pass; 0 = all G (default)")
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient; 0 = no reference pass")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = 2r, default r: 16)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument(
        "--no-share-prompt",
        action="store_true",
        help="every row runs its own prompt in the log-prob passes (the package's share_prompt=false)",
    )
    p.add_argument("--steps", type=int, default=1, help="timed steps (default: 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100 SXM: 989)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="the test kit's tiny thinker, G=2, 8 tokens, a 2 s clip of 56x84 frames; runs on CPU",
    )
    args = p.parse_args(argv)
    if args.tiny:
        args.models, args.modes = ["tiny"], args.modes
        args.generations, args.completion_length, args.seconds = 2, 8, 2.0
        args.frame_size, args.steps, args.warmup = [56, 84], 1, 1
    if args.micro_batch and args.generations % args.micro_batch:
        p.error(f"--micro-batch {args.micro_batch} must divide G={args.generations}")
    return args


def main(argv=None) -> list[dict]:
    import logging
    import warnings

    import torch
    import transformers

    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    logging.getLogger("omni_grpo").setLevel(logging.ERROR)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    frames = (
        f"{args.frame_size[0]}x{args.frame_size[1]} at {args.fps:g} fps"
        if args.frame_size
        else f"{args.fps:g} fps under a {args.max_prompt_tokens}-token budget"
    )
    started = time.perf_counter()
    print(
        f"gpu benchmark on {where}; torch {torch.__version__}, transformers {transformers.__version__}; "
        f"G={args.generations}, {args.completion_length} forced tokens, {args.seconds:g} s clip ({frames}), "
        f"attn {args.attn}, gradient checkpointing "
        f"{'off' if args.no_gradient_checkpointing else 'on'}"
        f", beta {args.beta}, shared prompt {'off' if args.no_share_prompt else 'on'}",
        flush=True,
    )
    records = []
    for name in args.models:
        for mode in args.modes:
            rec = run(args, name, mode, device)
            records.append(rec)
            status = rec["error"] or f"step {rec['step_s']:.2f} s, rollout {rec['rollout_tokens_per_s']:.1f} tok/s"
            print(f"[{name} {mode}] {status}", flush=True)
    print(table(records, args))
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1, default=str))
    return records


if __name__ == "__main__":
    main()
