"""Benchmark readers (preprocess.benchmarks): each published layout read end to end into shards.

Every fixture is written in the benchmark's released format (field names, nesting, option labels, answer
encoding and video paths as docs/benchmarks.md cites them), with tiny synthetic clips.
"""

import json
from pathlib import Path

import pytest

from omni_grpo import synthetic
from preprocess import shards
from preprocess.benchmarks import _options
from preprocess.build import PreprocessError
from preprocess.sources import LineError
from tests.helpers import preprocess_cli, preprocess_here

REPO = Path(__file__).resolve().parents[1]


def clip(path):
    return synthetic.make_clip(path, seconds=1.0, size=(64, 64))


def written(out):
    return {item["id"]: item for item in shards.load(out)}


def failures(out):
    return {f["id"]: f for f in (json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines())}


# --- Daily-Omni: qa.json (a JSON list), Videos/{id}/{id}_video.mp4 ---------------------------------------


def daily_record(video_id, answer="B", **extra):
    return {
        "Question": f"What happens in {video_id}?",
        "Choice": ["A. First", "B. Second", "C. Third", "D. Fourth"],
        "Answer": answer,
        "video_id": video_id,
        "Type": "AV Event Alignment",
        "video_category": "People & Blogs",
        "video_duration": "30s",
        **extra,
    }


def test_dailyomni_cli_reads_the_release(tmp_path):
    root = tmp_path / "Daily-Omni"
    clip(root / "Videos" / "vidA" / "vidA_video.mp4")
    (root / "Videos" / "vidB").mkdir(parents=True)  # its mp4 is missing from this download
    records = [
        daily_record("vidA", "B"),
        daily_record("vidA", "d", Type="Inference", video_duration="60s"),
        daily_record("vidB", "A"),
        daily_record("vidA", "E"),
    ]
    (root / "qa.json").write_text(json.dumps(records))
    result = preprocess_cli(
        "--source",
        "dailyomni",
        "--root",
        str(root),
        "--output",
        "out",
        "--workers",
        "0",
        "--min-pixels",
        str(28 * 28 * 4),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    items = written(tmp_path / "out")
    assert set(items) == {"vidA#0", "vidA#1"}
    first, second = items["vidA#0"], items["vidA#1"]
    assert first["question"] == "What happens in vidA?"
    assert first["options"] == ["First", "Second", "Third", "Fourth"]
    assert (first["answer"], second["answer"]) == ("B", "D")
    assert first["problem_type"] == second["problem_type"] == "multiple_choice"
    assert first["extra"] == {
        "video_id": "vidA",
        "Type": "AV Event Alignment",
        "video_category": "People & Blogs",
        "video_duration": "30s",
    }
    assert (second["extra"]["Type"], second["extra"]["video_duration"]) == ("Inference", "60s")
    lost = failures(tmp_path / "out")
    assert set(lost) == {"vidB#0", "vidA#2"}
    assert lost["vidB#0"]["path"] == "Videos/vidB/vidB_video.mp4" and "not found" in lost["vidB#0"]["reason"]
    assert lost["vidA#2"]["line"] == 4 and "not one of the 4 options" in lost["vidA#2"]["reason"]


def test_dailyomni_object_keyed_by_entry_uses_the_keys(tmp_path):
    root = tmp_path / "d"
    clip(root / "Videos" / "v1" / "v1_video.mp4")
    (root / "qa.json").write_text(json.dumps({"Entry_7": daily_record("v1", "C")}))
    preprocess_here(tmp_path / "out", source="dailyomni", root=root)
    assert {k: v["answer"] for k, v in written(tmp_path / "out").items()} == {"Entry_7": "C"}


# --- WorldSense: worldsense_qa.json keyed by video, videos/{video}.mp4 ----------------------------------


def world_video(tasks, domain="Sports"):
    return {
        "duration": "1min",
        "domain": domain,
        "sub_category": "Football",
        "audio_class": ["Speech", "Event"],
        "video_caption": "A long description of the clip.",
        **tasks,
    }


def world_task(answer, task_type="Audio Recognition"):
    return {
        "question": "What is heard?",
        "candidates": ["A. A dog", "B. A car", "C. Rain", "D. Music"],
        "answer": answer,
        "task_domain": "Recognition",
        "task_type": task_type,
    }


def test_worldsense_reads_the_release(tmp_path):
    root = tmp_path / "WorldSense"
    clip(root / "videos" / "w1.mp4")
    (root / "worldsense_qa.json").write_text(
        json.dumps(
            {
                "w1": world_video({"task1": world_task("C"), "task2": world_task("A", "Object Counting")}),
                "w2": world_video({"task1": world_task("B")}, domain="Music"),  # video not downloaded
            }
        )
    )
    preprocess_here(tmp_path / "out", source="worldsense", root=root)
    items = written(tmp_path / "out")
    assert set(items) == {"w1_task1", "w1_task2"}
    one = items["w1_task1"]
    assert one["question"] == "What is heard?" and one["options"] == ["A dog", "A car", "Rain", "Music"]
    assert (one["answer"], items["w1_task2"]["answer"]) == ("C", "A") and one["problem_type"] == "multiple_choice"
    assert one["extra"] == {
        "video_id": "w1",
        "duration": "1min",
        "domain": "Sports",
        "sub_category": "Football",
        "audio_class": ["Speech", "Event"],
        "task_domain": "Recognition",
        "task_type": "Audio Recognition",
    }
    assert items["w1_task2"]["extra"]["task_type"] == "Object Counting"
    lost = failures(tmp_path / "out")
    assert set(lost) == {"w2_task1"} and lost["w2_task1"]["path"] == "videos/w2.mp4"


# --- IntentBench: qa.json in HumanOmniV2's schema, videos/ ------------------------------------------------


def test_intentbench_reads_each_problem_type(tmp_path):
    root = tmp_path / "IntentBench"
    clip(root / "videos" / "social" / "s1.mp4")
    clip(root / "videos" / "emer" / "e1.mp4")
    records = [
        {
            "qid": "q1",
            "problem": "Why does he smile?",
            "options": ["A. Joy", "B. Fear", "C. Anger", "D. Pity"],
            "solution": "<think>…</think><answer>C</answer>",
            "problem_type": "multiple choice",
            "data_type": "video",
            "video": "social/s1.mp4",
            "Type": "why",
        },
        {
            "qid": "q2",
            "problem": "Which emotions apply?",
            "options": ["A. Joy", "B. Helpless", "C. Calm", "D. Pride", "E. Angry", "F. Friendly"],
            "solution": "<answer>E,B</answer>",
            "problem_type": "emer_ov_mc",
            "data_type": "video",
            "video": "emer/e1.mp4",
            "Type": "emotion",
        },
        {
            "qid": "q3",
            "problem": 'Is the person lying when asked "Where were you?"',
            "solution": "<answer>Yes</answer>",
            "problem_type": "judge",
            "data_type": "video",
            "video": "social/s1.mp4",
            "Type": "deception",
        },
        {
            "qid": "q3b",
            "problem": "Is she lying?",
            "options": ["A. Yes", "B. No"],
            "solution": "<answer>B</answer>",
            "problem_type": "judge",
            "data_type": "video",
            "video": "social/s1.mp4",
            "Type": "deception",
        },
        {
            "qid": "q4",
            "problem": "What?",
            "options": ["A. x", "B. y"],
            "solution": "<answer>A</answer>",
            "problem_type": "multiple choice",
            "data_type": "video",
            "video": "social/missing.mp4",
            "Type": "what",
        },
        {
            "qid": "q5",
            "problem": "How many?",
            "solution": "<answer>3</answer>",
            "problem_type": "numerical",
            "data_type": "video",
            "video": "social/s1.mp4",
        },
        {
            "qid": "q6",
            "problem": "What sound?",
            "options": ["A. x", "B. y"],
            "solution": "<answer>B</answer>",
            "problem_type": "multiple choice",
            "data_type": "image_audio",
            "path": {"image": "i.jpg", "audio": "a.wav"},
        },
    ]
    (root / "qa.json").write_text(json.dumps(records))
    preprocess_here(tmp_path / "out", source="intentbench", root=root)
    items = written(tmp_path / "out")
    assert set(items) == {"q1", "q2", "q3", "q3b"}
    assert items["q1"]["options"] == ["Joy", "Fear", "Anger", "Pity"]
    assert (items["q1"]["answer"], items["q1"]["problem_type"]) == ("C", "multiple_choice")
    assert (items["q2"]["answer"], items["q2"]["problem_type"]) == ("B,E", "multi_label")
    assert (items["q3"]["answer"], items["q3"]["problem_type"], items["q3"]["options"]) == ("yes", "yes_no", [])
    assert (items["q3b"]["answer"], items["q3b"]["options"]) == ("no", [])
    assert items["q1"]["extra"] == {
        "qid": "q1",
        "data_type": "video",
        "Type": "why",
        "source_problem_type": "multiple choice",
    }
    assert items["q2"]["extra"]["Type"] == "emotion" and items["q3"]["extra"]["source_problem_type"] == "judge"
    lost = failures(tmp_path / "out")
    assert set(lost) == {"q4", "q5", "q6"}
    assert lost["q4"]["path"] == "videos/social/missing.mp4"
    assert "numerical" in lost["q5"]["reason"] and "not a video" in lost["q6"]["reason"]


def test_intentbench_paths_already_under_videos_are_found(tmp_path):
    root = tmp_path / "ib"
    clip(root / "videos" / "a.mp4")
    (root / "qa.json").write_text(
        json.dumps(
            [
                {
                    "qid": "x",
                    "problem": "?",
                    "options": ["A. p", "B. q"],
                    "solution": "<answer>B</answer>",
                    "problem_type": "multiple choice",
                    "video": "videos/a.mp4",
                }
            ]
        )
    )
    preprocess_here(tmp_path / "out", source="intentbench", root=root)
    assert set(written(tmp_path / "out")) == {"x"}


# --- AVQA: annotation/{split}_qa.json, video/{video_name}.mp4 -------------------------------------------


def test_avqa_reads_the_split(tmp_path):
    root = tmp_path / "avqa"
    clip(root / "video" / "-0PQM4-hqg_000030.mp4")
    (root / "annotation").mkdir(parents=True)
    rows = [
        {
            "video_name": "-0PQM4-hqg_000030",
            "video_id": 1,
            "question_text": "Where is the sound coming from?",
            "multi_choice": ["street", "kitchen", "forest", "stage"],
            "answer": 2,
            "question_type": "Come From",
        },
        {
            "video_name": "-0PQM4-hqg_000030",
            "video_id": 1,
            "question_text": "What is happening?",
            "multi_choice": ["cooking", "singing", "driving", "sleeping"],
            "answer": "1",
            "question_type": "Happening",
        },
        {
            "video_name": "gone_000001",
            "video_id": 2,
            "question_text": "Why?",
            "multi_choice": ["a", "b", "c", "d"],
            "answer": 0,
            "question_type": "Why",
        },
    ]
    (root / "annotation" / "val_qa.json").write_text(json.dumps(rows))
    (root / "annotation" / "train_qa.json").write_text(json.dumps(rows[:1]))
    summary = preprocess_here(tmp_path / "out", source="avqa", root=root, split="val")
    items = written(tmp_path / "out")
    assert set(items) == {"val-0", "val-1"}
    assert items["val-0"]["options"] == ["street", "kitchen", "forest", "stage"]
    assert (items["val-0"]["answer"], items["val-1"]["answer"]) == ("C", "B")
    assert items["val-0"]["extra"] == {"video_name": "-0PQM4-hqg_000030", "video_id": 1, "question_type": "Come From"}
    assert set(failures(tmp_path / "out")) == {"val-2"}
    assert summary["options"]["split"] == "val"


def test_avqa_null_option_is_read_as_the_authors_encode_it(tmp_path):
    # AlyssaYoung/AVQA preprocess/preprocess_text/datautils/avqa.py turns a None candidate into "null".
    root = tmp_path / "avqa"
    clip(root / "video" / "-0PQM4-hqg_000030.mp4")
    (root / "annotation").mkdir(parents=True)
    base = {
        "video_name": "-0PQM4-hqg_000030",
        "video_id": 1,
        "question_text": "Which instrument is heard?",
        "question_type": "Which",
    }
    rows = [
        {**base, "id": 7, "multi_choice": ["piano", None, "violin", "drum"], "answer": 2},
        {**base, "id": 8, "multi_choice": ["piano", "guitar", None, "drum"], "answer": 2},
    ]
    (root / "annotation" / "train_qa.json").write_text(json.dumps(rows))
    preprocess_here(tmp_path / "out", source="avqa", root=root)
    items = written(tmp_path / "out")
    assert items["7"]["options"] == ["piano", "null", "violin", "drum"] and items["7"]["answer"] == "C"
    assert items["7"]["extra"]["null_options"] == ["B"]
    lost = failures(tmp_path / "out")
    assert set(lost) == {"8"} and lost["8"]["line"] == 2
    assert "correct option C (multi_choice[2]) is null" in lost["8"]["reason"]


# --- HumanOmniV2 / R1-Omni / Video-R1 records (--source r1) --------------------------------------------


def humanomniv2_record(video, problem_type, options, answer, **extra):
    """A record as in HumanMLLM/HumanOmniV2 src/open-r1-multimodal/data_config/emer_rewrite.json (9bf0e6f):
    problem, problem_type, options ("A. …"), solution (<context>/<think> reasoning, then <answer>), answer,
    data_type, clean_list, video and path."""
    return {
        "problem": f"What emotions does the speaker in {video} show?",
        "problem_type": problem_type,
        "options": options,
        "solution": f"<context>a face</context><think>she smiles</think><answer>{answer}</answer>",
        "answer": answer,
        "data_type": "video",
        "clean_list": ["Happy"],
        "video": f"MER24/{video}",
        "path": f"MER24/{video}",
        **extra,
    }


def video_r1_record(problem_id, data_type, path, problem_type, answer, options=()):
    """A record as tulerfeng/Video-R1 reads Video-R1-260k.json (src/r1-v/src/open_r1/grpo.py, 59d65c3):
    problem_id, problem, data_type, problem_type, options, process, solution "<answer>…</answer>", path "./…"."""
    return {
        "problem_id": problem_id,
        "problem": f"Question {problem_id}?",
        "data_type": data_type,
        "problem_type": problem_type,
        "options": list(options),
        "process": "<think>long reasoning</think>",
        "solution": f"<answer>{answer}</answer>",
        "path": path,
    }


def test_r1_reads_humanomniv2_and_video_r1_records(tmp_path):
    root = tmp_path / "videos"
    clip(root / "MER24" / "sample_0.mp4")
    clip(root / "LLaVA-Video-178K" / "v.mp4")
    synthetic.make_image(root / "Math" / "g.png", size=(56, 56))
    six = ["A. Urgent", "B. Happy", "C. Relaxed", "D. Understanding", "E. Admiration", "F. Approve"]
    records = [
        humanomniv2_record("sample_0.mp4", "emer_ov_mc", six, "C,B"),
        humanomniv2_record("sample_0.mp4", "multiple choice", six[:4], "D"),
        humanomniv2_record("sample_0.mp4", "judge", [], "Yes"),
        humanomniv2_record("sample_0.mp4", "emer_ov", [], "happy"),
        humanomniv2_record("sample_0.mp4", "emer_ov_mc", six, "B", path={"image": "a.png", "audio": "a.wav"}),
        video_r1_record(17, "video", "./LLaVA-Video-178K/v.mp4", "numerical", "3.5"),
        video_r1_record(18, "image", "./Math/g.png", "regression", "42"),
        video_r1_record(19, "video", "./LLaVA-Video-178K/v.mp4", "OCR", "EXIT 12"),
        video_r1_record(20, "video", "./LLaVA-Video-178K/v.mp4", "free-form", "a red car"),
        video_r1_record(
            21, "video", "./LLaVA-Video-178K/v.mp4", "multiple choice", "B", ["A. left", "B. right", "C. up", "D. down"]
        ),
        video_r1_record(22, "video", "./missing.mp4", "numerical", "1"),
    ]
    (tmp_path / "data_config").mkdir()
    (tmp_path / "data_config" / "mixed.json").write_text(json.dumps(records))
    result = preprocess_cli(
        "--source",
        "r1",
        "--root",
        str(root),
        "--split",
        str(tmp_path / "data_config" / "mixed.json"),
        "--output",
        "out",
        "--workers",
        "0",
        "--min-pixels",
        str(28 * 28 * 4),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    items = written(tmp_path / "out")
    assert set(items) == {"mixed-0", "mixed-1", "mixed-2", "17", "18", "19", "20", "21"}
    assert (items["mixed-0"]["problem_type"], items["mixed-0"]["answer"]) == ("multi_label", "B,C")
    assert items["mixed-0"]["options"] == [o[3:] for o in six]
    assert (items["mixed-1"]["problem_type"], items["mixed-1"]["answer"]) == ("multiple_choice", "D")
    assert (items["mixed-2"]["problem_type"], items["mixed-2"]["answer"], items["mixed-2"]["options"]) == (
        "yes_no",
        "yes",
        [],
    )
    assert items["mixed-0"]["extra"] == {
        "data_type": "video",
        "clean_list": ["Happy"],
        "source_problem_type": "emer_ov_mc",
    }
    assert [(items[k]["problem_type"], items[k]["answer"]) for k in ("17", "18", "19", "20", "21")] == [
        ("numeric", "3.5"),
        ("numeric", "42"),
        ("free_text", "EXIT 12"),
        ("free_text", "a red car"),
        ("multiple_choice", "B"),
    ]
    assert items["18"]["modality"] == "image" and items["17"]["modality"] == "video"
    assert "process" not in items["17"]["extra"] and items["17"]["extra"]["source_problem_type"] == "numerical"
    lost = failures(tmp_path / "out")
    assert set(lost) == {"mixed-3", "mixed-4", "22"}
    assert "'emer_ov' has no matcher" in lost["mixed-3"]["reason"]
    assert "lists several media (audio, image)" in lost["mixed-4"]["reason"]
    humanomniv2 = preprocess_cli("--source", "humanomniv2", "--root", str(root), "--output", "out2", cwd=tmp_path)
    assert humanomniv2.returncode != 0 and "needs --split FILE" in humanomniv2.stderr


def test_r1_reads_json_lines(tmp_path):
    root = tmp_path / "data"
    clip(root / "v.mp4")
    lines = [video_r1_record(1, "video", "./v.mp4", "multiple choice", "A", ["A. x", "B. y"]), "{broken"]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) if isinstance(r, dict) else r for r in lines))
    preprocess_here(tmp_path / "out", source="r1", root=root, split="train.jsonl")
    assert set(written(tmp_path / "out")) == {"1"}
    assert "malformed JSON" in failures(tmp_path / "out")[None]["reason"]


# --- Social-IQ 2.0 validation split (existing siq2 reader) ---------------------------------------------


def test_siq2_val_split(tmp_path):
    root = synthetic.make_siq2_dataset(tmp_path / "siq2", n_clips=2, split="val", seconds=1.0)
    qa = [json.loads(line) for line in (root / "qa" / "qa_val.json").read_text().splitlines()]
    summary = preprocess_here(tmp_path / "out", source="siq2", root=root, split="val")
    items = written(tmp_path / "out")
    assert set(items) == {row["qid"] for row in qa}
    assert all(items[row["qid"]]["answer"] == "ABCD"[row["answer_idx"]] for row in qa)
    assert summary["source"]["qa_file"] == "qa/qa_val.json" and summary["options"]["split"] == "val"


def siq2_line(qid, q, vid_name="3vZccD8ySXc", answer_idx=1):
    """A line of Social-IQ 2.0's qa_val.json as released (abwilf/Social-IQ-2.0-Challenge siq2/qa/qa_val.json,
    62a5c4b: qid, q, vid_name, ts, ans_corr, answer_idx, idx_types, a0..a3); ts fits the 1 s clip."""
    options = [f"{q} option {i}" for i in range(4)]
    return {
        "qid": qid,
        "q": q,
        "vid_name": vid_name,
        "ts": "0.00-1.000000",
        "ans_corr": options[answer_idx],
        "answer_idx": answer_idx,
        "idx_types": ["matched", "corr", "rewrite", "matched"],
        **{f"a{i}": o for i, o in enumerate(options)},
    }


def test_siq2_keeps_every_question_of_a_reused_qid(tmp_path):
    # As in the val release (lines 48-52): q3_0 and q2_0 each name two different questions.
    root = tmp_path / "siq2"
    clip(root / "video" / "3vZccD8ySXc.mp4")
    lines = [
        siq2_line("3vZccD8ySXc_q3_0", "How did the girls react to hitting the wrong button?"),
        siq2_line("3vZccD8ySXc_q2_0", "How does the driver's lack of understanding affect her driving?"),
        siq2_line("3vZccD8ySXc_q3_0", "Why did the girls suddenly scream at 0:15?", answer_idx=3),
        siq2_line("3vZccD8ySXc_q2_0", "Why is the driver hitting the roof of the car", answer_idx=0),
        siq2_line("3vZccD8ySXc_q3_0", "Why did the girls suddenly scream at 0:15?", answer_idx=3),
        siq2_line("3vZccD8ySXc_q3_0", "What do the girls do next?", answer_idx=2),
    ]
    (root / "qa").mkdir()
    (root / "qa" / "qa_val.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = preprocess_here(tmp_path / "out", source="siq2", root=root, split="val")
    items = written(tmp_path / "out")
    assert set(items) == {
        "3vZccD8ySXc_q3_0",
        "3vZccD8ySXc_q2_0",
        "3vZccD8ySXc_q3_0#1",
        "3vZccD8ySXc_q2_0#1",
        "3vZccD8ySXc_q3_0#2",
    }
    assert items["3vZccD8ySXc_q3_0#1"]["question"] == "Why did the girls suddenly scream at 0:15?"
    assert items["3vZccD8ySXc_q3_0#1"]["answer"] == "D"
    assert items["3vZccD8ySXc_q2_0#1"]["question"] == "Why is the driver hitting the roof of the car"
    assert items["3vZccD8ySXc_q3_0#2"]["question"] == "What do the girls do next?"
    assert {item["extra"]["qid"] for item in items.values()} == {"3vZccD8ySXc_q3_0", "3vZccD8ySXc_q2_0"}
    assert items["3vZccD8ySXc_q3_0#2"]["extra"]["qid"] == "3vZccD8ySXc_q3_0"
    lost = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert [(f["id"], f["line"]) for f in lost] == [("3vZccD8ySXc_q3_0", 5)]
    assert "duplicate of line 3 (same id and content); dropped" in lost[0]["reason"]
    assert summary["counts"]["written"] == 5


def test_siq2_repeat_ids_do_not_take_a_released_id(tmp_path):
    root = tmp_path / "siq2"
    clip(root / "video" / "3vZccD8ySXc.mp4")
    lines = [siq2_line("v_q1", "First?"), siq2_line("v_q1#1", "Released with a hash?"), siq2_line("v_q1", "Second?")]
    (root / "qa").mkdir()
    (root / "qa" / "qa_train.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    preprocess_here(tmp_path / "out", source="siq2", root=root)
    items = written(tmp_path / "out")
    assert {k: v["question"] for k, v in items.items()} == {
        "v_q1": "First?",
        "v_q1#1": "Released with a hash?",
        "v_q1#2": "Second?",
    }


# --- layouts and field rules ----------------------------------------------------------------------------

LAYOUTS = {
    "dailyomni": ("qa.json", "Videos", "Videos/{video_id}/{video_id}_video.mp4"),
    "worldsense": ("worldsense_qa.json", "videos", "videos/{video}.mp4"),
    "intentbench": ("qa.json", "videos", "ROOT/videos/"),
    "avqa": ("annotation/train_qa.json", "video", "video/{video_name}.mp4"),
}


@pytest.mark.parametrize("source", sorted(LAYOUTS))
def test_wrong_layout_error_shows_the_expected_layout(tmp_path, source):
    qa_name, folder, shown = LAYOUTS[source]
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(PreprocessError) as no_qa:
        preprocess_here(tmp_path / "out", source=source, root=root)
    assert qa_name in str(no_qa.value) and "expected layout" in str(no_qa.value) and shown in str(no_qa.value)
    (root / qa_name).parent.mkdir(parents=True, exist_ok=True)
    (root / qa_name).write_text("[]")
    with pytest.raises(PreprocessError) as no_videos:
        preprocess_here(tmp_path / "out", source=source, root=root)
    assert f"{folder} does not exist" in str(no_videos.value) and shown in str(no_videos.value)


def test_cli_wrong_layout_exits_2_with_the_layout(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "worldsense_qa.json").write_text("{}")
    result = preprocess_cli("--source", "worldsense", "--root", "ws", "--output", "out", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("preprocess: error:") and "ROOT/videos/{video}.mp4" in result.stderr


@pytest.mark.parametrize(
    "raw,expected",
    [
        (["A. one", "B. two"], ("one", "two")),
        (["(A) one", "(B) two"], ("one", "two")),
        (["A) one", "B: two"], ("one", "two")),
        (["A. one", "two"], ("A. one", "two")),  # not every option labelled: kept as written
        (["B. one", "A. two"], ("B. one", "A. two")),  # labels out of order: kept as written
        (["one", "two"], ("one", "two")),
    ],
)
def test_option_labels_removed_only_when_every_option_has_its_own(raw, expected):
    assert _options(raw, "id", "options") == expected


def test_options_must_be_strings():
    with pytest.raises(LineError, match="list of strings"):
        _options(["A. one", 2], "id", "options")


def test_bad_records_become_failures_and_a_bad_file_an_error(tmp_path):
    root = tmp_path / "d"
    clip(root / "Videos" / "v1" / "v1_video.mp4")
    text = json.dumps(
        {
            "ok": daily_record("v1", "A"),
            "KEY": daily_record("v1", "B"),
            "list": [1],
            "no_video": {k: v for k, v in daily_record("v1").items() if k != "video_id"},
        }
    )
    (root / "qa.json").write_text(text.replace('"KEY"', '"\\ud800"'))  # a lone surrogate as an entry name
    preprocess_here(tmp_path / "out", source="dailyomni", root=root)
    assert set(written(tmp_path / "out")) == {"ok"}
    lines = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    by_id = {f["id"]: f["reason"] for f in lines}
    assert len(lines) == 3 and "invalid character" in by_id[None]
    assert "JSON object" in by_id["list"] and "missing field 'video_id'" in by_id["no_video"]
    (root / "qa.json").write_text('[{"Question": ')
    with pytest.raises(PreprocessError, match="not a valid JSON document"):
        preprocess_here(tmp_path / "out2", source="dailyomni", root=root)
