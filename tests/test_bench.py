"""The benchmarks run: gpu_bench on a tiny config on CPU, step_bench on a tiny configuration, and their checks."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(autouse=True)
def _restore_global_logging():
    """The bench `main()`s quiet loggers and warnings process-wide (right for a CLI); put them back so the
    tests that run later in this process still see warnings (log-capture tests in other files)."""
    import logging
    import warnings

    import transformers

    names = ("qwen_omni_utils", "transformers", "omni_grpo", "trl", "accelerate", "root")
    levels = {n: logging.getLogger(n).level for n in names}
    filters = list(warnings.filters)
    verbosity = transformers.logging.get_verbosity()
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    warnings.filters[:] = filters
    transformers.logging.set_verbosity(verbosity)


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_bench():
    return load("gpu_bench")


@pytest.fixture(scope="module")
def step_bench():
    return load("step_bench")


def test_gpu_bench_tiny_runs_on_cpu(gpu_bench, tmp_path):
    records = gpu_bench.main(["--tiny", "--device", "cpu", "--json", str(tmp_path / "out.json")])
    assert [(r["model"], r["mode"]) for r in records] == [("tiny", "lora"), ("tiny", "full")]
    for r in records:
        assert r["error"] is None, r["error"]
        assert r["prompt_tokens"] > 100  # the clip's video and audio tokens are in the prompt
        assert r["rollout_tokens_per_s"] > 0 and r["update_tflops"] > 0 and r["ref_tflops"] > 0
        assert all(r["seconds"][p] > 0 for p in gpu_bench.PHASES)
        assert math.isnan(r["update_mfu"])  # no MFU against a GPU peak on a CPU
    lora, full = records
    assert 0 < lora["trainable"] < full["trainable"]
    assert (tmp_path / "out.json").exists()


def test_real_configs_have_the_released_shapes(gpu_bench):
    """Built on the meta device only: 3B and 7B thinkers with the released sizes (no memory needed)."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from omni_grpo.models import get_module

    module = get_module("qwen2_5_omni")
    totals = {}
    for name, vocab, hidden in (("3b", 151936, 2048), ("7b", 152064, 3584)):
        config = gpu_bench.thinker_config(name)
        assert config.text_config.vocab_size == vocab and config.text_config.hidden_size == hidden
        assert config.vision_config.hidden_size == 1280 and config.vision_config.depth == 32
        assert config.vision_config.out_hidden_size == hidden and config.audio_config.output_dim == hidden
        assert config.audio_config.d_model == 1280 and config.audio_config.encoder_layers == 32
        with torch.device("meta"):
            model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
        counts = gpu_bench._param_counts(model, module)
        totals[name] = sum(p.numel() for p in model.parameters())
        assert 0.6e9 < counts["vision"] < 0.7e9 and 0.6e9 < counts["audio"] < 0.7e9
    assert 4.6e9 < totals["3b"] < 4.8e9  # the 3B thinker with its own lm_head
    assert 8.8e9 < totals["7b"] < 9.0e9  # the 7B thinker (8.9B parameters)


def test_meta_build_restores_the_buffers(gpu_bench):
    """`to_empty` leaves the rotary and sinusoid buffers uninitialised; `build_thinker` recomputes them."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    processor, ids = gpu_bench.build_processor("tiny")
    config = gpu_bench.thinker_config("tiny", ids, max(ids.values()) + 1)
    built = gpu_bench.build_thinker(config, torch.device("cpu"), torch.float32, "sdpa")
    plain = Qwen2_5OmniThinkerForConditionalGeneration(gpu_bench.thinker_config("tiny", ids, max(ids.values()) + 1))
    expected = dict(plain.named_buffers())
    got = dict(built.named_buffers())
    assert set(got) == set(expected) and got
    for name, buffer in expected.items():
        assert torch.allclose(got[name], buffer), name
    assert all(torch.isfinite(p).all() for p in built.parameters())


def test_gpu_bench_policy_pass_checkpoints_and_rollout_does_not(gpu_bench):
    """Hugging Face checkpoints a decoder layer only in training mode: the policy pass must be in it (or
    gradient checkpointing does nothing), generation must not (or the KV cache is switched off)."""
    args = gpu_bench.parse_args(["--tiny"])
    bench = gpu_bench.Bench(args, "tiny", "lora", torch.device("cpu"))
    layer = bench.thinker.model.language_model.layers[0]
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, a: seen.append((torch.is_grad_enabled(), m.training)))
    try:
        bench.step()
    finally:
        handle.remove()
        bench.close()
    assert layer.gradient_checkpointing
    assert {training for grad, training in seen if grad} == {True}
    assert {training for grad, training in seen if not grad} == {False}


def test_step_bench_tiny_configuration_counts_tower_calls(step_bench, tmp_path):
    """One round of ours and the anchor (and TRL when installed) on a 1 s clip; tower calls per step: ours
    encodes once (1 video + 1 audio), the anchor runs both towers in each of G generates, G reference rows
    and G policy rows; TRL passes no media."""
    systems = ["ours", "anchor"] + (["trl"] if importlib.util.find_spec("trl") else [])
    g = 2
    records = step_bench.main(
        [
            "--models",
            "64x2:tiny",
            "--generations",
            str(g),
            "--seconds",
            "1",
            "--systems",
            *systems,
            "--steps",
            "1",
            "--warmup",
            "0",
            "--completion-length",
            "4",
            "--clips",
            "1",
            "--size",
            "56",
            "84",
            "--video-fps",
            "8",
            "--micro-batch",
            "2",
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    (rec,) = records
    assert rec["errors"] == {}
    summary = rec["summary"]
    assert summary["ours"]["tower_calls"] == 2
    assert summary["anchor"]["tower_calls"] == 6 * g
    # Same prompt with its media; preprocess cuts the audio at the end of the video stream where qwen-omni-utils
    # keeps the AAC encoder's padding (preprocess/media.py), which can add one audio token on a short clip.
    assert abs(summary["ours"]["prompt_tokens"] - summary["anchor"]["prompt_tokens"]) <= 1
    if "trl" in summary:
        assert summary["trl"]["tower_calls"] == 0
        assert summary["trl"]["prompt_tokens"] < summary["ours"]["prompt_tokens"]  # text only
    for name in systems:
        assert summary[name]["steps_per_s"] > 0 and summary[name]["samples_per_s"] == pytest.approx(
            g * summary[name]["steps_per_s"]
        )


@pytest.fixture(scope="module")
def scale_bench():
    return load("scale_bench")


@pytest.fixture(scope="module")
def memory_model():
    return load("memory_model")


def test_scale_bench_quick_sweep_runs_a_worker_per_system(scale_bench, tmp_path):
    """The quickest sweep, ours only (G = 2 measured in its own worker process, G = 4 left out): the worker's
    step reports the shared-prompt trainer's one encode per prompt, the completions' forced length, the step
    peak and the resident set after the build; the left-out point is in the table as such."""
    records = scale_bench.main(
        [
            "--quick",
            "--only",
            "G",
            "--systems",
            "ours",
            "--warmup",
            "0",
            "--skip",
            "ours:G:4",
            "--no-plot",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert [(r["sweep"], r["x"], r["skipped"]) for r in records] == [("G", 2, []), ("G", 4, ["ours"])]
    rec = records[0]
    assert rec["errors"] == {}
    ours = rec["summary"]["ours"]
    assert ours["tower_calls"] == 2 and ours["prompt_tokens"] > 100  # the clip's video and audio are in it
    assert ours["completion_tokens"] == rec["point"]["completion_length"]
    assert 0 < ours["memory"]["rss_built_gb"] and 0 < ours["memory"]["peak_step_gb"]
    assert ours["phases"]["rollout"] > 0 and ours["phases"]["policy"] > 0
    saved = json.loads((tmp_path / "r.json").read_text())
    (left_out,) = [line for line in scale_bench.tables(saved, ["ours"]).splitlines() if line.startswith("| G | G=4 |")]
    assert "left out" in left_out


def test_scale_bench_step_peak_excludes_the_build(scale_bench):
    """The step peak is the resident-set high-water mark after a reset: memory touched and freed before the
    reset (the build) does not count, memory touched after it does."""
    import numpy as np

    if not scale_bench._reset_peak():
        pytest.skip("this kernel cannot reset the resident-set high-water mark")
    build = np.ones(400 * 2**20 // 8)  # 400 MB touched, then freed: a build's transient
    del build
    before_kb = scale_bench._status_kb("VmHWM")
    scale_bench._reset_peak()
    quiet_kb = scale_bench._status_kb("VmHWM")
    step = np.ones(200 * 2**20 // 8)  # touched after the reset: a step's
    busy_kb = scale_bench._status_kb("VmHWM")
    del step
    assert before_kb - quiet_kb > 300 * 2**10  # the build's 400 MB is not in the step peak
    assert busy_kb - quiet_kb > 150 * 2**10  # the step's 200 MB is


def test_scale_bench_exponent_is_the_log_log_slope(scale_bench):
    xs = [2, 4, 8, 16]
    assert scale_bench.exponent(xs, [3 * x**1.5 for x in xs]) == pytest.approx(1.5)
    assert scale_bench.exponent(xs, [7.0] * 4) == pytest.approx(0.0)
    assert math.isnan(scale_bench.exponent([3], [1.0]))


def test_anchor_decodes_the_frames_the_budget_kept(step_bench, tmp_path):
    """Under a prompt budget that binds, preprocess keeps fewer frames than qwen-omni-utils would sample; the
    anchor asks qwen-omni-utils for the shard's frame count and size, so both systems see the same video."""
    from types import SimpleNamespace

    from omni_grpo.config import DEFAULT_SYSTEM_PROMPT
    from omni_grpo.models.base import format_question
    from preprocess.budget import TextCounter, audio_tokens

    seconds = 4.0  # 8 frames at 2 fps of 56x84 (2x3 cells): 24 video tokens without a budget, 12 fit
    question = format_question({"question": step_bench.QUESTION, "options": step_bench.OPTIONS})
    fixed = TextCounter(DEFAULT_SYSTEM_PROMPT).count(question) + audio_tokens(int(16000 * seconds)) + 2
    args = SimpleNamespace(
        clips=1, size=[56, 84], video_fps=8, fps=2.0, min_pixels=None, max_pixels=None, max_prompt_tokens=fixed + 12
    )
    manifest, shards = step_bench.prepare_data(tmp_path, seconds, args)
    plan = step_bench.frame_plan(shards)
    (frames,) = plan.values()
    assert frames[0] < 8  # the budget reduced the frames
    anchor = SimpleNamespace(
        s=step_bench.Settings(
            model_dir=tmp_path,
            shards=shards,
            manifest=manifest,
            generations=2,
            completion_length=4,
            micro_batch=2,
            max_pixels=None,
            min_pixels=None,
            frames=plan,
        )
    )
    row = json.loads(manifest.read_text().splitlines()[0])
    decoded = step_bench.Anchor._decode(anchor, row)
    assert decoded["frames"].shape[:3] == frames


def test_memory_model_kv_term_matches_a_real_cache(memory_model, tiny):
    """The model's KV-cache term against the bytes of the cache a prefill leaves, one copy and G copies."""
    from transformers import DynamicCache

    from omni_grpo.models.base import _getattr_path

    module, model, _ = tiny
    d = memory_model.dims_of(model)
    lm = _getattr_path(model, module.language_model)
    p, g = 37, 3
    cache = DynamicCache(config=lm.config)
    with torch.no_grad():
        lm(inputs_embeds=torch.randn(1, p, d.hidden), past_key_values=cache, use_cache=True)

    def nbytes():
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)

    def modelled(one_copy):
        run = memory_model.Run(
            prompt=p, completion=0, generations=g, micro_batch=g, world=1, one_prompt_copy=one_copy, bytes_per_weight=4
        )
        return memory_model.terms(d, run)["rollout"]["KV cache"]

    assert nbytes() == modelled(one_copy=True)
    cache.batch_repeat_interleave(g)  # what generation does today
    assert nbytes() == modelled(one_copy=False)


@pytest.fixture(scope="module")
def swift_system():
    return load("swift_system")


def test_swift_checkpoint_is_a_full_omni_model_around_the_thinker(swift_system, tiny_model_dir, tiny, tmp_path):
    """ms-swift loads Qwen2_5OmniForConditionalGeneration: the wrapped folder must load as that class (its
    from_pretrained reads spk_dict.pt), build no talker, and hold the bench thinker's weights unchanged."""
    from transformers import Qwen2_5OmniForConditionalGeneration

    out = swift_system.wrap_checkpoint(Path(tiny_model_dir), tmp_path / "full")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_omni" and config["enable_audio_output"] is False
    assert config["architectures"] == ["Qwen2_5OmniForConditionalGeneration"]
    assert torch.load(out / "spk_dict.pt") == {}
    full = Qwen2_5OmniForConditionalGeneration.from_pretrained(out)
    assert not hasattr(full, "talker")
    _, thinker, _ = tiny
    theirs, ours = full.thinker.state_dict(), thinker.state_dict()
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)
    assert (out / "tokenizer_config.json").exists() and (out / "processor_config.json").exists()


def test_swift_rows_pin_the_shard_frames(swift_system, step_bench, tmp_path):
    """Each row: one user turn with <video>, the mp4's absolute path, the answer for the rewards, and the
    frame plan of our shard in chat_template_kwargs (what qwen-omni-utils' fetch_video reads)."""
    from types import SimpleNamespace

    from omni_grpo.config import DEFAULT_SYSTEM_PROMPT

    args = SimpleNamespace(clips=2, size=[56, 84], video_fps=8, fps=2.0, min_pixels=None, max_pixels=None)
    manifest, shards = step_bench.prepare_data(tmp_path, 1.0, args)
    plan = step_bench.frame_plan(shards)
    rows = swift_system.dataset_rows(manifest, plan, DEFAULT_SYSTEM_PROMPT)
    swift_system.check_rows(rows)
    assert len(rows) == 2
    for row, frames in zip(rows, plan.values()):
        assert row["messages"][1]["content"].startswith("<video>" + step_bench.QUESTION)
        assert row["solution"] == "B" and Path(row["videos"][0]).is_file()
        kw = row["chat_template_kwargs"]
        assert (kw["nframes"], kw["resized_height"], kw["resized_width"]) == frames
    bad = dict(rows[0], messages=[rows[0]["messages"][0], {"role": "user", "content": "no media"}])
    with pytest.raises(ValueError, match="<video>"):
        swift_system.check_rows([bad])


def test_swift_phases_are_exclusive(swift_system, monkeypatch):
    """A phase nested in another (the media decode inside the rollout) is taken out of the outer phase."""
    clock = iter([0.0, 1.0, 3.0, 10.0])
    monkeypatch.setattr(swift_system.time, "perf_counter", lambda: next(clock))
    phases = swift_system.Phases()
    inner = phases.wrap("data", lambda: phases.names[:])
    outer = phases.wrap("rollout", lambda: inner())
    assert outer() == ["rollout", "data"]
    assert phases.pop() == {"data": 2.0, "rollout": 8.0}


def test_swift_argv_matches_the_bench_settings(swift_system, step_bench, tmp_path):
    s = step_bench.Settings(
        model_dir=tmp_path,
        shards=tmp_path,
        manifest=tmp_path,
        generations=8,
        completion_length=16,
        micro_batch=2,
        out=tmp_path,
    )
    argv = swift_system.swift_argv(tmp_path / "ckpt", tmp_path / "data.jsonl", s, rounds=4)
    opts = dict(a[2:].split("=", 1) for a in argv if "=" in a)
    assert opts["num_generations"] == "8" and opts["gradient_accumulation_steps"] == "4"
    assert opts["per_device_train_batch_size"] == "2" and opts["max_completion_length"] == "16"
    assert opts["beta"] == "0.04" and opts["tuner_type"] == "full" and opts["use_vllm"] == "false"
    assert opts["external_plugins"].endswith("swift_plugin.py") and argv[-2:] == swift_system.REWARD_FUNCS
    env = swift_system.worker_env()
    assert env["USE_AUDIO_IN_VIDEO"] == "true" and env["HF_HUB_OFFLINE"] == "1"


def test_swift_samples_without_the_media_tokens(swift_system, tiny_model_dir, tiny):
    module, _, processor = tiny
    banned = swift_system.banned_tokens(Path(tiny_model_dir))
    video = processor.tokenizer.convert_tokens_to_ids("<|VIDEO|>")
    assert video in banned and banned == [int(i) for i in module.banned_token_ids(processor.tokenizer)]


@pytest.mark.slow
def test_swift_system_runs_steps_on_the_same_prompt(step_bench, swift_system, tmp_path):
    """ms-swift in its own environment (created on first use: minutes) runs alternating rounds with ours on the
    same thinker and clip: same prompt tokens, its towers once per completion and pass, phases reported."""
    if not swift_system.venv_ready():
        pytest.skip("no ms-swift environment: `python bench/swift_system.py --setup` creates it")
    g = 2
    (rec,) = step_bench.main(
        [
            "--models",
            "64x2:tiny",
            "--generations",
            str(g),
            "--seconds",
            "1",
            "--systems",
            "ours",
            "swift",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--completion-length",
            "4",
            "--clips",
            "1",
            "--size",
            "56",
            "84",
            "--video-fps",
            "8",
            "--micro-batch",
            "2",
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    assert rec["errors"] == {}
    ours, swift = rec["summary"]["ours"], rec["summary"]["swift"]
    assert abs(ours["prompt_tokens"] - swift["prompt_tokens"]) <= 1
    assert swift["tower_calls"] > ours["tower_calls"] == 2
    assert swift["phases"]["data"] > 0 and swift["phases"]["rollout"] > 0 and swift["phases"]["policy"] > 0


@pytest.fixture(scope="module")
def limit():
    return load("limit")


def test_limit_peaks_and_fractions(limit):
    """The peak measurements run and give rates; each phase is held against its dtype's GEMM peak, decode
    against the read bandwidth."""
    peaks = limit.peaks(torch.device("cpu"), repeats=1, gib=2**-10, n=64)
    assert all(peaks[k] > 0 for k in ("float32", "bfloat16", "read", "copy"))
    step = {
        "dtype": "bfloat16",
        "seconds": {"encode": 1.0, "policy": 2.0, "optimizer": 1.0, "ref": 1.0},
        "flops": {"encode": 4.0, "policy": 12.0, "ref": 3.0},
        "decode_s": 2.0,
        "decode_bytes": 10.0,
    }
    rows = {r["phase"].split()[0]: r for r in limit.fractions(step, dict(peaks, bfloat16=8.0, read=10.0))}
    assert rows["update"]["fraction"] == pytest.approx(16.0 / 4.0 / 8.0)
    assert rows["policy"]["fraction"] == pytest.approx(6.0 / 8.0)
    assert rows["reference"]["fraction"] == pytest.approx(3.0 / 8.0)
    assert rows["decode"]["fraction"] == pytest.approx(5.0 / 10.0)


def test_limit_decode_bytes_count_weights_per_step_and_the_kv_read(limit, tiny):
    """C - 1 decode steps; each reads the weights once and the keys/values of the prompt's one copy plus every
    row's tokens so far."""
    _, model, _ = tiny
    text = model.config.text_config
    head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv = text.num_hidden_layers * 2 * text.num_key_value_heads * head * 2
    got = limit.decode_bytes(model.config, weight_params=1000, prompt=100, g=4, c=3, bytes_per=2)
    assert got == 2 * 1000 * 2 + kv * (100 + 4 * 1) + kv * (100 + 4 * 2)


def test_limit_prefill_timer_times_the_prompt_call_only(limit, tiny, gpu_bench):
    """Inside generate, the language model's one prompt-length call is the prefill; the token steps are not."""
    from omni_grpo.config import DEFAULT_SYSTEM_PROMPT
    from omni_grpo.models.base import _getattr_path, base_thinker
    from omni_grpo.models.sampling import generate

    module, model, processor = tiny
    sample = gpu_bench.make_sample(1.0, 2.0, (56, 84))
    inputs = module.build_inputs(processor, [sample], DEFAULT_SYSTEM_PROMPT, True)
    inputs.encoded = module.encode_media(model, inputs)
    lm = _getattr_path(base_thinker(model), module.language_model)
    timer = limit.PrefillTimer()
    lm.forward = timer.wrap_forward(lm.forward, torch.device("cpu"))
    try:
        generate(module, model, processor, inputs, 2, 4)
        assert timer.calls == 0  # outside `generating()` nothing is counted
        with timer.generating():
            generate(module, model, processor, inputs, 2, 4)
    finally:
        del lm.forward
    assert timer.calls == 1 and timer.seconds > 0


@pytest.fixture(scope="module")
def decode_bench():
    return load("decode_bench")


def test_decode_bench_static_cache_decodes_the_eager_tokens(decode_bench, tiny_model_dir):
    """The static-cache loop (mask over the filled positions) gives the growing cache's tokens, greedy and
    seeded: the comparison the compiled step is held to."""
    dec = decode_bench.Decoder(Path(tiny_model_dir), g=3, p=20, c=6)
    for seed in (None, 3):
        eager, seconds = dec.run("eager", seed)
        static, _ = dec.run("static", seed)
        assert eager.shape == (3, 6) and seconds > 0
        assert torch.equal(eager, static)


@pytest.mark.slow
def test_decode_bench_compiled_step_keeps_the_tokens(decode_bench, tiny_model_dir):
    dec = decode_bench.Decoder(Path(tiny_model_dir), g=2, p=16, c=4)
    rec = decode_bench.measure(dec, repeats=1, seed=3)
    assert all(rec[w]["greedy_identical"] and rec[w]["seeded_identical"] for w in ("eager", "static", "compiled"))
    assert rec["compiled"]["tokens_per_s"] > 0


def test_contention_variants_set_the_thread_environment():
    """Each variant is a worker's thread count and environment: `default` unsets OMP_NUM_THREADS (torch's own
    count, OpenMP's spinning wait), `passive` adds OMP_WAIT_POLICY=PASSIVE, `one` one thread."""
    contention = load("contention")
    assert contention.parse_variant("default") == ("default", 0, {"OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": None})
    assert contention.parse_variant("passive") == (
        "passive",
        0,
        {"OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    assert contention.parse_variant("one") == ("one", 1, {})
    assert contention.parse_variant("spin:2:GOMP_SPINCOUNT=1000") == ("spin", 2, {"GOMP_SPINCOUNT": "1000"})
    with pytest.raises(SystemExit, match="NAME:THREADS"):
        contention.parse_variant("fast")


@pytest.mark.parametrize("name, policy", [("default", None), ("passive", "PASSIVE"), ("one", "PASSIVE")])
def test_contention_variants_reach_ours_workers(scale_bench, monkeypatch, name, policy):
    """Each of contention.py's variants over an ours worker's own setting of the wait policy: the variant wins
    (`default` unsets it, torch's default wait), not an error of two values for one variable."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    _, threads, env = load("contention").parse_variant(name)
    got = scale_bench.worker_env("ours", threads, env)
    assert got.get("OMP_WAIT_POLICY") == policy
    assert got.get("OMP_NUM_THREADS") == ("1" if name == "one" else None)


def test_scale_bench_worker_environment_unsets_none(scale_bench, step_bench, monkeypatch, tmp_path):
    import io

    seen = {}

    class Popen:
        def __init__(self, *args, env=None, **kwargs):
            seen.update(env)
            self.stdin = io.StringIO()

    monkeypatch.setattr(scale_bench.subprocess, "Popen", Popen)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    s = step_bench.Settings(
        model_dir=tmp_path,
        shards=tmp_path,
        manifest=tmp_path,
        generations=2,
        completion_length=4,
        micro_batch=2,
        out=tmp_path,
    )
    scale_bench.Worker("ours", s, 1, tmp_path / "w.log", 0, True, env={"OMP_NUM_THREADS": None, "X_TEST": "1"})
    assert "OMP_NUM_THREADS" not in seen and seen["X_TEST"] == "1"
    assert seen["OMP_WAIT_POLICY"] == "PASSIVE"  # ours as the training entry point runs it
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    seen.clear()
    scale_bench.Worker("trl", s, 1, tmp_path / "w2.log", 3, True)
    assert seen["OMP_NUM_THREADS"] == "3" and "OMP_WAIT_POLICY" not in seen
