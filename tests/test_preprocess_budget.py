"""The prompt budget: preprocess counts prompt tokens as the real processor does, and its default output fits
configs/stage4.yaml's max_prompt_length on a 60 s 640x360 clip with audio (lessons item 15)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from omni_grpo import synthetic
from omni_grpo.config import DEFAULT_SYSTEM_PROMPT
from omni_grpo.models.base import format_question
from preprocess import budget as B
from preprocess import shards
from preprocess.build import BuildOptions, PreprocessError, build
from preprocess.media import _grid_size, decode_clip

REPO = Path(__file__).resolve().parents[1]
SIQ2_QUESTION = {
    "question": "How does the woman on the left react when the man in the blue shirt tells her about his new job?",
    "options": [
        "She congratulates him warmly and asks him when he starts.",
        "She looks away and changes the subject to her own plans.",
        "She laughs because she thinks he is joking about it.",
        "She is worried that he will have to move to another city.",
    ],
}


def processor_length(module, processor, sample: dict, flag: bool = True) -> int:
    inputs = module.build_inputs(processor, [sample], DEFAULT_SYSTEM_PROMPT, flag)
    return int(inputs.attention_mask.sum())


def as_sample(frames, audio, fps=2.0, **qa):
    return dict(
        id="s",
        answer="A",
        problem_type="multiple_choice",
        frames=frames,
        fps=fps,
        audio=audio,
        sample_rate=16000,
        **{**SIQ2_QUESTION, **qa},
    )


@pytest.mark.parametrize(
    "frames,height,width,seconds",
    [
        (4, 56, 84, 2.0),
        (6, 84, 168, 7.3),
        (24, 112, 196, 60.0),
        (10, 28, 56, 0.37),
        (8, 140, 28, 4.0),
    ],
)
def test_token_count_equals_the_processor(tiny, tiny_model_dir, frames, height, width, seconds):
    module, _, processor = tiny
    counter = B.TextCounter(DEFAULT_SYSTEM_PROMPT, tiny_model_dir)
    audio = np.zeros(int(round(seconds * 16000)), np.float32)
    sample = as_sample(np.zeros((frames, height, width, 3), np.uint8), audio)
    text = counter.count(format_question(sample))
    assert processor_length(module, processor, sample) == text + B.media_tokens(
        "video", frames, height, width, audio.shape[0]
    )
    sample["audio"] = None
    assert processor_length(module, processor, sample) == text + B.video_tokens(frames, height, width)


KINDS = {
    "multiple_choice": ["x", "y", "z"],
    "multi_label": ["x", "y", "z"],
    "yes_no": [],
    "numeric": [],
    "free_text": [],
}


@pytest.mark.parametrize("problem_type", sorted(KINDS))
def test_each_problem_types_instruction_is_in_the_prompt_and_the_budget(tiny, tiny_model_dir, problem_type):
    """The processor's prompt ends the question with the type's own instruction, and preprocess's count of the
    sample's text (`plan.count_text_tokens`) is that prompt's, default and overridden alike."""
    from omni_grpo.data import Collate
    from omni_grpo.rewards.instructions import DEFAULT_INSTRUCTIONS
    from preprocess.plan import count_text_tokens
    from preprocess.sources import Sample, SourceData

    module, _, processor = tiny
    counter = B.TextCounter(DEFAULT_SYSTEM_PROMPT, tiny_model_dir)
    frames, audio = np.zeros((4, 56, 84, 3), np.uint8), np.zeros(32000, np.float32)
    media = B.media_tokens("video", 4, 56, 84, audio.shape[0])
    qa = dict(question="What happens?", options=KINDS[problem_type], problem_type=problem_type)
    data = SourceData(
        kind="jsonl",
        base=Path("."),
        qa_file="m.jsonl",
        lines=1,
        failures=[],
        samples=[Sample(id="s", video="v.mp4", answer="A", **{**qa, "options": tuple(qa["options"])})],
    )
    for overrides in (None, {problem_type: "Say it in the way this long replacement sentence asks you to."}):
        sample = dict(id="s", answer="A", frames=frames, fps=2.0, audio=audio, sample_rate=16000, **qa)
        batch = Collate(module, processor, DEFAULT_SYSTEM_PROMPT, True, 4096, overrides)([sample])
        prompt = processor.tokenizer.decode(batch.inputs.input_ids[0])
        said = (overrides or DEFAULT_INSTRUCTIONS)[problem_type]
        assert f"\n{said}<|im_end|>" in prompt
        assert all(text not in prompt for kind, text in DEFAULT_INSTRUCTIONS.items() if text != said)
        assert int(batch.inputs.attention_mask.sum()) == count_text_tokens(counter, data, overrides)["s"] + media


def test_preprocess_counts_the_configs_answer_instructions(tmp_path):
    """--answer-instructions reaches each sample's stored prompt_tokens; a bad key is one line naming it."""
    from preprocess.__main__ import main

    synthetic.make_clip(tmp_path / "d" / "a.mp4", seconds=1.0, size=(64, 64))
    (tmp_path / "d" / "m.jsonl").write_text(
        json.dumps({"id": "q", "video": "a.mp4", "question": "Is it red?", "answer": "yes", "problem_type": "yes_no"})
        + "\n"
    )
    common = [
        "--source",
        "jsonl",
        "--manifest",
        str(tmp_path / "d" / "m.jsonl"),
        "--workers",
        "0",
        "--no-progress",
        "--min-pixels",
        "3136",
        "--max-pixels",
        "3136",
    ]
    assert main([*common, "--output", str(tmp_path / "default")]) == 0
    longer = "Reply with one word, yes or no, and nothing else at all, please."
    assert (
        main([*common, "--output", str(tmp_path / "longer"), "--answer-instructions", json.dumps({"yes_no": longer})])
        == 0
    )
    default, overridden = (shards.load(tmp_path / name).prompt_tokens[0] for name in ("default", "longer"))
    assert overridden - default == B.estimate_text_tokens(longer) - B.estimate_text_tokens("Answer yes or no.")
    assert main([*common, "--output", str(tmp_path / "bad"), "--answer-instructions", '{"yesno": "x"}']) == 2


def test_audio_tokens_25_per_second():
    assert B.audio_tokens(60 * 16000) == 1500
    assert B.audio_tokens(None) == 0 and B.audio_tokens(0) == 0


def _resize(h, w, pixels):
    return _grid_size(h, w, 28 * 28, pixels, "video")


@pytest.mark.parametrize("budget", [300, 600, 1000, 2048, 4096, 20000])
@pytest.mark.parametrize("source", [(360, 640), (480, 480), (1080, 1920), (720, 200)])
def test_fit_video_fits_and_keeps_the_qwen_plan_when_it_can(budget, source):
    planned = (120, (364, 644))
    fixed = 200
    b = B.PromptBudget(budget, 0)
    n, size = B.fit_video(*planned, source, fixed, b, 4, _resize)
    assert n % 2 == 0 and 4 <= n <= 120 and size[0] % 28 == 0 and size[1] % 28 == 0
    assert fixed + B.video_tokens(n, *size) <= budget
    if fixed + B.video_tokens(*planned[:1], *planned[1]) <= budget:
        assert (n, size) == planned


def test_fit_video_refuses_what_cannot_fit():
    with pytest.raises(B.BudgetError, match="needs at least 1502"):
        B.fit_video(120, (364, 644), (360, 640), 1500, B.PromptBudget(1501, 0), 4, _resize)


def test_estimate_is_an_upper_bound_of_the_qwen_tokenizer(qwen_vocab_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen_vocab_dir)
    texts = [
        DEFAULT_SYSTEM_PROMPT,
        format_question(SIQ2_QUESTION),
        "In 1999, 12,345 people (43.5%) voted.",
        "这个人为什么笑？他很开心。",
        "Ça va? Überraschung! naïve café",
        "emoji 😀👍 and tabs\t\tand\nnewlines\n\n",
        "Xylophonists' onomatopoeia: antidisestablishmentarianism!",
        "a" * 200,
        "  leading and  double  spaces",
    ]
    for question, _ in synthetic._QUESTIONS:
        texts.append(question)
    for text in texts:
        assert B.estimate_text_tokens(text) >= len(tok(text, add_special_tokens=False)["input_ids"]), text


@pytest.fixture(scope="module")
def qwen_vocab_dir(tmp_path_factory):
    """The tiny kit with the real Qwen2 BPE (the tokenizer of the released checkpoints)."""
    from omni_grpo.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("kitq") / "qwen2_5_omni", vocab="qwen", seed=0)


@pytest.fixture(scope="module")
def siq2_minute(tmp_path_factory):
    """A 60 s 640x360 29.97 fps clip with 44.1 kHz audio and one Social-IQ style question."""
    folder = tmp_path_factory.mktemp("minute")
    kwargs = synthetic.REAL_LIKE_CLIPS["siq2_60s_640x360"]
    synthetic.make_clip(folder / "clip.mp4", **kwargs)
    row = {"id": "q0", "video": "clip.mp4", "answer": "A", **SIQ2_QUESTION}
    (folder / "m.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    return folder


def _first_sample(out):
    return shards.load(out)[0]


def test_default_preprocess_of_a_60s_clip_fits_stage4(siq2_minute, tmp_path, qwen_vocab_dir):
    from omni_grpo.models import get_module

    limit = yaml.safe_load((REPO / "configs" / "stage4.yaml").read_text())["max_prompt_length"]
    assert B.DEFAULT_MAX_PROMPT_TOKENS == limit
    summary = build(
        BuildOptions(source="jsonl", manifest=siq2_minute / "m.jsonl", output=tmp_path / "o", workers=0, progress=False)
    )
    sample = _first_sample(tmp_path / "o")
    module = get_module("qwen2_5_omni")
    processor = module.load_processor(qwen_vocab_dir)
    real = processor_length(module, processor, sample)
    assert real <= sample["prompt_tokens"] <= limit  # the estimate is an upper bound; both fit
    assert summary["prompt_tokens"] == {"budget": limit, "exact": False, "longest": sample["prompt_tokens"]}
    assert shards.load(tmp_path / "o").prompt_tokens == [sample["prompt_tokens"]]
    total = 1798  # round(60 s x 29.97 fps)
    n = len(sample["frame_indices"])
    assert sample["frame_indices"][0] == 0 and sample["frame_indices"][-1] == total - 1  # the whole clip
    assert sample["frame_indices"] == np.linspace(0, total - 1, n).round().astype(int).tolist()
    assert sample["fps"] == pytest.approx(n / total * 30000 / 1001)
    assert sample["audio"].shape[0] == pytest.approx(total / (30000 / 1001) * 16000, abs=2)  # the audio is whole
    # the budget goes to more frames before bigger ones: 12 frames of the smallest planned size. It was 20
    # while the budget counted a shorter system prompt than training's default (estimated 23 tokens fewer).
    assert n == 12 and B.grid_tokens(*sample["frames"].shape[1:3]) <= B.MIN_FRAME_TOKENS


def test_exact_count_with_the_models_tokenizer(siq2_minute, tmp_path, qwen_vocab_dir):
    from omni_grpo.models import get_module

    build(
        BuildOptions(
            source="jsonl",
            manifest=siq2_minute / "m.jsonl",
            output=tmp_path / "o",
            workers=0,
            progress=False,
            tokenizer=qwen_vocab_dir,
            max_prompt_tokens=3000,
        )
    )
    sample = _first_sample(tmp_path / "o")
    module = get_module("qwen2_5_omni")
    assert processor_length(module, module.load_processor(qwen_vocab_dir), sample) == sample["prompt_tokens"]
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["prompt_tokens"]["exact"] is True and 2900 < sample["prompt_tokens"] <= 3000


def test_system_prompt_option_is_counted(siq2_minute, tmp_path, qwen_vocab_dir):
    """--system-prompt changes the count exactly as the model's tokenizer counts the extra words."""
    from omni_grpo.models import get_module

    long_prompt = "Think step by step about every person in the clip, their words and their faces. " * 8
    counts = {}
    for name, extra in (("default", {}), ("long", {"system_prompt": long_prompt})):
        build(
            BuildOptions(
                source="jsonl",
                manifest=siq2_minute / "m.jsonl",
                output=tmp_path / name,
                workers=0,
                progress=False,
                tokenizer=qwen_vocab_dir,
                max_prompt_tokens=0,
                **extra,
            )
        )
        counts[name] = _first_sample(tmp_path / name)["prompt_tokens"]
    module = get_module("qwen2_5_omni")
    tok = module.load_processor(qwen_vocab_dir).tokenizer
    default = BuildOptions(source="jsonl", manifest=siq2_minute / "m.jsonl", output=tmp_path).prompt_system()
    assert counts["long"] > counts["default"]  # the option reaches the count
    assert counts["long"] - counts["default"] == len(tok(long_prompt)["input_ids"]) - len(tok(default)["input_ids"])


def test_no_budget_gives_qwen_omni_utils_frames(siq2_minute):
    clip = decode_clip(siq2_minute / "clip.mp4")
    assert clip.media_tokens > 15000  # what the issue measured: ~19.5k tokens with audio and text


def test_a_clip_whose_audio_alone_is_over_budget_is_one_failure_with_the_fix(siq2_minute, tmp_path):
    with pytest.raises(PreprocessError, match="no sample was written") as info:
        build(
            BuildOptions(
                source="jsonl",
                manifest=siq2_minute / "m.jsonl",
                output=tmp_path / "o",
                workers=0,
                progress=False,
                max_prompt_tokens=1200,
            )
        )
    assert "--max-prompt-tokens" in str(info.value)
    lines = (tmp_path / "o" / "failures.jsonl").read_text().splitlines()
    assert len(lines) == 1
    failure = json.loads(lines[0])
    assert (
        failure["path"] == "clip.mp4"
        and "1502 for its 60.0 s of audio" in failure["reason"]
        and "max_prompt_length" in failure["reason"]
    )


def test_a_budget_below_the_template_is_an_argument_error(tmp_path):
    with pytest.raises(PreprocessError, match="cannot hold any prompt"):
        build(
            BuildOptions(
                source="jsonl",
                manifest=tmp_path / "missing.jsonl",
                output=tmp_path / "o",
                workers=0,
                progress=False,
                max_prompt_tokens=50,
            )
        )
    assert not (tmp_path / "o").exists()


def test_an_over_long_question_fails_alone_and_the_clip_keeps_its_other_questions(tmp_path):
    synthetic.make_clip(tmp_path / "clip.mp4", seconds=2.0)
    rows = [
        {"id": "short", "video": "clip.mp4", "question": "Why?", "answer": "A"},
        {"id": "long", "video": "clip.mp4", "question": "Why does she smile? " * 400, "answer": "A"},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build(BuildOptions(source="jsonl", manifest=tmp_path / "m.jsonl", output=tmp_path / "o", workers=0, progress=False))
    data = shards.load(tmp_path / "o")
    assert [data[i]["id"] for i in range(len(data))] == ["short"] and data[0]["prompt_tokens"] <= 2048
    (failure,) = [json.loads(line) for line in (tmp_path / "o" / "failures.jsonl").read_text().splitlines()]
    assert failure["id"] == "long" and failure["line"] == 2 and failure["path"] == "clip.mp4"
    assert "over --max-prompt-tokens 2048" in failure["reason"] and "shorten the question" in failure["reason"]


# --- every family and layout: the budget's count is the processor's --------------------------------------


def kit_of(request, family):
    from tests.conftest import KITS

    fixture, model_dir = KITS[family]
    return request.getfixturevalue(fixture), request.getfixturevalue(model_dir)


@pytest.mark.parametrize("family", ["qwen2_5_omni", "qwen3_omni"])
@pytest.mark.parametrize("frames,cells,seconds", [(4, (2, 3), 2.0), (7, (3, 6), 7.3), (10, (1, 2), 0.37)])
def test_count_equals_the_processor_for_every_layout(request, family, frames, cells, seconds):
    """Frames and images on the family's pixel grid, audio at its rate: video with its audio interleaved or
    after it, silent video, audio alone and image, each counted as the family's processor counts it."""
    (module, _, processor), model_dir = kit_of(request, family)
    grid = B.pixel_grid(family)
    height, width = cells[0] * grid, cells[1] * grid
    counter = B.TextCounter(DEFAULT_SYSTEM_PROMPT, model_dir)
    audio = np.zeros(int(round(seconds * 16000)), np.float32)
    video = as_sample(np.zeros((frames, height, width, 3), np.uint8), audio)
    text = counter.count(format_question(video))
    with_audio = B.media_tokens("video", frames, height, width, audio.shape[0], family=family)
    assert processor_length(module, processor, video, flag=True) == text + with_audio
    assert processor_length(module, processor, video, flag=False) == text + with_audio
    assert processor_length(module, processor, dict(video, audio=None)) == text + B.video_tokens(
        frames, height, width, family
    )
    alone = dict(video, modality="audio", frames=None, fps=None)
    assert processor_length(module, processor, alone) == text + B.media_tokens(
        "audio", audio_samples=audio.shape[0], family=family
    )
    image = dict(
        video, modality="image", frames=None, fps=None, audio=None, image=np.zeros((height, width, 3), np.uint8)
    )
    assert processor_length(module, processor, image) == text + B.media_tokens("image", 1, height, width, family=family)


def test_qwen3_audio_runs_at_13_tokens_per_second():
    assert B.audio_tokens(60 * 16000, "qwen3_omni") == 780 and B.audio_tokens(60 * 16000) == 1500


@pytest.mark.parametrize("family", ["qwen2_5_omni", "qwen3_omni"])
def test_budgeted_samples_count_what_the_family_processor_builds(request, family, siq2_minute, tmp_path):
    """`--family` plans a 60 s clip, an audio file and an image on that family's grid and rate: each stored
    `prompt_tokens` equals the family processor's prompt length and fits the budget."""
    (module, _, processor), model_dir = kit_of(request, family)
    (tmp_path / "clip.mp4").symlink_to(siq2_minute / "clip.mp4")
    synthetic.make_audio(tmp_path / "voice.mp3", seconds=4.4, sample_rate=44100, channels=2)
    synthetic.make_image(tmp_path / "photo.jpg", size=(720, 1280))
    rows = [
        {"id": "clip", "video": "clip.mp4", "answer": "A", **SIQ2_QUESTION},
        {"id": "voice", "audio": "voice.mp3", "answer": "A", **SIQ2_QUESTION},
        {"id": "photo", "image": "photo.jpg", "answer": "A", **SIQ2_QUESTION},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    build(
        BuildOptions(
            source="jsonl",
            manifest=tmp_path / "m.jsonl",
            output=tmp_path / "o",
            workers=0,
            progress=False,
            tokenizer=model_dir,
            max_prompt_tokens=2048,
            family=family,
        )
    )
    data = shards.load(tmp_path / "o")
    grid = B.pixel_grid(family)
    assert len(data) == 3
    for i in range(3):
        sample = data[i]
        assert processor_length(module, processor, sample) == sample["prompt_tokens"], sample["id"]
        media = (
            sample["frames"]
            if sample["modality"] == "video"
            else sample["image"][None]
            if sample["modality"] == "image"
            else None
        )
        if media is not None:
            assert media.shape[1] % grid == 0 and media.shape[2] % grid == 0, sample["id"]
    assert max(data.prompt_tokens) <= 2048
