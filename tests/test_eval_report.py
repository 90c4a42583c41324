"""Evaluation statistics and reports without a model: intervals, McNemar, the paired bootstrap, per-category
summaries, the resumable predictions log, and `--compare A B` through the real command line."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from omni_grpo import eval_report, eval_stats

REPO = Path(__file__).resolve().parents[1]
NAMES, WEIGHTS = ["format", "accuracy"], [1.0, 1.0]


def row(qid, k=0, accuracy=1.0, fmt=1.0, **extra):
    return {
        "id": qid,
        "generation": k,
        "question": f"q {qid}",
        "answer": "A",
        "completion": "<answer>A</answer>",
        "parsed_answer": "A",
        "problem_type": "multiple_choice",
        "extra": extra,
        "rewards": {"format": fmt, "accuracy": accuracy},
        "total": (fmt or 0.0) + (accuracy or 0.0),
        "length": 5,
        "truncated": False,
    }


# ---------------------------------------------------------------------------------------------- statistics


def test_wilson_interval_known_values():
    low, high = eval_stats.wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)  # Brown, Cai & DasGupta's worked form
    assert eval_stats.wilson_interval(0, 10)[0] == 0.0 and eval_stats.wilson_interval(10, 10)[1] == 1.0
    assert eval_stats.wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    with pytest.raises(ValueError):
        eval_stats.wilson_interval(1, 0)


def test_t_quantile_and_interval_for_per_question_means():
    for df, expected in [(1, 12.7062), (3, 3.1824), (9, 2.2622), (30, 2.0423)]:  # standard t tables
        assert eval_stats.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    values = [0.5, 1.0, 0.25, 0.75, 0.5]  # pass@1 means of K = 4 samples
    low, high, method = eval_stats.question_interval(values)
    half = 2.7764 * statistics.stdev(values) / len(values) ** 0.5  # t(0.975, 4)
    assert method == "t" and (low, high) == pytest.approx((0.6 - half, 0.6 + half), abs=1e-4)
    assert eval_stats.question_interval([1.0, 0.0, 1.0])[2] == "wilson"


def test_mcnemar_exact_on_a_hand_computed_table():
    # 8 questions only A answers right, 2 only B: p = 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 112 / 1024.
    assert eval_stats.mcnemar_exact(8, 2) == pytest.approx(112 / 1024)
    assert eval_stats.mcnemar_exact(2, 8) == eval_stats.mcnemar_exact(8, 2)
    assert eval_stats.mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    assert eval_stats.mcnemar_exact(5, 5) == 1.0 and eval_stats.mcnemar_exact(0, 0) == 1.0


@pytest.mark.parametrize("kind", [int, np.int64, np.int32, np.int16, np.uint8])
def test_mcnemar_exact_agrees_with_scipy_for_python_and_numpy_integers(kind):
    from fractions import Fraction
    from math import comb

    from scipy import stats

    # 40 vs 30 overflowed 2**n in numpy integers (p = 1.0 here; -0.043 for other counts).
    for b, c in [(40, 30), (70, 50), (8, 2), (0, 3), (100, 100), (1, 0), (120, 60)]:
        if kind is np.uint8 and b + c > 255:
            continue
        n = b + c
        exact = float(min(1, Fraction(2 * sum(comb(n, i) for i in range(min(b, c) + 1)), 2**n)))
        got = eval_stats.mcnemar_exact(kind(b), kind(c))
        assert isinstance(got, float) and 0.0 <= got <= 1.0
        assert got == pytest.approx(exact, rel=1e-9)
        assert got == pytest.approx(stats.binomtest(min(b, c), n, 0.5).pvalue, rel=1e-12)
    assert eval_stats.mcnemar_exact(kind(40), kind(30)) == pytest.approx(0.28198, abs=1e-5)
    with pytest.raises(ValueError, match="integer counts"):
        eval_stats.mcnemar_exact(2.5, 1)


@pytest.mark.parametrize("df", [1, 2, 4, 29, 300, np.int64(9)])
def test_t_quantile_is_scipys(df):
    from scipy import stats

    assert eval_stats.t_quantile(0.975, df) == pytest.approx(float(stats.t.ppf(0.975, df)), rel=1e-12)


def test_paired_bootstrap_takes_numpy_and_python_numbers_alike():
    rng = np.random.default_rng(1)
    a = (rng.random(300) < 0.6).astype(np.int64)
    b = (rng.random(300) < 0.5).astype(np.int64)
    got = eval_stats.paired_bootstrap(a, b, seed=5)
    assert got == eval_stats.paired_bootstrap(a.tolist(), b.tolist(), seed=5)
    assert got == eval_stats.paired_bootstrap(a.astype(np.float32), b.astype(bool), seed=5)
    d = (a - b).astype(float)
    means = np.sort(d[np.random.default_rng(9).integers(0, 300, (20000, 300))].mean(axis=1))
    assert got == pytest.approx((means[499], means[19499]), abs=0.01)  # an independent percentile bootstrap
    assert eval_stats.paired_bootstrap([1.0], [0.0]) == (1.0, 1.0)
    assert eval_stats.paired_bootstrap([1, 1, 0], [0, 0, -1]) == (1.0, 1.0)


def test_paired_bootstrap_covers_the_truth_keeps_pairs_and_is_reproducible():
    rng = np.random.default_rng(7)
    b = (rng.random(2000) < 0.5).astype(float)
    a = b.copy()
    a[(b == 0) & (rng.random(2000) < 0.4)] = 1.0  # A fixes 40 % of B's misses: true difference 0.2
    low, high = eval_stats.paired_bootstrap(a, b, seed=3)
    assert low < 0.2 < high and high - low < 0.05
    assert eval_stats.paired_bootstrap(a, b, seed=3) == (low, high)
    assert eval_stats.paired_bootstrap(a, b, seed=4) != (low, high)
    # The questions are resampled in pairs: broken pairs (independent resampling) give a much wider interval.
    unpaired_low, unpaired_high = eval_stats.paired_bootstrap(a, rng.permutation(b), seed=3)
    assert unpaired_high - unpaired_low > 1.5 * (high - low)


# ---------------------------------------------------------------------------------------------- summary


def test_summary_per_group_tables():
    rows = [
        row("q1", accuracy=1.0, task="count", domain="sports"),
        row("q2", accuracy=0.0, task="count"),
        row("q3", accuracy=1.0, fmt=0.0, task="speech", domain="sports"),
        row("q4", accuracy=None, task="speech", domain="news"),
    ]
    summary = eval_report.summarize(rows, NAMES, WEIGHTS, 1, ["task", "domain", "problem_type"])
    assert summary["accuracy"] == pytest.approx(2 / 3) and summary["format_rate"] == pytest.approx(3 / 4)
    assert summary["rewards"]["accuracy"]["questions"] == 3 and summary["rewards"]["accuracy"]["none_ratio"] == 0.25
    assert summary["rewards"]["accuracy"]["ci95"] == pytest.approx(list(eval_stats.wilson_interval(2, 3)))
    task = summary["groups"]["task"]
    assert list(task) == ["count", "speech"] and task["count"]["questions"] == 2
    assert task["count"]["rewards"]["accuracy"]["mean"] == 0.5 and task["speech"]["rewards"]["accuracy"]["mean"] == 1.0
    assert task["speech"]["rewards"]["format"]["mean"] == 0.5
    assert {v: g["questions"] for v, g in summary["groups"]["domain"].items()} == {
        eval_report.MISSING: 1,
        "news": 1,
        "sports": 2,
    }
    assert list(summary["groups"]["problem_type"]) == ["multiple_choice"]
    table = eval_report.format_summary(summary).splitlines()
    assert len(table) == 1 + 1 + 2 + 3 + 1  # header, overall, task values, domain values, problem_type
    assert table[2].startswith("task=count") and "0.500 [" in table[2]
    with pytest.raises(
        eval_report.ReportError,
        match="--group-by tsak: no prediction has this field; fields: domain, problem_type, task",
    ):
        eval_report.summarize(rows, NAMES, WEIGHTS, 1, ["tsak"])


def test_a_list_valued_category_counts_the_question_once_in_each_element():
    # WorldSense's audio_class is a list; lmms-eval's worldsense_aggregate_results adds a question to each class.
    rows = [
        row("q1", accuracy=1.0, audio_class=["Speech", "Music"]),
        row("q2", accuracy=0.0, audio_class=["Music", "Speech"]),
        row("q3", accuracy=1.0, audio_class=["Speech", "Speech"]),
        row("q4", accuracy=0.0, audio_class=[]),
        row("q5", accuracy=1.0, audio_class=["Event"]),
    ]
    summary = eval_report.summarize(rows, NAMES, WEIGHTS, 1, ["audio_class"])
    groups = summary["groups"]["audio_class"]
    assert {v: g["questions"] for v, g in groups.items()} == {
        "Event": 1,
        "Music": 2,
        "Speech": 3,
        eval_report.MISSING: 1,
    }
    assert groups["Speech"]["rewards"]["accuracy"]["mean"] == pytest.approx(2 / 3)
    assert groups["Music"]["rewards"]["accuracy"]["mean"] == 0.5
    assert summary["num_questions"] == 5 and summary["accuracy"] == pytest.approx(3 / 5)
    other = [{**r, "rewards": {"format": 1.0, "accuracy": 1.0}} for r in rows]
    result = eval_report.compare(rows, other, ["audio_class"])
    assert {v: g["questions"] for v, g in result["groups"]["audio_class"].items()} == {
        "Event": 1,
        "Music": 2,
        "Speech": 3,
        eval_report.MISSING: 1,
    }
    assert result["groups"]["audio_class"]["Speech"]["b_better"] == 1


def test_summary_with_k_samples_averages_pass_at_1_per_question():
    rows = [
        row("q1", 0, 1.0),
        row("q1", 1, 0.0),
        row("q2", 0, 0.0),
        row("q2", 1, 0.0),
        row("q3", 0, 1.0),
        row("q3", 1, None),
    ]
    summary = eval_report.summarize(rows, NAMES, WEIGHTS, 2)
    assert summary["accuracy"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)  # q3's unscored sample is left out
    assert summary["pass_at_2"] == pytest.approx(2 / 3) and summary["num_questions"] == 3
    assert summary["rewards"]["accuracy"]["ci_method"] == "t"


# ---------------------------------------------------------------------------------------------- resume


HEADER = {"model": "/m", "data": ["/d"], "num_generations": 2, "max_new_tokens": 8}


def _run_rows(qids):
    return [row(q, k, accuracy=float((i + k) % 2), cat=f"c{i % 3}") for i, q in enumerate(qids) for k in range(2)]


def test_resume_after_a_kill_equals_one_uninterrupted_pass(tmp_path):
    qids = [f"q{i}" for i in range(10)]
    whole = tmp_path / "whole"
    assert eval_report.open_run(whole, HEADER, 2) == {}
    with eval_report.PredictionLog(whole) as log:
        for start in range(0, 10, 4):
            log.append(_run_rows(qids)[2 * start : 2 * start + 8])

    cut = tmp_path / "cut"
    eval_report.open_run(cut, HEADER, 2)
    with eval_report.PredictionLog(cut) as log:
        log.append(_run_rows(qids)[:8])  # first batch: questions q0..q3, both samples
        log.append(_run_rows(qids)[8:9])  # q4's first sample only: killed between the two rows...
    with open(cut / eval_report.PREDICTIONS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(_run_rows(qids)[9])[:25])  # ...and while writing the next one

    done = eval_report.open_run(cut, HEADER, 2)
    assert sorted(done) == qids[:4]
    assert len((cut / eval_report.PREDICTIONS_FILE).read_text().splitlines()) == 8  # repaired on disk
    with eval_report.PredictionLog(cut) as log:
        log.append([r for r in _run_rows(qids) if r["id"] not in done])

    rows = eval_report.load_predictions(cut)
    assert sorted((r["id"], r["generation"]) for r in rows) == sorted((q, k) for q in qids for k in range(2))
    one_pass = eval_report.summarize(eval_report.load_predictions(whole), NAMES, WEIGHTS, 2, ["cat"])
    assert eval_report.summarize(rows, NAMES, WEIGHTS, 2, ["cat"]) == one_pass


def test_another_run_in_the_same_folder_is_refused(tmp_path):
    eval_report.open_run(tmp_path, HEADER, 2)
    with pytest.raises(eval_report.ReportError) as err:
        eval_report.open_run(tmp_path, {**HEADER, "model": "/other"}, 2)
    message = str(err.value)
    assert "\n" not in message and "another model" in message and '"/m" there' in message and "--output" in message
    eval_report.open_run(tmp_path, dict(HEADER), 2)  # the same run again is fine
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / eval_report.PREDICTIONS_FILE).write_text(json.dumps(row("q1")) + "\n")
    with pytest.raises(eval_report.ReportError, match="no run.json"):
        eval_report.open_run(tmp_path / "old", HEADER, 1)


# ---------------------------------------------------------------------------------------------- compare


def _write_run(folder: Path, model: str, outcomes: dict[str, float], cats: dict[str, str]) -> Path:
    folder.mkdir()
    (folder / eval_report.RUN_FILE).write_text(json.dumps({"model": model}))
    path = folder / eval_report.PREDICTIONS_FILE
    path.write_text("".join(json.dumps(row(q, accuracy=v, kind=cats[q])) + "\n" for q, v in outcomes.items()))
    return path


def _evaluate_cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "omni_grpo.evaluate", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_compare_two_prediction_files_through_the_command_line(tmp_path):
    # 12 paired questions: 8 only A right, 2 only B right, 1 both, 1 neither; 1 only in A, 1 only in B.
    qids = [f"q{i}" for i in range(12)]
    a = {q: 1.0 if i < 8 or i == 10 else 0.0 for i, q in enumerate(qids)}
    b = {q: 1.0 if i in (8, 9, 10) else 0.0 for i, q in enumerate(qids)}
    cats = {q: "x" if i % 2 else "y" for i, q in enumerate(qids + ["extra_a", "extra_b"])}
    path_a = _write_run(tmp_path / "trained", "/models/trained", {**a, "extra_a": 1.0}, cats)
    path_b = _write_run(tmp_path / "base", "/models/base", {**b, "extra_b": 0.0}, cats)

    proc = _evaluate_cli("--compare", path_a, path_b.parent, "--group-by", "kind", "--output", tmp_path / "cmp")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "A: /models/trained" in out and "B: /models/base" in out
    assert "paired 12 questions (dropped: 1 only in A, 1 only in B, 0 not scored in one of them)" in out
    overall = next(line for line in out.splitlines() if line.startswith("overall"))
    assert f"{112 / 1024:.4g}" in overall and "+0.500 [" in overall
    result = json.loads((tmp_path / "cmp" / eval_report.COMPARE_FILE).read_text())
    assert result["overall"]["a_better"] == 8 and result["overall"]["b_better"] == 2
    assert result["overall"]["mcnemar_p"] == pytest.approx(112 / 1024)
    assert result["overall"]["a"]["mean"] == pytest.approx(9 / 12) and result["overall"]["b"]["mean"] == 0.25
    low, high = result["overall"]["difference"]["ci95"]
    assert low < 0.5 < high
    assert set(result["groups"]["kind"]) == {"x", "y"}
    assert sum(g["questions"] for g in result["groups"]["kind"].values()) == 12
    again = _evaluate_cli("--compare", path_a, path_b, "--group-by", "kind")
    assert again.stdout == out.replace(f"\nwrote {tmp_path / 'cmp' / eval_report.COMPARE_FILE}", "")  # fixed seed

    missing = _evaluate_cli("--compare", path_a, tmp_path / "nope.jsonl")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no such predictions file" in missing.stderr
    alone = _evaluate_cli("--compare", path_a)
    assert alone.returncode == 2 and "--compare A B" in alone.stderr


def test_help_says_where_outputs_go():
    proc = _evaluate_cli("--help")
    assert proc.returncode == 0
    for name in ("run.json", "predictions.jsonl", "summary.json", "compare.json", "outputs/eval", "resumes"):
        assert name in proc.stdout
