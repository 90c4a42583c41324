"""ms-swift's GRPO (``swift rlhf --rlhf_type grpo``) as a bench system, in a virtual environment of its own.

ms-swift pins its own transformers and TRL, so it runs in ``.swift-venv`` at the repository root (git-ignored;
outside bench/, whose sources the security test walks), which the bench creates on first use: ``VENV_PACKAGES``
with pip (ms-swift imports ``msgspec`` without declaring it, and its
Qwen2.5-Omni loader needs ``qwen-omni-utils``, ``soundfile``, ``decord``). The bench's side (this file imported
by ``step_bench``/``scale_bench`` in the project's environment) prepares, from the same files as the other
systems:

* a full ``Qwen2_5OmniForConditionalGeneration`` checkpoint around the bench's thinker (``wrap_checkpoint``):
  ms-swift loads that class, not a thinker-only folder. The thinker's config and weights (keys under
  ``thinker.``), a minimal talker config, ``enable_audio_output: false`` (no talker or token2wav is built) and
  an empty ``spk_dict.pt`` beside the weights (the class's ``from_pretrained`` reads it);
* the dataset (``dataset_rows``): ``messages`` with ``<video>`` before the question in the user turn,
  ``videos: [path]`` (the mp4, decoded by ms-swift at every step), ``solution`` and the answer's fields for the
  rewards, and ``chat_template_kwargs`` pinning the frame plan of our shard (``nframes``, ``resized_height``,
  ``resized_width``), so ms-swift's prompt holds the same frames as ours;
* the rewards through ``--external_plugins bench/swift_plugin.py`` (``omni_grpo.rewards``' format + accuracy).
* sampling as ours: the worker's generation config bans the media placeholder tokens (``banned_tokens``; ms-swift
  has no option for it, and a sampled ``<|VIDEO|>`` breaks its log-prob forward) and, where the bench forces
  the completion length, the stop tokens before it (``min_new_tokens``).

The worker (this file with ``--worker``, run by the venv's Python) calls ms-swift's ``rlhf_main`` in-process
with ``--callbacks omni_bench``: that callback pauses training at the end of every optimizer step until the
driver asks for the next one, and reports the step's phases, timed by wrapping ms-swift's own methods with an
exclusive timer (a phase nested in another is taken out of the outer one): ``data`` = ``Template.encode``
(the video and audio decode and the processor, every time a sample is encoded), ``rollout`` =
``_generate_completions``, ``rewards`` = ``_score_completions``, ``ref`` / ``old`` / ``policy`` =
``_get_per_token_logps_and_entropies`` without gradient on the reference / on the policy, and with gradient
(+ ``accelerator.backward``), ``optimizer`` = between the optimizer callbacks. Tower calls are counted by
forward hooks on the vision and audio towers of the policy and the reference, as for the other systems.

Environment of the worker: ``USE_AUDIO_IN_VIDEO=true``, ``ENABLE_AUDIO_OUTPUT=false``, the hub-offline
variables (nothing is fetched), no GPU, ``SWIFT_AUDIO_LOAD_BACKEND=soundfile_pyav`` where no ``ffmpeg``
program is installed (librosa's default reader needs it for mp4).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = ROOT / ".swift-venv"
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
VENV_PACKAGES = ["ms-swift==4.6.0", "msgspec", "qwen-omni-utils==0.0.9", "soundfile", "decord", "av", "librosa"]
MARK = "@@swift "
REWARD_FUNCS = ["omni_format", "omni_accuracy"]
# The talker is never built (enable_audio_output is false); its config only has to parse.
MINIMAL_TALKER = dict(
    hidden_size=64,
    embedding_size=64,
    intermediate_size=128,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
)
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "MODELSCOPE_OFFLINE": "1",
    "USE_HF": "1",
}


# --------------------------------------------------------------------------------------- environment
def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def venv_ready(venv: Path = VENV) -> bool:
    return (venv / ".omni-bench-ready").exists()


def ensure_venv(venv: Path = VENV, log=print) -> Path:
    """The ms-swift environment's Python, creating the environment first where it is missing (minutes)."""
    ready = venv / ".omni-bench-ready"
    if ready.exists():
        return venv_python(venv)
    log(f"creating the ms-swift environment in {venv} (first use; a few minutes)")
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv_python(venv)), "-m", "pip", "install", "-q", *TORCH],
        [str(venv_python(venv)), "-m", "pip", "install", "-q", *VENV_PACKAGES],
    ]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            tail = " | ".join(done.stderr.strip().splitlines()[-2:])
            raise RuntimeError(
                f"could not create the ms-swift environment ({' '.join(cmd[-3:])}): {tail[-300:]}; "
                f"remove {venv} and rerun, or leave ms-swift out of --systems"
            )
    ready.write_text(" ".join(TORCH + VENV_PACKAGES) + "\n")
    return venv_python(venv)


def worker_env(threads: int = 0) -> dict:
    env = dict(
        os.environ,
        **OFFLINE,
        USE_AUDIO_IN_VIDEO="true",
        ENABLE_AUDIO_OUTPUT="false",
        CUDA_VISIBLE_DEVICES="",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    if shutil.which("ffmpeg") is None:
        env["SWIFT_AUDIO_LOAD_BACKEND"] = "soundfile_pyav"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


# ------------------------------------------------------------------------------------------ inputs
def wrap_checkpoint(thinker_dir: Path, out: Path) -> Path:
    """A full Qwen2.5-Omni checkpoint folder around the thinker in `thinker_dir` (see the module docstring)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2_5OmniConfig

    if (out / "spk_dict.pt").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    thinker = json.loads((thinker_dir / "config.json").read_text())
    vocab = thinker.get("text_config", {}).get("vocab_size", 152064)
    talker = dict(MINIMAL_TALKER, vocab_size=max(vocab, 152064))
    config = Qwen2_5OmniConfig(thinker_config=thinker, talker_config=talker, enable_audio_output=False)
    config.architectures = ["Qwen2_5OmniForConditionalGeneration"]
    config.save_pretrained(out)
    for f in thinker_dir.iterdir():
        if f.is_file() and f.name not in ("config.json", "model.safetensors", "model.safetensors.index.json"):
            shutil.copy2(f, out / f.name)
    weights = load_file(thinker_dir / "model.safetensors")
    save_file(
        {f"thinker.{k}": v.contiguous() for k, v in weights.items()},
        out / "model.safetensors",
        metadata={"format": "pt"},
    )
    torch.save({}, out / "spk_dict.pt")
    return out


def dataset_rows(manifest: Path, frames: dict, system_prompt: str) -> list[dict]:
    """ms-swift's rows for the manifest's samples (the question as ours words it; `frames`: id -> plan)."""
    from omni_grpo.models import get_module

    module = get_module("qwen2_5_omni")
    rows = []
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        sample = json.loads(line)
        messages = module.build_messages(sample, system_prompt, True)
        text = "".join(c["text"] for c in messages[1]["content"] if c["type"] == "text")
        row = {
            "messages": [{"role": "system", "content": system_prompt}, {"role": "user", "content": "<video>" + text}],
            "videos": [str((manifest.parent / sample["video"]).resolve())],
            "solution": sample["answer"],
            "options": sample["options"],
            "problem_type": "multiple_choice",
        }
        plan = frames.get(sample["id"])
        if plan is not None:
            row["chat_template_kwargs"] = {"nframes": plan[0], "resized_height": plan[1], "resized_width": plan[2]}
        rows.append(row)
    return rows


def check_rows(rows: list[dict]) -> None:
    """Raise ValueError where a row is not what ms-swift's GRPO dataset reader takes for one video."""
    for i, row in enumerate(rows):
        user = [m for m in row.get("messages", []) if m.get("role") == "user"]
        if len(user) != 1 or user[0]["content"].count("<video>") != len(row.get("videos", [])):
            raise ValueError(f"row {i}: one user turn with one <video> per entry of videos is needed")
        if not all(Path(v).is_absolute() and Path(v).exists() for v in row["videos"]):
            raise ValueError(f"row {i}: videos must be existing absolute paths, got {row['videos']}")
        if "solution" not in row:
            raise ValueError(f"row {i}: the rewards need a solution column")
        kwargs = row.get("chat_template_kwargs", {})
        if kwargs and (
            set(kwargs) != {"nframes", "resized_height", "resized_width"}
            or kwargs["resized_height"] % 28
            or kwargs["resized_width"] % 28
        ):
            raise ValueError(f"row {i}: chat_template_kwargs must pin nframes and a 28-multiple size, got {kwargs}")


def banned_tokens(model_dir: Path) -> list[int]:
    """The token ids ours never samples (the media placeholders), from the bench model's tokenizer."""
    from omni_grpo.models import get_module

    module = get_module("qwen2_5_omni")
    return [int(i) for i in module.banned_token_ids(module.load_processor(model_dir).tokenizer)]


def swift_argv(checkpoint: Path, dataset: Path, s, rounds: int) -> list[str]:
    """`swift rlhf` arguments matching the bench's settings `s` (step_bench.Settings)."""
    g, mb = s.generations, s.micro_batch
    args = dict(
        rlhf_type="grpo",
        model=checkpoint,
        model_type="qwen2_5_omni",
        dataset=dataset,
        tuner_type="full",
        torch_dtype="float32",
        freeze_vit="true",
        freeze_aligner="true",
        num_generations=g,
        per_device_train_batch_size=mb,
        gradient_accumulation_steps=g // mb,
        steps_per_generation=g // mb,
        max_completion_length=s.completion_length,
        max_length=32768,
        temperature=s.temperature,
        top_p=1.0,
        top_k=-1,
        beta=s.beta,
        epsilon=0.2,
        loss_type="dapo",
        num_iterations=1,
        learning_rate=s.learning_rate,
        lr_scheduler_type="constant",
        warmup_ratio=0.0,
        max_grad_norm=1.0,
        weight_decay=0.0,
        max_steps=rounds,
        save_strategy="no",
        report_to="none",
        logging_steps=10**9,
        dataloader_num_workers=0,
        use_vllm="false",
        split_dataset_ratio=0.0,
        dataset_shuffle="false",
        seed=s.seed,
        gradient_checkpointing="false",
        log_completions="false",
        output_dir=s.out / "swift",
        external_plugins=HERE / "swift_plugin.py",
        check_model="false",
        callbacks="omni_bench",
    )
    argv = [f"--{k}={v}" for k, v in args.items()]
    return argv + ["--reward_funcs", *REWARD_FUNCS]


class Swift:
    """The driver's side: ms-swift training in a worker process of its environment, one step per call."""

    name = "swift"

    def __init__(self, s, rounds: int, threads: int = 0):
        from omni_grpo.config import DEFAULT_SYSTEM_PROMPT

        python = ensure_venv()
        work = s.out / "swift-inputs"
        work.mkdir(parents=True, exist_ok=True)
        checkpoint = wrap_checkpoint(s.model_dir, s.model_dir.parent / (s.model_dir.name + "-omni-full"))
        rows = dataset_rows(s.manifest, s.frames, DEFAULT_SYSTEM_PROMPT)
        check_rows(rows)
        dataset = work / "data.jsonl"
        dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
        self.log = work / "worker.log"
        self.stderr = open(self.log, "w")
        self.proc = subprocess.Popen(
            [str(python), str(Path(__file__).resolve()), "--worker"],
            env=worker_env(threads),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            cwd=str(work),
        )
        self._send(
            json.dumps(
                {
                    "argv": swift_argv(checkpoint, dataset, s, rounds),
                    "threads": threads,
                    "min_new_tokens": s.min_new_tokens,
                    "suppress_tokens": banned_tokens(s.model_dir),
                }
            )
        )
        msg = self._receive()
        if "error" in msg:
            self.close()
            raise RuntimeError(msg["error"])
        self.built = msg

    def _send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _receive(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        self.proc.wait()
        tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
        return {"error": f"ms-swift worker exited with {self.proc.returncode}: {' | '.join(tail)[-500:]}"}

    def step(self) -> dict:
        """One optimizer step: its wall time and what the worker reported (step_bench.StepResult's fields)."""
        start = time.perf_counter()
        self._send("step")
        msg = self._receive()
        wall = time.perf_counter() - start
        if "error" in msg:
            raise RuntimeError(msg["error"])
        return dict(msg, wall=wall)

    def close(self) -> dict:
        """Stop the worker; its resident-set peak over the steps (GB) where it could report one."""
        memory = {}
        if self.proc.poll() is None:
            try:
                self._send("close")
                msg = self._receive()
                if "peak_step_gb" in msg and self.built.get("peak_reset"):
                    memory = {"peak_step_gb": msg["peak_step_gb"]}
                self.proc.stdin.close()
                self.proc.wait(timeout=120)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        return memory


# ------------------------------------------------------------------------------------------- worker
def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset this process's resident-set high-water mark (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Phases:
    """Exclusive seconds per phase: time spent in a phase nested in another is not counted in the outer one."""

    def __init__(self):
        self.totals: dict[str, float] = {}
        self._children: list[float] = []
        self.names: list[str] = []  # the phases running now, outermost first

    def wrap(self, phase, fn):
        def timed(*args, **kwargs):
            name = phase(*args, **kwargs) if callable(phase) else phase
            self._children.append(0.0)
            self.names.append(name)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                self.names.pop()
                inner = self._children.pop()
                self.totals[name] = self.totals.get(name, 0.0) + spent - inner
                if self._children:
                    self._children[-1] += spent

        return timed

    def add(self, name: str, seconds: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + seconds
        if self._children:
            self._children[-1] += seconds

    def pop(self) -> dict[str, float]:
        out, self.totals = self.totals, {}
        return out


def sampling_as_ours(min_new_tokens: int, banned: list[int]) -> None:
    """ms-swift's generation bans the media placeholder tokens, as ours and the other systems do (a sampled
    `<|VIDEO|>` makes its log-prob forward fail: more placeholders than media features), and with
    `min_new_tokens` > 0 its stop tokens before that many new tokens (a benchmark setting, as for the other
    systems, so that completions reach the length being measured). It has no option for either."""
    from swift.infer_engine import TransformersEngine

    prepare = TransformersEngine._prepare_generation_config

    def ours(self, request_config):
        config = prepare(self, request_config)
        if min_new_tokens:
            config.min_new_tokens = min_new_tokens
        if banned:
            config.suppress_tokens = list(banned)
        return config

    TransformersEngine._prepare_generation_config = ours


def worker() -> None:
    """Runs in the ms-swift environment: a JSON request on stdin, then "step" / "close" lines."""
    import torch
    from swift.callbacks import TrainerCallback, callbacks_map
    from swift.pipelines import rlhf_main
    from swift.template import Template

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what ms-swift prints goes to the log, not into the protocol

    def reply(obj) -> None:
        proto.write(MARK + json.dumps(obj) + "\n")

    request = json.loads(sys.stdin.readline())
    if request.get("threads"):
        torch.set_num_threads(request["threads"])
    phases = Phases()
    towers = {"calls": 0}
    prompt_lengths: list[int] = []
    encode = phases.wrap("data", Template.encode)

    def encode_and_count(self, inputs, *args, **kwargs):
        rollout = "rollout" in phases.names  # the generation's encode: the prompt alone
        out = encode(self, inputs, *args, **kwargs)
        if rollout and isinstance(out, dict) and out.get("input_ids") is not None:
            prompt_lengths.append(len(out["input_ids"]))
        return out

    Template.encode = encode_and_count

    def tower(model, name: str):
        thinker = getattr(model, "thinker", model)
        return getattr(getattr(thinker, "model", thinker), name, None) or getattr(thinker, name)

    def hook(model) -> None:
        def vision(_module, args, kwargs, _out):
            grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
            towers["calls"] += int(grid.shape[0]) if grid is not None else 1

        def audio(_module, args, kwargs, _out):
            lens = kwargs.get("feature_lens")
            towers["calls"] += int(lens.shape[0]) if lens is not None else 1

        tower(model, "visual").register_forward_hook(vision, with_kwargs=True)
        tower(model, "audio_tower").register_forward_hook(audio, with_kwargs=True)

    class Pause(TrainerCallback):
        def __init__(self, args, trainer):
            super().__init__(args, trainer)
            t = trainer
            t._generate_completions = phases.wrap("rollout", t._generate_completions)
            t._score_completions = phases.wrap("rewards", t._score_completions)

            def logps_phase(model, *a, **k):
                if torch.is_grad_enabled():
                    return "policy"
                return "ref" if model is getattr(t, "ref_model", None) else "old"

            t._get_per_token_logps_and_entropies = phases.wrap(logps_phase, t._get_per_token_logps_and_entropies)
            self._opt = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            t = self.trainer
            t.accelerator.backward = phases.wrap("policy", t.accelerator.backward)
            for m in (t.model, getattr(t, "ref_model", None)):
                if m is not None:
                    hook(t.accelerator.unwrap_model(m))
            phases.pop()
            towers["calls"] = 0
            prompt_lengths.clear()
            reply({"ready": True, "rss_built_gb": _status_kb("VmRSS") / 2**20, "peak_reset": _reset_peak()})
            if not self._wait():
                control.should_training_stop = True

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self._opt = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            phases.add("optimizer", time.perf_counter() - self._opt)

        def on_step_end(self, args, state, control, **kwargs):
            t = self.trainer
            lengths = t._metrics["train"].get("completions/mean_length") or [math.nan]
            reply(
                {
                    "rows": t.num_generations,
                    "phases": phases.pop(),
                    "tower_calls": towers["calls"],
                    "completion_tokens": lengths[-1],
                    "prompt_tokens": max(prompt_lengths, default=0),
                }
            )
            towers["calls"] = 0
            prompt_lengths.clear()
            if not self._wait():
                control.should_training_stop = True

        def _wait(self) -> bool:
            command = sys.stdin.readline().strip()
            if command == "step":
                return True
            reply({"peak_step_gb": _status_kb("VmHWM") / 2**20})  # "close", or the driver went away
            return False

    callbacks_map["omni_bench"] = Pause
    sampling_as_ours(request.get("min_new_tokens", 0), request.get("suppress_tokens", []))
    try:
        rlhf_main(request["argv"])
    except Exception as exc:
        reply({"error": f"{type(exc).__name__}: {str(exc)[:400]}"})
        raise


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        worker()
    elif "--setup" in sys.argv[1:]:
        print(ensure_venv())
    else:
        raise SystemExit(
            "usage: python bench/swift_system.py --setup   (creates .swift-venv; the bench's "
            "--systems swift does it on first use)"
        )
