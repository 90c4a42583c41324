"""Session-wide fixtures: one tiny Qwen2.5-Omni thinker + processor (and a Qwen3-Omni one), shards built once
(`tiny_shards`, `mixed_shards`); tests marked `gpu` skip without CUDA."""

import logging

import numpy as np
import pytest
import torch

from tests.helpers import run_preprocess


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip on a machine without CUDA (pytest.ini declares the marker)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from omni_grpo.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2_5_omni", seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """(module, model, processor) — the model is shared: tests must not change its weights."""
    from omni_grpo.models import get_module

    module = get_module("qwen2_5_omni")
    model = module.load_model(tiny_model_dir)
    model.eval()
    processor = module.load_processor(tiny_model_dir)
    return module, model, processor


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory):
    from omni_grpo.tiny_models import build_tiny_model

    # 3 decoder layers: room for 2 deepstack levels that both reach the logits
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen3_omni", family="qwen3_omni", seed=0, layers=3)


@pytest.fixture(scope="session")
def qwen3(qwen3_dir):
    """(module, model, processor) for the Qwen3-Omni-MoE kit — shared: tests must not change its weights."""
    from omni_grpo.models import get_module

    module = get_module("qwen3_omni")
    model = module.load_model(qwen3_dir)
    model.eval()
    return module, model, module.load_processor(qwen3_dir)


KITS = {"qwen2_5_omni": ("tiny", "tiny_model_dir"), "qwen3_omni": ("qwen3", "qwen3_dir")}  # fixture names


@pytest.fixture(params=list(KITS))
def kit(request):
    """(module, model, processor) of each model family in turn: the guarantees every family must keep."""
    return request.getfixturevalue(KITS[request.param][0])


def make_sample(
    i: int, frames: int = 4, height: int = 56, width: int = 84, seconds: float = 2.0, audio: bool = True, seed: int = 0
) -> dict:
    """An in-memory training sample as `preprocess.shards.load` returns it (sizes multiples of 28)."""
    rng = np.random.default_rng(seed + i)
    return dict(
        id=f"s{i}",
        question="Why does the woman smile?" + " Really?" * i,
        options=["She is nervous.", "She is happy.", "She is angry.", "She is bored."],
        answer="B",
        problem_type="multiple_choice",
        frames=rng.integers(0, 255, (frames, height, width, 3), dtype=np.uint8),
        fps=2.0,
        audio=(rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32) if audio else None,
        sample_rate=16000,
    )


@pytest.fixture
def samples():
    """Two different samples of different prompt lengths and video sizes, both with audio."""
    return [make_sample(0), make_sample(1, frames=6, height=84, width=56, seconds=3.0)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _process_state_restored():
    """Benchmarks run in-process set state for the rest of their process: a forced completion length (by replacing
    `sampling.sampling_processors`) and quieter loggers (`omni_grpo` at ERROR). Each test gets the package's
    sampler and every logger's level back, so no test's tokens or captured log lines depend on test order."""
    from omni_grpo.models import sampling

    real = sampling.sampling_processors
    loggers = [logging.root, *(x for x in logging.root.manager.loggerDict.values() if isinstance(x, logging.Logger))]
    levels = {logger: logger.level for logger in loggers}
    yield
    sampling.sampling_processors = real
    for logger, level in levels.items():
        logger.setLevel(level)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """Shards of a small synthetic Social-IQ 2.0 dataset (4 clips, ~10 questions), built once."""
    from omni_grpo.tiny_models import make_siq2_dataset

    root = tmp_path_factory.mktemp("siq2")
    make_siq2_dataset(root / "raw", n_clips=4, seconds=2.0, seed=0)
    run_preprocess(
        ["--source", "siq2", "--root", str(root / "raw"), "--split", "train", "--output", str(root / "shards")]
    )
    return root / "shards"


@pytest.fixture(scope="session")
def mixed_shards(tmp_path_factory):
    """Two clips: the first with an audio track, the second without (ranks differ in modality, and every rank must
    still run every tower)."""
    import json

    from omni_grpo.synthetic import make_clip

    root = tmp_path_factory.mktemp("mixed")
    make_clip(root / "a.mp4", seconds=2.0, audio="tone", seed=1)
    make_clip(root / "b.mp4", seconds=2.0, audio=None, seed=2)
    lines = [
        {
            "id": "a_with_audio",
            "video": "a.mp4",
            "question": "Is the person happy?",
            "options": ["yes", "no"],
            "answer": "A",
            "problem_type": "multiple_choice",
        },
        {
            "id": "b_silent",
            "video": "b.mp4",
            "question": "Is the person sad?",
            "options": ["yes", "no"],
            "answer": "B",
            "problem_type": "multiple_choice",
        },
    ]
    (root / "qa.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    run_preprocess(["--source", "jsonl", "--manifest", str(root / "qa.jsonl"), "--output", str(root / "shards")])
    counts = json.loads((root / "shards" / "manifest.json").read_text())["counts"]
    assert counts["with_audio"] == 1 and counts["without_audio"] == 1
    return root / "shards"
