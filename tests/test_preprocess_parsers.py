"""Property tests of the QA line parsers: whatever a line holds, the parser returns a Sample or raises
LineError (the documented failure path) — never anything else — and valid lines map to the right fields."""

import json
import posixpath

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preprocess.sources import LineError, Sample, parse_jsonl_line, parse_siq2_line, read_jsonl, relative_path

BASE = "/srv/dataset"  # any absolute folder: the parser is pure string work, nothing is read
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
texts = st.text(max_size=12) | st.sampled_from(["\ud800", "x\udc00y", "caf\u00e9", "", " "])  # lone surrogates too
paths = st.sampled_from(
    [
        "a.mp4",
        "v/b.mp4",
        "./c.mp4",
        "../x.mp4",
        "../../etc/passwd",
        "/etc/passwd",
        BASE + "/d.mp4",
        BASE + "/../e.mp4",
        "v/../../f.mp4",
        "",
        " ",
        "a\x00b.mp4",
        "v//g.mp4",
    ]
)


def parse_or_fail(parse, raw):
    try:
        result = parse(raw)
    except LineError as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return None
    assert isinstance(result, Sample)
    for value in (result.id, result.question, result.answer, result.problem_type, *result.options):
        value.encode("utf-8")  # writable to Parquet
    json.dumps(result.record(), ensure_ascii=False).encode("utf-8")
    return result


def jsonl(raw):
    return parse_jsonl_line(raw, BASE)


def dumps(obj):
    try:
        return json.dumps(obj, ensure_ascii=True)
    except (ValueError, TypeError):
        return "{}"


@SETTINGS
@given(st.binary(max_size=200))
def test_arbitrary_bytes(raw):
    parse_or_fail(parse_siq2_line, raw)
    parse_or_fail(jsonl, raw)


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "qid",
                "q",
                "vid_name",
                "ts",
                "a0",
                "a1",
                "a2",
                "a3",
                "answer_idx",
                "id",
                "video",
                "question",
                "options",
                "answer",
                "problem_type",
                "audio",
                "other",
            ]
        ),
        json_values | texts,
        max_size=12,
    )
)
def test_objects_with_random_field_types(obj):
    raw = dumps(obj).encode()
    parse_or_fail(parse_siq2_line, raw)
    parse_or_fail(jsonl, raw)


@SETTINGS
@given(
    qid=st.one_of(texts, st.integers()),
    q=texts,
    vid=texts,
    answers=st.lists(texts, min_size=4, max_size=4),
    idx=st.one_of(st.integers(-2, 6), st.sampled_from(["0", "3", "7", " 1", "x"]), st.booleans()),
    extra=st.dictionaries(st.sampled_from(["ts", "ans_corr", "idx_types"]), json_values, max_size=3),
)
def test_siq2_lines(qid, q, vid, answers, idx, extra):
    obj = {
        "qid": qid,
        "q": q,
        "vid_name": vid,
        **{f"a{i}": a for i, a in enumerate(answers)},
        "answer_idx": idx,
        **extra,
    }
    sample = parse_or_fail(parse_siq2_line, dumps(obj))
    if sample is None:
        return
    assert sample.id == str(qid) and sample.question == q
    assert list(sample.options) == answers and sample.problem_type == "multiple_choice"
    assert sample.answer == "ABCD"[int(idx)]
    assert sample.video == f"video/{vid}.mp4" and "/" not in vid
    assert sample.extra == {"vid_name": vid, **extra, "qid": str(qid)}


@SETTINGS
@given(
    sample_id=st.one_of(texts, st.integers(), st.none()),
    video=paths,
    question=texts,
    options=st.one_of(st.none(), st.lists(texts, max_size=4), st.just("A,B")),
    answer=st.one_of(texts, st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.none()),
    problem_type=st.one_of(st.none(), texts),
    extra=st.dictionaries(st.sampled_from(["src", "t"]), json_values),
)
def test_jsonl_lines(sample_id, video, question, options, answer, problem_type, extra):
    obj = {"id": sample_id, "video": video, "question": question, "answer": answer, **extra}
    if options is not None:
        obj["options"] = options
    if problem_type is not None:
        obj["problem_type"] = problem_type
    sample = parse_or_fail(jsonl, dumps(obj))
    if sample is None:
        return
    assert sample.id == str(sample_id) and sample.question == question
    assert list(sample.options) == (options or [])
    # Every accepted path stays inside the manifest's folder.
    assert not sample.video.startswith("/") and not sample.video.startswith("..")
    assert posixpath.normpath(posixpath.join(BASE, sample.video)).startswith(BASE + "/")
    assert sample.extra == extra


@SETTINGS
@given(st.text(max_size=30))
def test_relative_path_never_escapes(value):
    try:
        rel = relative_path(value, BASE)
    except LineError:
        return
    full = posixpath.normpath(posixpath.join(BASE, rel))
    assert full.startswith(BASE + "/") and rel == posixpath.normpath(rel)


def test_known_escapes_are_refused():
    for value in ("../../etc/passwd", "/etc/passwd", "v/../../x.mp4", BASE + "/../x.mp4", "..", "."):
        try:
            relative_path(value, BASE)
        except LineError as exc:
            assert "outside" in exc.reason
        else:
            raise AssertionError(f"{value!r} was accepted")
    assert relative_path(BASE + "/v/a.mp4", BASE) == "v/a.mp4"
    assert relative_path("./v//a.mp4", BASE) == "v/a.mp4"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.binary(max_size=60)
        | st.builds(
            lambda o: dumps(o).encode(),
            st.dictionaries(st.sampled_from(["id", "video", "question", "answer"]), json_values | texts),
        ),
        max_size=12,
    )
)
def test_read_jsonl_accounts_for_every_line(tmp_path, lines):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    data = read_jsonl(path)
    nonblank = sum(1 for line in lines if line.replace(b"\n", b" ").rstrip(b"\r").strip())
    assert len(data.samples) + len(data.failures) == data.lines == nonblank
    assert len({s.id for s in data.samples}) == len(data.samples)
