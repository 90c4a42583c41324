"""Evaluation outputs that do not depend on how completions are generated: the resumable predictions log and
the run header that guards it, the summary (overall and per category, with 95 % intervals), the side-by-side
comparison of two runs, and their printed tables.

An evaluation folder OUT holds

  OUT/run.json           the run header: model, data and every setting that changes a completion; written by
                         the first run, and a later run into OUT with any other value is refused
  OUT/predictions.jsonl  one line per completion (keyed by question `id` and sample index `generation`),
                         appended, flushed and fsync'd after every batch
  OUT/summary.json       `summarize` over the questions of the run
  OUT/compare.json       `compare` against another run, when asked

Resume: `open_run` keeps every question whose K completions are all in predictions.jsonl and drops a torn
last line (a process killed mid-write) and the rows of a question cut short, rewriting the file without
them; the caller then generates only the missing questions, so no row appears twice and the summary equals
an uninterrupted run's (for greedy decoding; sampled completions of the remaining questions come from a
different random stream than an uninterrupted run's).

Scores: a question's score for a reward is the mean over its completions that the reward could score (None
= could not), i.e. pass@1 averaged over K; a reward's mean is the mean over the questions it scored, with
the 95 % interval of `eval_stats.question_interval` (Wilson for 0/1 scores, else Student-t over questions).
`compare` pairs the questions both runs scored for accuracy and reports each run's accuracy, the paired
difference A − B with a paired-bootstrap interval, and McNemar's exact p-value (see `eval_stats`).

Categories: `--group-by FIELD` reads a prediction's top-level field (`problem_type`) or else its `extra`
field (the benchmark's own fields, e.g. a task type); a question without it falls in "(missing)". A list
value (WorldSense's `audio_class`) puts the question once in each of its distinct elements, as lmms-eval's
WorldSense aggregation does, so such a field's groups can hold more questions together than the run; an
empty list falls in "(missing)".
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from omni_grpo import eval_stats

RUN_FILE = "run.json"
PREDICTIONS_FILE = "predictions.jsonl"
SUMMARY_FILE = "summary.json"
COMPARE_FILE = "compare.json"
HEADLINE_METRICS = {"accuracy": "accuracy", "format": "format_rate", "people_focus": "people_focus"}  # reward: key
MISSING = "(missing)"


class ReportError(ValueError):
    """An output folder or a predictions file cannot be used; the message says what to pass instead."""


# ---------------------------------------------------------------------------------------------- predictions log


def open_run(out_dir, header: dict, num_generations: int) -> dict[str, list[dict]]:
    """Check (or write) OUT/run.json and repair OUT/predictions.jsonl; the complete questions' rows by id."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = json.loads(json.dumps(header, default=str))
    run_file, predictions = out_dir / RUN_FILE, out_dir / PREDICTIONS_FILE
    if run_file.is_file():
        _check_header(out_dir, json.loads(run_file.read_text(encoding="utf-8")), header)
    elif predictions.exists():
        raise ReportError(
            f"{out_dir} holds {PREDICTIONS_FILE} but no {RUN_FILE} (an older evaluate wrote it); pass a new --output"
        )
    else:
        write_json(run_file, header)
    rows, torn = _read_rows(predictions) if predictions.exists() else ([], False)
    by_id: dict[str, list[dict]] = {}
    for row in rows:
        by_id.setdefault(row["id"], []).append(row)
    complete = {q: r for q, r in by_id.items() if sorted(x["generation"] for x in r) == list(range(num_generations))}
    if torn or sum(map(len, complete.values())) != len(rows):
        kept = [row for row in rows if row["id"] in complete]
        _write_atomic(predictions, "".join(_line(row) for row in kept))
    return complete


class PredictionLog:
    """Appends rows to OUT/predictions.jsonl; each `append` is one write, flushed and fsync'd."""

    def __init__(self, out_dir):
        self.path = Path(out_dir) / PREDICTIONS_FILE
        self._file = open(self.path, "a", encoding="utf-8")

    def append(self, rows: Iterable[dict]) -> None:
        self._file.write("".join(_line(row) for row in rows))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_predictions(path) -> list[dict]:
    """The rows of a predictions.jsonl (or of the one in a folder); a torn last line is ignored."""
    path = Path(path)
    if path.is_dir():
        path = path / PREDICTIONS_FILE
    if not path.is_file():
        raise ReportError(f"{path}: no such predictions file; pass OUT/{PREDICTIONS_FILE} of an evaluation")
    rows, _ = _read_rows(path)
    if not rows:
        raise ReportError(f"{path} holds no predictions")
    return rows


def run_label(path) -> str:
    """The model an evaluation folder's run.json names (relative to here when below it), else the path itself."""
    path = Path(path)
    run_file = (path if path.is_dir() else path.parent) / RUN_FILE
    if not run_file.is_file():
        return str(path)
    header = json.loads(run_file.read_text(encoding="utf-8"))
    model = Path(header.get("model", path))
    label = str(model.relative_to(Path.cwd()) if model.is_relative_to(Path.cwd()) else model)
    return label + (f" (ablate {header['ablate']})" if header.get("ablate") else "")


def write_json(path, obj) -> None:
    """Write `obj` as indented JSON, atomically (a reader never sees half a file)."""
    _write_atomic(Path(path), json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def _check_header(out_dir: Path, old: dict, new: dict) -> None:
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise ReportError(
                f"{out_dir} holds an evaluation with another {key} ({_short(old.get(key))} there, "
                f"{_short(new.get(key))} now); pass a new --output, or delete the folder to start again"
            )


def _read_rows(path: Path) -> tuple[list[dict], bool]:
    """(rows, whether a torn last line was dropped); a bad line before the last is an error."""
    lines = path.read_text(encoding="utf-8").split("\n")
    rows, torn = [], False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "id" not in row or "generation" not in row:
                raise ValueError
        except ValueError:
            if number == len(lines):
                torn = True
                continue
            raise ReportError(
                f"{path}:{number}: not a prediction line; pass a predictions file that "
                "python -m omni_grpo.evaluate wrote"
            ) from None
        rows.append(row)
    return rows, torn


def _line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _short(value, width: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."


# ---------------------------------------------------------------------------------------------- summary


def category(row: dict, field: str) -> str:
    """A prediction's value of `field` (top level, else in `extra`) as one label; "(missing)" when absent."""
    value = row[field] if field in row else (row.get("extra") or {}).get(field)
    if value is None:
        return MISSING
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def categories(row: dict, field: str) -> list[str]:
    """The labels a prediction counts under for `field`: each distinct element of a list value (a question
    with several audio classes counts once in each), else the one `category` label."""
    value = row[field] if field in row else (row.get("extra") or {}).get(field)
    if not isinstance(value, list):
        return [category(row, field)]
    labels = [category({field: item}, field) for item in value if item is not None]
    return list(dict.fromkeys(labels)) or [MISSING]


def question_scores(rows: Iterable[dict], name: str) -> dict[str, float]:
    """Per question id: the mean of reward `name` over its completions that it scored (unscored ids omitted)."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        value = row["rewards"].get(name)
        if value is not None:
            entry = sums.setdefault(row["id"], [0.0, 0])
            entry[0] += value
            entry[1] += 1
    return {q: total / count for q, (total, count) in sums.items()}


def score_stats(values: Sequence[float]) -> dict:
    """{mean, ci95, ci_method, questions} of per-question scores (mean None when there are none)."""
    if not values:
        return {"mean": None, "ci95": None, "ci_method": None, "questions": 0}
    low, high, method = eval_stats.question_interval(values)
    return {"mean": sum(values) / len(values), "ci95": [low, high], "ci_method": method, "questions": len(values)}


def reward_stats(rows: Sequence[dict], names: Sequence[str]) -> dict[str, dict]:
    """Per reward: `score_stats` over questions plus none_ratio (the completions it could not score)."""
    stats = {}
    for name in names:
        stats[name] = score_stats(list(question_scores(rows, name).values()))
        stats[name]["none_ratio"] = sum(row["rewards"].get(name) is None for row in rows) / len(rows)
    return stats


def summarize(
    rows: Sequence[dict],
    reward_names: Sequence[str],
    reward_weights: Sequence[float],
    num_generations: int,
    group_by: Sequence[str] = (),
) -> dict:
    """The summary of a run's prediction rows: headline means, every reward's stats, and per-category tables."""
    if not rows:
        raise ReportError("no predictions to summarise")
    check_fields(rows, group_by)
    stats = reward_stats(rows, reward_names)
    for name, weight in zip(reward_names, reward_weights):
        stats[name]["weight"] = float(weight)
    totals: dict[str, list[float]] = {}
    for row in rows:
        totals.setdefault(row["id"], []).append(row["total"])
    summary = {key: stats[name]["mean"] for name, key in HEADLINE_METRICS.items() if name in stats}
    summary["reward_total"] = sum(sum(t) / len(t) for t in totals.values()) / len(totals)
    if num_generations > 1 and "accuracy" in reward_names:
        solved: dict[str, bool] = {}
        for row in rows:
            score = row["rewards"].get("accuracy")
            if score is not None:
                solved[row["id"]] = solved.get(row["id"], False) or score == 1.0
        summary[f"pass_at_{num_generations}"] = sum(solved.values()) / len(solved) if solved else None
    summary["completion_length"] = sum(row["length"] for row in rows) / len(rows)
    summary["truncated_ratio"] = sum(bool(row["truncated"]) for row in rows) / len(rows)
    summary["num_questions"] = len(totals)
    summary["rewards"] = stats
    summary["groups"] = {
        field: {
            value: {"questions": len({r["id"] for r in members}), "rewards": reward_stats(members, reward_names)}
            for value, members in _buckets(rows, lambda r: categories(r, field)).items()
        }
        for field in group_by
    }
    return summary


def coverage(
    rows: Sequence[dict], released: int, lost: Sequence[dict], group_by: Sequence[str] = (), not_evaluated: int = 0
) -> dict:
    """How many of the `released` questions the run scored for accuracy, overall and per category.

    `lost` holds one entry per released question that never reached the run: ``{id, reason, problem_type,
    extra}`` (a failure line of preprocess; ``extra`` None when its categories are not known).
    `not_evaluated` counts questions in the shards that the run left out (``--limit``). Per category the
    released count is the run's questions plus the lost ones of that category; the lost questions of unknown
    category and the ones left out are counted in ``uncategorised`` instead.
    """
    scored = set(question_scores(rows, "accuracy"))
    run_ids = {row["id"] for row in rows}
    reasons: dict[str, int] = {}
    for entry in lost:
        kind = _reason_kind(entry)
        reasons[kind] = reasons.get(kind, 0) + 1
    result = {
        "released": released,
        "scored": len(scored),
        "evaluated": len(run_ids),
        "not_scored": len(run_ids - scored),
        "lost_before_evaluation": len(lost),
        "not_evaluated": not_evaluated,
        "lost_reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "text": f"{len(scored)} of {released} released questions scored",
        "groups": {},
        "uncategorised": {},
    }
    first: dict[str, dict] = {}
    for row in rows:
        first.setdefault(row["id"], row)
    known = [entry for entry in lost if entry.get("extra") is not None]
    for field in group_by:
        counts: dict[str, dict] = {}
        for row in first.values():
            for label in categories(row, field):
                entry = counts.setdefault(label, {"scored": 0, "released": 0})
                entry["released"] += 1
                entry["scored"] += row["id"] in scored
        for entry in known:
            for label in categories(entry, field):
                counts.setdefault(label, {"scored": 0, "released": 0})["released"] += 1
        result["groups"][field] = dict(sorted(counts.items()))
        result["uncategorised"][field] = len(lost) - len(known) + not_evaluated
    return result


def _reason_kind(entry: dict) -> str:
    """A failure's reason without its specifics (the file's name as FILE, numbers as N), so reasons of one kind
    count together."""
    text = str(entry.get("reason") or "unknown reason")
    name = Path(str(entry.get("path") or "")).name
    if name:
        text = text.replace(name, "FILE")
    text = re.sub(r"\d+(?:\.\d+)?", "N", text)
    return text if len(text) <= 80 else text[:77] + "..."


def format_summary(summary: dict) -> str:
    """The summary as a table: one line overall and one per category value, a column per reward; with a
    coverage record, a column "scored" (N/M: scored of released) and the coverage line above the table."""
    names = list(summary["rewards"])
    cover = summary.get("coverage")

    def scored(field=None, value=None) -> list[str]:
        if cover is None:
            return []
        if field is None:
            return [f"{cover['scored']}/{cover['released']}"]
        entry = cover["groups"].get(field, {}).get(value)
        return [f"{entry['scored']}/{entry['released']}" if entry else "-"]

    lines = [["overall", str(summary["num_questions"]), *scored(), *(_cell(summary["rewards"][n]) for n in names)]]
    for field, values in summary["groups"].items():
        lines += [
            [
                f"{field}={value}",
                str(group["questions"]),
                *scored(field, value),
                *(_cell(group["rewards"][n]) for n in names),
            ]
            for value, group in values.items()
        ]
        if cover is not None:  # categories whose every question was lost before the run
            lines += [
                [f"{field}={value}", "0", *scored(field, value), *("n/a" for _ in names)]
                for value in cover["groups"].get(field, {})
                if value not in values
            ]
    table = format_table(["", "questions", *(["scored"] if cover else []), *(f"{n} [95% CI]" for n in names)], lines)
    return table if cover is None else f"{coverage_line(cover)}\n{table}"


def coverage_line(cover: dict) -> str:
    """ "N of M released questions scored (…)" with where the others went."""
    parts = []
    if cover["lost_before_evaluation"]:
        reasons = ", ".join(f"{n} {reason}" for reason, n in list(cover["lost_reasons"].items())[:3])
        parts.append(f"{cover['lost_before_evaluation']} not in the shards ({reasons})")
    if cover["not_evaluated"]:
        parts.append(f"{cover['not_evaluated']} left out by --limit")
    if cover["not_scored"]:
        parts.append(f"{cover['not_scored']} evaluated but not scorable for accuracy")
    return f"coverage: {cover['text']}" + (f"; {'; '.join(parts)}" if parts else "")


def check_fields(rows: Sequence[dict], fields: Sequence[str]) -> None:
    """ReportError when no row has one of `fields` (most likely a misspelled --group-by)."""
    for field in fields:
        if all(category(row, field) == MISSING for row in rows):
            known = sorted({"problem_type"} | {k for row in rows for k in (row.get("extra") or {})})
            raise ReportError(f"--group-by {field}: no prediction has this field; fields: {', '.join(known)}")


# ---------------------------------------------------------------------------------------------- comparison


def compare(
    rows_a: Sequence[dict],
    rows_b: Sequence[dict],
    group_by: Sequence[str] = (),
    *,
    resamples: int = eval_stats.BOOTSTRAP_RESAMPLES,
    seed: int = eval_stats.BOOTSTRAP_SEED,
) -> dict:
    """Accuracy of runs A and B on the questions both scored, overall and per category, and A − B."""
    check_fields(rows_a, group_by)
    a, b = question_scores(rows_a, "accuracy"), question_scores(rows_b, "accuracy")
    ids_a, ids_b = {r["id"] for r in rows_a}, {r["id"] for r in rows_b}
    paired = [q for q in a if q in b]
    if not paired:
        raise ReportError(
            "the two predictions files share no question that both scored for accuracy; compare runs on the same data"
        )
    first = {}
    for row in rows_a:
        first.setdefault(row["id"], row)

    def stats(ids: list[str]) -> dict:
        return paired_stats([a[q] for q in ids], [b[q] for q in ids], resamples=resamples, seed=seed)

    return {
        "paired_questions": len(paired),
        "only_in_a": len(ids_a - ids_b),
        "only_in_b": len(ids_b - ids_a),
        "not_scored": len(ids_a & ids_b) - len(paired),
        "bootstrap_resamples": resamples,
        "bootstrap_seed": seed,
        "overall": stats(paired),
        "groups": {
            field: {value: stats(ids) for value, ids in _buckets(paired, lambda q: categories(first[q], field)).items()}
            for field in group_by
        },
    }


def paired_stats(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = eval_stats.BOOTSTRAP_RESAMPLES,
    seed: int = eval_stats.BOOTSTRAP_SEED,
) -> dict:
    """Both runs' `score_stats`, the difference A − B with its paired-bootstrap interval, and McNemar's p."""
    a_better = sum(x > y for x, y in zip(a, b))
    b_better = sum(x < y for x, y in zip(a, b))
    return {
        "questions": len(a),
        "a": score_stats(a),
        "b": score_stats(b),
        "difference": {
            "mean": (sum(a) - sum(b)) / len(a),
            "ci95": list(eval_stats.paired_bootstrap(a, b, resamples=resamples, seed=seed)),
        },
        "a_better": a_better,
        "b_better": b_better,
        "mcnemar_p": eval_stats.mcnemar_exact(a_better, b_better),
    }


def format_compare(result: dict, label_a: str, label_b: str) -> str:
    """Who A and B are, what was dropped, and a table of both accuracies, A − B and McNemar's p per category."""
    lines = [_compare_line("overall", result["overall"])]
    for field, values in result["groups"].items():
        lines += [_compare_line(f"{field}={value}", group) for value, group in values.items()]
    header = [
        "",
        "questions",
        "A accuracy [95% CI]",
        "B accuracy [95% CI]",
        "A - B [95% CI]",
        "A>B",
        "B>A",
        "McNemar p",
    ]
    dropped = (
        f"{result['only_in_a']} only in A, {result['only_in_b']} only in B, "
        f"{result['not_scored']} not scored in one of them"
    )
    return "\n".join(
        [
            f"A: {label_a}",
            f"B: {label_b}",
            f"paired {result['paired_questions']} questions (dropped: {dropped})",
            f"A - B: paired bootstrap over questions ({result['bootstrap_resamples']} resamples, seed "
            f"{result['bootstrap_seed']}); McNemar: exact, on the questions where A and B differ",
            format_table(header, lines),
        ]
    )


def _compare_line(label: str, stats: dict) -> list[str]:
    diff = stats["difference"]
    low, high = diff["ci95"]
    return [
        label,
        str(stats["questions"]),
        _cell(stats["a"]),
        _cell(stats["b"]),
        f"{diff['mean']:+.3f} [{low:+.3f}, {high:+.3f}]",
        str(stats["a_better"]),
        str(stats["b_better"]),
        f"{stats['mcnemar_p']:.4g}",
    ]


# ---------------------------------------------------------------------------------------------- tables


def format_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell: the first left-aligned, the others right-aligned."""
    table = [list(header), *map(list, lines)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in table
    )


def _cell(stats: dict) -> str:
    if stats["mean"] is None:
        return "n/a"
    low, high = stats["ci95"]
    return f"{stats['mean']:.3f} [{low:.3f}, {high:.3f}]"


def _buckets(items: Iterable, labels) -> dict[str, list]:
    """Items grouped by each of the labels `labels(item)` gives, the groups in sorted label order."""
    groups: dict[str, list] = {}
    for item in items:
        for label in labels(item):
            groups.setdefault(label, []).append(item)
    return dict(sorted(groups.items()))
