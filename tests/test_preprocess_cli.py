"""python -m preprocess as typed (subprocess): contradictory options are one argument error before any file is
read, a run that writes nothing fails with its most common reason, a wrong --root shows the expected layout,
unknown problem types are reported once."""

import json

import pytest

from omni_grpo import synthetic
from tests import broken_media
from tests.helpers import preprocess_cli


def one_error_line(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("preprocess: error:"), lines
    return lines[0]


@pytest.mark.parametrize(
    "options,fragments",
    [
        (["--max-pixels", "12544"], ["--max-pixels 12544", "the default --min-pixels 100352", "pass a --min-pixels"]),
        (["--min-pixels", "5000", "--max-pixels", "4000"], ["--min-pixels 5000 is larger than --max-pixels 4000"]),
        (["--max-frames", "2"], ["the default --min-frames 4 is larger than --max-frames 2"]),
        (["--min-frames", "1000"], ["--min-frames 1000 is larger than the default --max-frames 768"]),
        (["--min-pixels", "784", "--total-pixels", "500"], ["--total-pixels 500"]),
        (["--max-pixels", "700", "--min-pixels", "100"], ["smaller than one 28x28 patch"]),
        (["--max-prompt-tokens", "40"], ["cannot hold any prompt"]),
        (["--max-prompt-tokens", "-1"], ["--max-prompt-tokens must be 0"]),
        (["--tokenizer", "nowhere"], ["--tokenizer nowhere has no tokenizer_config.json"]),
    ],
)
def test_contradictory_options_are_one_error_before_any_file_is_read(tmp_path, options, fragments):
    # the manifest does not exist: an error about it would mean the options were checked too late
    line = one_error_line(
        preprocess_cli("--source", "jsonl", "--manifest", "absent.jsonl", "--output", "out", *options, cwd=tmp_path)
    )
    for fragment in fragments:
        assert fragment in line
    assert not (tmp_path / "out").exists()


def test_a_run_that_writes_nothing_fails_with_the_most_common_reason(tmp_path):
    broken_media.make_text_file(tmp_path / "a.mp4")
    broken_media.make_text_file(tmp_path / "b.mp4")
    broken_media.make_empty_file(tmp_path / "c.mp4")
    rows = [{"id": k, "video": f"{k}.mp4", "question": "?", "answer": "A"} for k in "abc"]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = one_error_line(
        preprocess_cli(
            "--source",
            "jsonl",
            "--manifest",
            "m.jsonl",
            "--output",
            "out",
            "--workers",
            "0",
            "--no-progress",
            cwd=tmp_path,
        )
    )
    assert "no sample was written: all 3 failed" in line
    assert "(2 of them), e.g. a.mp4: cannot open a.mp4 as a video" in line and "failures.jsonl" in line
    assert len((tmp_path / "out" / "failures.jsonl").read_text().splitlines()) == 3


def test_siq2_on_a_wrong_folder_shows_the_layout(tmp_path):
    (tmp_path / "data" / "clips").mkdir(parents=True)
    (tmp_path / "data" / "qa.json").write_text("{}\n")
    line = one_error_line(preprocess_cli("--source", "siq2", "--root", "data", "--output", "out", cwd=tmp_path))
    assert "does not have the Social-IQ 2.0 layout" in line
    assert "qa/qa_train.json (JSON Lines: qid, q, vid_name, ts, a0..a3, answer_idx)" in line
    assert "video/{vid_name}.mp4" in line and "audio/wav/{vid_name}.wav" in line
    assert "found: clips/, qa.json" in line


def test_siq2_with_another_split_names_it(tmp_path):
    (tmp_path / "data" / "qa").mkdir(parents=True)
    (tmp_path / "data" / "video").mkdir()
    (tmp_path / "data" / "qa" / "qa_val.json").write_text("")
    line = one_error_line(preprocess_cli("--source", "siq2", "--root", "data", "--output", "out", cwd=tmp_path))
    assert "qa/ has the splits val: pass --split" in line


def test_unknown_problem_type_is_reported_once_and_counted(tmp_path):
    synthetic.make_clip(tmp_path / "c.mp4", seconds=1.0)
    rows = [
        {"id": f"s{i}", "video": "c.mp4", "question": "?", "answer": "A", "problem_type": t}
        for i, t in enumerate(["essay", "essay", "yes/no", "multiple choice", "OCR"])
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = preprocess_cli(
        "--source",
        "jsonl",
        "--manifest",
        "m.jsonl",
        "--output",
        "out",
        "--workers",
        "0",
        "--no-progress",
        "--min-pixels",
        "3136",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "problem_type" in line]
    assert len(warnings) == 1
    assert "'essay' (2)" in warnings[0] and "yes_no (" in warnings[0] and "numerical" in warnings[0]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["unknown_problem_type"] == 2
    assert manifest["problem_types"] == {
        "matched": {"yes_no": 1, "multiple_choice": 1, "free_text": 1},
        "unknown": {"essay": 2},
    }
