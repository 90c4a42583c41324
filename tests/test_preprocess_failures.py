"""preprocess: every bad input becomes one line in failures.jsonl, everything else is written, the run exits 0;
unusable arguments exit non-zero with one line and no traceback."""

import json
import os

import pytest

from omni_grpo import synthetic
from preprocess import shards
from preprocess.workers import run_tasks
from tests import broken_media
from tests.helpers import preprocess_cli, preprocess_here


def failures_of(out):
    lines = (out / "failures.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        assert {"id", "path", "reason"} <= set(record) and record["reason"]
    return records


def test_jsonl_bad_inputs_become_failures(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    synthetic.make_clip(d / "good.mp4", seconds=1.0, seed=1)
    synthetic.make_clip(d / "quiet.mp4", seconds=1.0, audio=None)
    synthetic.make_clip(d / "surround.mp4", seconds=1.0, channels=6, sample_rate=48000)
    synthetic.make_clip(d / "stereo.mp4", seconds=1.0, channels=2, sample_rate=44100)
    broken_media.make_truncated(d / "good.mp4", d / "truncated.mp4")
    broken_media.make_text_file(d / "text.mp4")
    broken_media.make_empty_file(d / "empty.mp4")
    synthetic.make_clip(d / "one.mp4", seconds=0.125, fps=8)
    broken_media.make_text_file(d / "broken.wav")
    synthetic.make_wav(d / "u8.wav", seconds=1.0, sample_rate=11025, subtype="PCM_U8")
    good = ["good", "quiet", "surround", "stereo", "u8", "inside_abs"]
    if synthetic.hevc_available():
        synthetic.make_clip(d / "hevc.mp4", seconds=1.0, video_codec="libx265")
        good.append("hevc")

    def row(sample_id, video, **kw):
        return json.dumps({"id": sample_id, "video": video, "question": "What?", "answer": "A", **kw}).encode()

    lines = [
        row("good", "good.mp4", options=["yes", "no"]),
        row("quiet", "quiet.mp4"),
        row("surround", "surround.mp4"),
        row("stereo", "stereo.mp4"),
        row("u8", "good.mp4", audio="u8.wav"),
        row("inside_abs", str(d / "good.mp4")),
        row("missing", "gone.mp4"),
        row("truncated", "truncated.mp4"),
        row("text", "text.mp4"),
        row("empty", "empty.mp4"),
        row("one_frame", "one.mp4"),
        row("bad_wav", "good.mp4", audio="broken.wav"),
        row("escape", "../../etc/passwd"),
        row("absolute", "/etc/passwd"),
        row("good", "quiet.mp4"),  # duplicate id: the first is kept
        json.dumps({"id": "no_question", "video": "good.mp4", "answer": "A"}).encode(),
        json.dumps({"video": "good.mp4", "question": "?", "answer": "A"}).encode(),
        row("bad_options", "good.mp4", options="A or B"),
        b'{"id": "malformed", "video": "good.mp4", ',
        b'{"id": "latin1", "video": "good.mp4", "question": "caf\xe9", "answer": "A"}',
        b'{"id": "nan", "video": "good.mp4", "question": "?", "answer": NaN}',
        b'{"id": "surrogate", "video": "good.mp4", "question": "\\ud800", "answer": "A"}',
        b'["not", "an", "object"]',
    ]
    if synthetic.hevc_available():
        lines.append(row("hevc", "hevc.mp4"))
    (d / "manifest.jsonl").write_bytes(b"\n".join(lines) + b"\n\n")
    expected = {  # line number → reason fragment
        7: "not found",
        8: "truncated",
        9: "not a video",
        10: "empty",
        11: "too short",
        12: "cannot read audio",
        13: "outside",
        14: "outside",
        15: "duplicate id",
        16: "missing field 'question'",
        17: "missing field 'id'",
        18: "options",
        19: "malformed JSON",
        20: "UTF-8",
        21: "NaN",
        22: "invalid character",
        23: "JSON object",
    }

    summary = preprocess_here(tmp_path / "out", source="jsonl", manifest=d / "manifest.jsonl")
    failures = failures_of(tmp_path / "out")
    assert sorted(f["line"] for f in failures) == sorted(expected)
    for failure in failures:
        assert expected[failure["line"]] in failure["reason"], failure
    assert {f["id"] for f in failures if f["line"] in (7, 8, 9, 13, 15)} == {
        "missing",
        "truncated",
        "text",
        "escape",
        "good",
    }
    counts = summary["counts"]
    assert counts["failed"] == len(expected) and counts["written"] == len(good)
    assert counts["samples"] == counts["written"] + counts["failed"]
    assert counts["without_audio"] == 1 and counts["with_audio"] == len(good) - 1
    items = {item["id"]: item for item in shards.load(tmp_path / "out")}
    assert sorted(items) == sorted(good)
    assert items["good"]["video"] == "good.mp4"  # the first of the duplicate ids
    assert items["quiet"]["audio"] is None
    assert items["u8"]["audio_source"] == "file"
    assert all(len(items[k]["audio"]) == 16000 for k in ("surround", "stereo", "u8"))


def test_siq2_bad_lines_and_media(tmp_path):
    root = synthetic.make_siq2_dataset(tmp_path / "siq2", n_clips=3, seconds=1.0)
    qa_path = root / "qa" / "qa_train.json"
    rows = [json.loads(line) for line in qa_path.read_text().splitlines()]
    videos = sorted({r["vid_name"] for r in rows})
    (root / "video" / f"{videos[0]}.mp4").unlink()  # missing from this download
    broken_media.make_text_file(root / "audio" / "wav" / f"{videos[1]}.wav")  # an unreadable wav
    base = next(r for r in rows if r["vid_name"] == videos[2])
    bad = [
        {**base, "qid": "range", "answer_idx": 4},
        {**base, "qid": "negative", "answer_idx": -1},
        {**base, "qid": "boolean", "answer_idx": True},
        {**base, "qid": "traversal", "vid_name": "../../etc/passwd"},
        {k: v for k, v in base.items() if k != "a3"} | {"qid": "no_a3"},
        {**base, "qid": "string_idx", "answer_idx": "2"},  # accepted: a digit string
    ]
    with open(qa_path, "ab") as f:
        for b in bad:
            f.write(json.dumps(b).encode() + b"\n")
        f.write(b"\xff\xfe not utf-8\n")
        f.write(b"{broken\n")
    summary = preprocess_here(tmp_path / "out", source="siq2", root=root)
    failures = failures_of(tmp_path / "out")
    by_id = {}
    for f in failures:
        by_id.setdefault(f["id"], []).append(f["reason"])
    lost_0 = [r["qid"] for r in rows if r["vid_name"] == videos[0]]
    lost_1 = [r["qid"] for r in rows if r["vid_name"] == videos[1]]
    for qid in lost_0:
        assert by_id[qid] == [f"video file not found: {videos[0]}.mp4"]
    for qid in lost_1:
        assert len(by_id[qid]) == 1 and "cannot read audio file" in by_id[qid][0]
    assert "out of range" in by_id["range"][0] and "out of range" in by_id["negative"][0]
    assert "integer" in by_id["boolean"][0]
    assert "plain file name" in by_id["traversal"][0]
    assert "a3" in by_id["no_a3"][0]
    assert len(by_id[None]) == 2
    assert "string_idx" not in by_id
    written = {item["id"] for item in shards.load(tmp_path / "out")}
    assert written == {r["qid"] for r in rows if r["vid_name"] == videos[2]} | {"string_idx"}
    assert summary["counts"]["failed"] == len(failures) == len(lost_0) + len(lost_1) + 7


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--source", "siq2", "--root", "nowhere", "--output", "out"], "nowhere is not a folder"),
        (["--source", "jsonl", "--manifest", "missing.jsonl", "--output", "out"], "missing.jsonl does not exist"),
        (["--source", "jsonl", "--manifest", ".", "--output", "out"], "is a folder"),
        (["--source", "siq2", "--output", "out"], "needs --root"),
        (["--source", "siq2", "--root", ".", "--output", "out", "--fps", "0"], "--fps must be positive"),
        (
            ["--source", "siq2", "--root", ".", "--output", "out", "--num-shards", "2", "--shard-index", "2"],
            "--shard-index",
        ),
        (["--source", "siq2", "--root", ".", "--output", "out"], "qa/qa_train.json and video not found"),
    ],
)
def test_cli_unusable_arguments_exit_nonzero_with_one_line(tmp_path, args, fragment):
    result = preprocess_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("preprocess: error:") and fragment in lines[0], lines


def test_cli_completed_run_with_failures_exits_zero(tmp_path):
    synthetic.make_clip(tmp_path / "ok.mp4", seconds=1.0)
    broken_media.make_text_file(tmp_path / "bad.mp4")
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"id": "ok", "video": "ok.mp4", "question": "?", "answer": "A"})
        + "\n"
        + json.dumps({"id": "bad", "video": "bad.mp4", "question": "?", "answer": "A"})
        + "\n"
    )
    result = preprocess_cli(
        "--source",
        "jsonl",
        "--manifest",
        "m.jsonl",
        "--output",
        "out",
        "--workers",
        "1",
        "--min-pixels",
        "3136",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert "wrote 1 sample from 1 clip " in summary and "1 failed" in summary and "clips/s" in summary
    assert "clip" in result.stderr  # the progress bar
    assert [f["id"] for f in failures_of(tmp_path / "out")] == ["bad"]


def _crash_on_request(task):
    if task.get("crash"):
        os._exit(3)
    return {"ok": True, "value": task["value"]}


def test_a_clip_that_kills_its_worker_becomes_a_failure():
    tasks = [(i, {"value": i, "crash": i == 2}) for i in range(5)]
    results = dict(run_tasks(tasks, workers=2, fn=_crash_on_request))
    assert sorted(results) == [0, 1, 2, 3, 4]
    assert results[2]["ok"] is False and "crashed" in results[2]["reason"]
    assert all(results[i] == {"ok": True, "value": i} for i in (0, 1, 3, 4))
