"""preprocess: shards appear atomically, a killed run resumes to exactly the clean result, re-runs skip
finished work, changed options are refused without --overwrite, and K machines together equal one."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from omni_grpo import synthetic
from preprocess import shards
from preprocess.build import PreprocessError
from preprocess.media import VideoOptions
from tests.helpers import preprocess_here


def snapshot(out):
    """What must be equal between two runs: ids, manifest, failures, shard checksums."""
    manifest = shards.read_manifest(out)
    return {
        "ids": shards.load(out).ids,
        "counts": manifest["counts"],
        "shards": [(s["file"], s["sha256"]) for s in manifest["shards"]],
        "failures": (out / "failures.jsonl").read_text(),
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = synthetic.make_siq2_dataset(tmp_path_factory.mktemp("siq2"), n_clips=12, seconds=1.0)
    (root / "video" / sorted((root / "video").iterdir())[0].name).unlink()  # one video missing
    return root


@pytest.fixture(scope="module")
def clean(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    preprocess_here(out, root=dataset, shard_size=2, video=VideoOptions())
    return snapshot(out)


def test_kill_9_mid_run_then_resume_equals_clean_run(dataset, clean, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "preprocess",
        "--source",
        "siq2",
        "--root",
        str(dataset),
        "--output",
        str(out),
        "--workers",
        "1",
        "--shard-size",
        "2",
        "--no-progress",
    ]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "_state").glob("shard-*.json")):
            assert proc.poll() is None, "preprocess ended before the first shard"
            assert time.monotonic() < deadline, "no shard finished in time"
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the main process and its worker, as a power cut would
        proc.wait()
    assert not (out / "manifest.json").exists(), "the run finished before the kill; the test proved nothing"
    states = {p.stem for p in (out / "_state").glob("shard-*.json")}
    assert 0 < len(states) < 6
    for path in out.glob("*.parquet"):  # no half shard is ever visible
        assert pq.ParquetFile(path).read().num_rows >= 1
    with pytest.raises(shards.ShardFormatError, match="has not finished"):
        shards.load(out)

    summary = preprocess_here(out, root=dataset, shard_size=2, video=VideoOptions())
    assert summary["complete"]
    assert summary["clips_processed"] == 12 - 2 * len(states)  # finished shards were not redone
    assert snapshot(out) == clean
    assert not list(out.glob(".*.partial"))


def test_rerun_skips_finished_shards_and_gives_the_same_result(dataset, tmp_path):
    out = tmp_path / "out"
    preprocess_here(out, root=dataset, shard_size=4)
    first = snapshot(out)
    manifest = (out / "manifest.json").read_bytes()
    again = preprocess_here(out, root=dataset, shard_size=4)
    assert again["clips_processed"] == 0
    assert snapshot(out) == first
    assert (out / "manifest.json").read_bytes() == manifest


def test_changed_options_need_overwrite(dataset, tmp_path):
    out = tmp_path / "out"
    preprocess_here(out, root=dataset, shard_size=4)
    with pytest.raises(PreprocessError, match="--overwrite") as info:
        preprocess_here(out, root=dataset, shard_size=4, video=VideoOptions(fps=1.0, min_pixels=28 * 28 * 4))
    assert "fps" in str(info.value)
    summary = preprocess_here(
        out, root=dataset, shard_size=4, video=VideoOptions(fps=1.0, min_pixels=28 * 28 * 4), overwrite=True
    )
    assert summary["clips_processed"] == 12 and summary["options"]["fps"] == 1.0
    assert {item["frames"].shape[0] for item in shards.load(out)} == {4}


def test_a_shard_whose_inputs_changed_is_rebuilt(tmp_path):
    root = synthetic.make_siq2_dataset(tmp_path / "siq2", n_clips=3, seconds=1.0)
    video = sorted((root / "video").iterdir())[1]
    saved = video.read_bytes()
    video.unlink()
    out = tmp_path / "out"
    first = preprocess_here(out, root=root, shard_size=1)
    assert first["counts"]["clips_failed"] == 1
    video.write_bytes(saved)  # the download finished later
    second = preprocess_here(out, root=root, shard_size=1)
    assert second["clips_processed"] == 1
    assert second["counts"]["clips_failed"] == 0 and second["counts"]["failed"] == 0
    assert (out / "failures.jsonl").read_text() == ""


def test_rerun_rebuilds_a_damaged_shard(dataset, tmp_path):
    out = tmp_path / "out"
    preprocess_here(out, root=dataset, shard_size=4)
    first = snapshot(out)
    path = out / "shard-00001.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(shards.ShardCorruptError):
        shards.load(out)
    again = preprocess_here(out, root=dataset, shard_size=4)
    assert again["clips_processed"] == 4
    assert snapshot(out) == first


def test_parts_on_several_machines_equal_one_run(dataset, tmp_path):
    single = tmp_path / "single"
    preprocess_here(single, root=dataset, shard_size=2)
    parts = tmp_path / "parts"
    first = preprocess_here(parts, root=dataset, shard_size=2, num_shards=2, shard_index=1)
    assert not first["complete"] and not (parts / "manifest.json").exists()
    second = preprocess_here(parts, root=dataset, shard_size=2, num_shards=2, shard_index=0)
    assert second["complete"]
    a, b = snapshot(single), snapshot(parts)
    assert a == b
    assert json.loads((parts / "manifest.json").read_text())["options"]["num_shards"] == 2


def test_unclosed_writer_leaves_no_visible_shard(tmp_path):
    writer = shards.ShardWriter(tmp_path / "shard-00000.parquet")
    assert not list(tmp_path.glob("*.parquet"))
    writer.abort()
    assert list(tmp_path.iterdir()) == []
