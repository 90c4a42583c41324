"""`train --check` with GPUs in sight prints the memory a run needs per GPU (bench/memory_model.py) for its own config
and world size, and warns when that will not fit the GPUs it sees; nothing without GPUs (the CPU demo)."""

import json
import sys

import pytest

from omni_grpo import memory_check, train
from omni_grpo.config import TrainConfig

sys.path.insert(0, str(memory_check.MODEL_FILE.parent))
import memory_model  # noqa: E402  (bench/, read only)


@pytest.fixture(scope="module")
def config_7b(tmp_path_factory):
    """A folder holding only the Qwen2.5-Omni-7B thinker's config.json (the estimate reads no weights)."""
    folder = tmp_path_factory.mktemp("qwen2_5_omni_7b")
    memory_model.load_gpu_bench().thinker_config("7b").save_pretrained(folder)
    return folder


def cfg(model, **kw):
    return TrainConfig(
        model_name_or_path=str(model),
        max_prompt_length=2048,
        max_completion_length=1024,
        num_generations=8,
        per_device_prompts=1,
        gradient_checkpointing=True,
        bf16=True,
        **kw,
    )


def test_the_estimate_is_the_memory_models_and_warns_when_it_will_not_fit(config_7b):
    lora = cfg(config_7b, lora={"enabled": True})
    lines = memory_check.report(lora, 8, [80.0] * 8)
    assert len(lines) == 1 and lines[0].startswith("memory estimate: ") and "8 GPU(s) of 80 GB here" in lines[0]
    # The README's table: the same model at the same sizes.
    run = memory_model.Run(
        prompt=2048, completion=1024, generations=8, micro_batch=8, world=8, lora=True, one_prompt_copy=True
    )
    peaks = memory_model.phase_peaks(memory_model.dims("7b"), run)
    expected = max(peaks[p + " total"] for p in ("rollout", "reference", "update")) / memory_check.GB
    assert memory_check.estimate_gb(lora, 8)[0] == pytest.approx(expected + memory_check.RUNTIME_GB, rel=1e-6)
    full = cfg(config_7b)
    one_gpu = memory_check.report(full, 1, [80.0])
    assert len(one_gpu) == 2 and one_gpu[1].startswith("warning: ") and "will not fit a 80 GB GPU" in one_gpu[1]
    assert memory_check.estimate_gb(full, 8)[0] < memory_check.estimate_gb(full, 1)[0] / 3  # ZeRO-3 shards


def test_offloading_the_optimizer_is_counted(config_7b, tmp_path):
    ds = tmp_path / "offload.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}))
    on_gpu = memory_check.estimate_gb(cfg(config_7b), 1)[0]
    offloaded = memory_check.estimate_gb(cfg(config_7b, deepspeed=str(ds)), 1)[0]
    assert on_gpu - offloaded == pytest.approx(7.6e9 * 16 / memory_check.GB, rel=0.01)  # the language model x 16 B


def test_check_prints_it_only_where_gpus_are_seen(tiny_model_dir, tiny_shards, tmp_path, monkeypatch, capsys):
    args = ["--check", f"model_name_or_path={tiny_model_dir}", f"data=[{tiny_shards}]", f"output_dir={tmp_path}"]
    monkeypatch.setattr(memory_check, "visible_gpus_gb", lambda: [])
    assert train.main(args) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(memory_check, "visible_gpus_gb", lambda: [0.001, 0.001])
    monkeypatch.setenv(memory_check.WORLD_SIZE_ENV, "4")
    assert train.main(args) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("memory estimate: ") and " on 4 GPU(s), full fine-tuning" in lines[0]
    assert lines[1].startswith("warning: ") and len(lines) == 2


def test_the_readme_table_is_the_memory_models():
    """Every cell of the README's memory table is what bench/memory_model.py gives for its row (recipe sizes)."""
    import re

    text = (memory_check.MODEL_FILE.parents[1] / "README.md").read_text()
    rows = [r for r in text[text.index("### From the demo to 8 GPUs") :].splitlines() if re.match(r"\| [37]B \|", r)]
    assert len(rows) == 6
    dims = {name: memory_model.dims(name.lower()) for name in ("3B", "7B")}
    for row in rows:
        name, mode, _, *cells = [c.strip() for c in row.strip("|").split("|")]
        for world, cell in zip((1, 2, 4, 8), cells):
            for prompt, shown in zip((2048, 4096), cell.split(" / ")):
                run = memory_model.Run(
                    prompt=prompt,
                    completion=1024,
                    generations=8,
                    micro_batch=8,
                    world=world,
                    lora=mode == "LoRA",
                    one_prompt_copy=True,
                    optimizer_bytes=0 if "offload" in mode else 16,
                )
                peaks = memory_model.phase_peaks(dims[name], run)
                peak = max(peaks[p + " total"] for p in ("rollout", "reference", "update")) / memory_check.GB
                assert int(shown) == round(peak), (name, mode, world, prompt, shown, peak)
