"""preprocess.shards reader: checksums, corrupt-shard handling, random access, datasets compatibility."""

import io
import json
import pickle
import random
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from omni_grpo import synthetic
from preprocess import shards
from preprocess.build import BuildOptions, build
from preprocess.media import VideoOptions
from tests.helpers import flip_byte


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    root = synthetic.make_siq2_dataset(tmp_path_factory.mktemp("siq2"), n_clips=5, seconds=1.0)
    out = tmp_path_factory.mktemp("shards") / "out"
    build(
        BuildOptions(
            source="siq2",
            root=root,
            output=out,
            workers=0,
            progress=False,
            shard_size=2,
            video=VideoOptions(min_pixels=28 * 28 * 4),
        )
    )
    return out


@pytest.fixture
def copy(output, tmp_path):
    target = tmp_path / "out"
    shutil.copytree(output, target)
    return target


def test_item_fields_and_types(output):
    ds = shards.load(output)
    manifest = shards.read_manifest(output)
    assert len(ds) == manifest["counts"]["written"] > 5
    item = ds[0]
    assert isinstance(item["id"], str) and isinstance(item["question"], str)
    assert isinstance(item["options"], list) and all(isinstance(o, str) for o in item["options"])
    assert item["answer"] in "ABCD" and item["problem_type"] == "multiple_choice"
    assert isinstance(item["extra"], dict)
    assert item["frames"].dtype == np.uint8 and item["frames"].ndim == 4 and item["frames"].shape[-1] == 3
    # A 1-s clip gets qwen-omni-utils' minimum of 4 frames, so the sampled rate is 4 fps.
    assert isinstance(item["fps"], float) and item["fps"] == 4.0 and item["frames"].shape[0] == 4
    assert item["audio"].dtype == np.float32 and item["audio"].ndim == 1 and item["sample_rate"] == 16000


def test_random_access_matches_sequential_and_reads_one_row_group(output, monkeypatch):
    ds = shards.load(output)
    sequential = [(x["id"], x["frames"].sum(), x["audio"].sum()) for x in ds]
    assert [s[0] for s in sequential] == ds.ids
    calls = []
    original = pq.ParquetFile.read_row_group

    def counting(self, i, *args, **kwargs):
        calls.append(i)
        return original(self, i, *args, **kwargs)

    def whole_file(*args, **kwargs):
        raise AssertionError("random access read a whole shard")

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    monkeypatch.setattr(pq.ParquetFile, "read", whole_file)
    order = list(range(len(ds)))
    random.Random(0).shuffle(order)
    for i in order:
        item = ds[i]
        assert (item["id"], item["frames"].sum(), item["audio"].sum()) == sequential[i]
    assert len(calls) == len(order)
    assert ds[-1]["id"] == sequential[-1][0]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_dataset_object_pickles_for_dataloader_workers(output):
    ds = shards.load(output)
    ds[0]  # opens a file handle, which must not travel
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone) == len(ds) and clone[3]["id"] == ds[3]["id"]


def test_datasets_load_dataset_reads_shards(output):
    import datasets

    files = sorted(str(p) for p in output.glob("*.parquet"))
    table = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(output.parent / "hf-cache"))
    manifest = shards.read_manifest(output)
    assert table.num_rows == manifest["counts"]["clips_written"]
    ids = [s["id"] for row in table["samples"] for s in row]
    assert sorted(ids) == sorted(shards.load(output).ids)
    row = table[0]
    frame = np.asarray(Image.open(io.BytesIO(row["frames"][0])))
    assert frame.shape == (row["height"], row["width"], 3)
    assert json.loads(row["samples"][0]["extra"])["vid_name"]


def test_flipped_byte_raises_naming_the_shard(copy):
    flip_byte(copy / "shard-00001.parquet")
    with pytest.raises(shards.ShardCorruptError) as info:
        shards.load(copy)
    message = str(info.value)
    assert "shard-00001.parquet" in message and "sha256" in message
    assert "--overwrite" in message and "skip_corrupt" in message


def test_skip_corrupt_reports_skipped_samples(copy, output):
    manifest = shards.read_manifest(copy)
    flip_byte(copy / "shard-00001.parquet")
    ds = shards.load(copy, skip_corrupt=True)
    lost = manifest["shards"][1]["samples"]
    assert ds.skipped == [("shard-00001.parquet", lost)]
    assert len(ds) == manifest["counts"]["written"] - lost
    full = shards.load(output)
    missing = set(full.ids) - set(ds.ids)
    assert len(missing) == lost
    assert all(ds[i]["frames"].shape[0] == 4 for i in range(len(ds)))


def test_missing_shard_is_corrupt(copy):
    (copy / "shard-00002.parquet").unlink()
    with pytest.raises(shards.ShardCorruptError, match="shard-00002.parquet.*missing"):
        shards.load(copy)
    assert shards.load(copy, skip_corrupt=True).skipped[0][0] == "shard-00002.parquet"


def test_verify_false_skips_checksums_but_not_structure(copy):
    flip_byte(copy / "shard-00000.parquet", offset=-3)  # inside the footer magic: unreadable as Parquet
    with pytest.raises(shards.ShardCorruptError, match="shard-00000.parquet"):
        shards.load(copy, verify=False)


def test_read_manifest_errors(copy, tmp_path):
    with pytest.raises(shards.ShardFormatError, match="not a preprocess output"):
        shards.read_manifest(tmp_path / "nothing")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(shards.ShardFormatError, match="version 99"):
        shards.load(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(shards.ShardFormatError, match="has not finished"):
        shards.read_manifest(copy)


def test_no_pickle_in_the_format(output):
    for path in output.glob("*.parquet"):
        metadata = pq.ParquetFile(path).schema_arrow.metadata
        assert set(metadata) <= {b"ARROW:schema", shards.VERSION_KEY}
