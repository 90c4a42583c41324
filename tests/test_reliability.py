"""Reliability: faults injected into training and preprocessing, and bad inputs, each survived with a
clear message. docs/reliability.md maps every fault and bad input to the test that proves it (here or elsewhere).

Faults are injected from the outside: a driver script written into tmp_path monkeypatches the trainer and
kills its own process with SIGKILL at the chosen moment; disk-full and read-only saves are monkeypatched
`OSError`s (tests run as root, so chmod would not bite) plus one real ENOSPC from /dev/full.
"""

import errno
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omni_grpo import checkpoint as ckpt
from omni_grpo import synthetic
from omni_grpo import train as train_cli
from omni_grpo import trainer as trainer_mod
from omni_grpo.config import load_config
from omni_grpo.trainer import GRPOTrainer
from preprocess import shards as shard_fmt
from preprocess.build import BuildOptions, build
from preprocess.media import VideoOptions, qwen_defaults
from tests.helpers import CLI_RUN, LENGTH, build_shards, flip_byte, run_args, same_params, snapshot

REPO = Path(__file__).resolve().parents[1]
VIDEO = VideoOptions(min_pixels=3136, max_pixels=50176)


# ------------------------------------------------------------------------------------------------ helpers


def train_args(model_dir, data_dir, out, **overrides) -> list[str]:
    """`key=value` arguments of a tiny run: G=2, one prompt per micro-step, sequential data, no saves."""
    return run_args(
        model_dir, data_dir, out, CLI_RUN, **{"save_steps": 0, "reward_funcs": f"[format, {LENGTH}]", **overrides}
    )


def make_trainer(model_dir, data_dir, out, **overrides) -> GRPOTrainer:
    return GRPOTrainer(load_config(None, train_args(model_dir, data_dir, out, **overrides)))


def one_line(err: str, prefix: str) -> str:
    """The single `prefix` line of a CLI's stderr; no traceback anywhere."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A Social-IQ 2.0 style dataset of 3 one-second clips (7 questions), one clip per shard."""
    return build_shards(tmp_path_factory.mktemp("rel_data"), n_clips=3, seconds=1.0, shard_size=1)


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if anything loads a model."""
    from omni_grpo.models.qwen2_5_omni import Qwen25OmniModule

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(Qwen25OmniModule, "load_model", refuse)
    monkeypatch.setattr(ckpt, "load_policy", refuse)


# ------------------------------------------------------------------------------- kill -9 during training

DRIVER = '''"""Runs `python -m omni_grpo.train ARGS` in this process with one SIGKILL armed; records every step."""
import hashlib
import json
import os
import random
import signal
import sys
from pathlib import Path

import numpy as np
import torch

from omni_grpo import checkpoint, train
from omni_grpo.trainer import GRPOTrainer

FAULT, RECORD, ARGV = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
real_step, real_rollout, real_save_model, real_rename = (
    GRPOTrainer.step, GRPOTrainer.rollout, checkpoint.save_model, Path.rename)
seen = {}


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def digest(obj):
    return hashlib.sha256(repr(obj).encode()).hexdigest()


def step(self):
    if FAULT == "between_steps" and self.global_step == 3:
        die()  # step 3 finished, not saved; the latest checkpoint is step 2
    seen.clear()
    before = {"torch_rng": hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest(),
              "numpy_rng": digest(np.random.get_state()[1].tolist()), "python_rng": digest(random.getstate()),
              "cursor": [self.cursor.epoch, self.cursor.position]}
    metrics = real_step(self)
    row = {"step": self.global_step, **before, **seen, "loss": metrics["actor/loss"],
           "reward": metrics["reward/total"], "grad_norm": metrics["actor/grad_norm"]}
    with RECORD.open("a") as f:
        f.write(json.dumps(row) + "\\n")
    return metrics


def rollout(self, batch, temperature):
    out = real_rollout(self, batch, temperature)
    seen.setdefault("ids", []).extend(s["id"] for s in batch.samples)
    seen.setdefault("completions", []).extend(out.texts)
    return out


def save_model(folder, *args):
    real_save_model(folder, *args)
    if FAULT == "mid_save" and folder.parent.name == ".tmp-step-0000004":
        die()  # model weights written; optimizer, trainer state and COMPLETE not yet


def rename(self, target):
    if FAULT == "before_rename" and self.name == ".tmp-step-0000004":
        die()  # COMPLETE written inside the temporary folder, not yet renamed into place
    return real_rename(self, target)


GRPOTrainer.step, GRPOTrainer.rollout, checkpoint.save_model, Path.rename = step, rollout, save_model, rename
sys.exit(train.main(ARGV))
'''


def drive(tmp: Path, fault: str, record: Path, args: list[str]) -> subprocess.CompletedProcess:
    driver = tmp / "driver.py"
    driver.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, str(driver), fault, str(record), *args],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=420)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a data-loader worker the kill left behind
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def kill_args(model_dir, data_dir, out, *extra) -> list[str]:
    """4 steps, a checkpoint every 2, one loader worker (the cursor must survive read-ahead)."""
    return [*train_args(model_dir, data_dir, out, max_steps=4, save_steps=2, dataloader_num_workers=1), *extra]


def checkpoint_content(folder: Path) -> dict:
    """Everything that must be equal between two checkpoints of the same step (paths in config.yaml aside)."""
    from safetensors.torch import load_file

    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    content = {"files": files, "trainer_state": json.loads((folder / "trainer_state.json").read_text())}
    for name in files:
        if name.endswith(".safetensors"):
            content[name] = {k: v.tolist() for k, v in sorted(load_file(str(folder / name)).items())}
        elif name.endswith(".pt"):
            content[name] = repr(torch.load(folder / name, map_location="cpu", weights_only=True))
    return content


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, shards, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    proc = drive(tmp, "none", tmp / "record.jsonl", kill_args(tiny_model_dir, shards, tmp / "out"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = {r["step"]: r for r in read_records(tmp / "record.jsonl")}
    assert sorted(records) == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in records.values())
    assert len({r["loss"] for r in records.values()}) > 1  # a real curve, not a constant
    return tmp / "out", records


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["between_steps", "mid_save", "before_rename"])
def test_kill_9_then_resume_latest_equals_uninterrupted(fault, uninterrupted, tiny_model_dir, shards, tmp_path):
    """SIGKILL between steps / while the step-4 checkpoint is written / just before it is renamed into place:
    the step-2 checkpoint survives intact, and `resume_from_checkpoint=latest` continues with the same step
    count, data position, RNG state, completions, loss curve and final weights as a run never interrupted."""
    ref_out, ref = uninterrupted
    out = tmp_path / "out"
    killed = drive(tmp_path, fault, tmp_path / "killed.jsonl", kill_args(tiny_model_dir, shards, out))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000002"]
    assert checkpoint_content(out / "checkpoints" / "step-0000002") == checkpoint_content(
        ref_out / "checkpoints" / "step-0000002"
    )
    done_before_kill = read_records(tmp_path / "killed.jsonl")
    assert [r["step"] for r in done_before_kill] == ([1, 2, 3] if fault == "between_steps" else [1, 2, 3, 4])

    resumed = drive(
        tmp_path,
        "none",
        tmp_path / "resumed.jsonl",
        kill_args(tiny_model_dir, shards, out, "resume_from_checkpoint=latest"),
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr and "at step 2" in resumed.stderr
    after = read_records(tmp_path / "resumed.jsonl")
    assert [r["step"] for r in after] == [3, 4]
    for row in done_before_kill + after:
        assert row == ref[row["step"]], f"step {row['step']} differs from the uninterrupted run"
    names = [p.name for p in ckpt.list_checkpoints(out)]
    assert names == [p.name for p in ckpt.list_checkpoints(ref_out)] == ["step-0000002", "step-0000004"]
    assert not list((out / "checkpoints").glob(".tmp-*"))  # the half-written one was cleaned up
    assert checkpoint_content(out / "checkpoints" / "step-0000004") == checkpoint_content(
        ref_out / "checkpoints" / "step-0000004"
    )


# ------------------------------------------------------------------------------------- corrupt shards


@pytest.fixture
def corrupt_shards(shards, tmp_path) -> Path:
    copy = tmp_path / "corrupt"
    shutil.copytree(shards, copy)
    flip_byte(copy / "shard-00001.parquet")
    return copy


def test_trainer_refuses_a_corrupt_shard_before_loading_a_model(
    tiny_model_dir, corrupt_shards, tmp_path, no_model_loads
):
    with pytest.raises(shard_fmt.ShardCorruptError) as info:
        make_trainer(tiny_model_dir, corrupt_shards, tmp_path / "out")
    assert "shard-00001.parquet" in str(info.value) and "sha256" in str(info.value)


def test_cli_refuses_a_corrupt_shard_with_one_line_naming_it_and_the_option(
    tiny_model_dir, corrupt_shards, tmp_path, capsys, no_model_loads
):
    rc = train_cli.main(train_args(tiny_model_dir, corrupt_shards, tmp_path / "out"))
    line = one_line(capsys.readouterr().err, "data error:")
    assert rc == 2
    assert "shard-00001.parquet" in line and "sha256" in line and "skip_corrupt_shards=true" in line


def test_skip_corrupt_shards_trains_and_logs_how_many_samples_it_skipped(
    tiny_model_dir, corrupt_shards, tmp_path, caplog
):
    lost = shard_fmt.read_manifest(corrupt_shards)["shards"][1]["samples"]
    written = shard_fmt.read_manifest(corrupt_shards)["counts"]["written"]
    with caplog.at_level(logging.WARNING, logger="omni_grpo"):
        trainer = make_trainer(
            tiny_model_dir, corrupt_shards, tmp_path / "out", skip_corrupt_shards="true", max_steps=1
        )
    assert f"skipping {lost} samples in 1 corrupt shard(s): shard-00001.parquet" in caplog.text
    assert len(trainer.dataset) == written - lost
    assert math.isfinite(trainer.train()["actor/loss"])


# ------------------------------------------------------------------------------ disk full, read-only disk


@pytest.fixture(scope="module")
def saving(tiny_model_dir, shards, tmp_path_factory):
    """A trainer with a good checkpoint at step 1, then trained to step 2 (whose save the tests break)."""
    out = tmp_path_factory.mktemp("saving") / "out"
    trainer = make_trainer(tiny_model_dir, shards, out, max_steps=4, save_total_limit=0)
    trainer.step()
    good = trainer.save()
    weights = snapshot(trainer.policy, trainable_only=True)
    loss_2 = trainer.step()["actor/loss"]
    return {"trainer": trainer, "out": out, "good": good, "weights": weights, "loss_2": loss_2}


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _read_only_begin(output_dir, step):
    raise OSError(errno.EROFS, "Read-only file system", str(ckpt.checkpoints_dir(output_dir)))


def _safetensors_enospc(*args, **kwargs):
    from safetensors import SafetensorError

    # What safetensors raises on a full disk (measured on a 64 KiB tmpfs).
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def _torch_save_full_disk(*args, **kwargs):
    # What torch.save raises on a full disk (measured on a 64 KiB tmpfs): no errno, no "space" in it.
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


SAVE_FAULTS = {
    "model_weights_enospc": ("save_model", _enospc, "No space left"),
    "rng_state_safetensors_enospc": ("save_file", _safetensors_enospc, "No space left"),
    "optimizer_torch_save_full_disk": ("torch_save", _torch_save_full_disk, "RuntimeError"),
    "read_only_output_dir": ("begin", _read_only_begin, "Read-only file system"),
    "complete_marker_enospc": ("finish", _enospc, "No space left"),
}


def _inject(monkeypatch, where, fault):
    import safetensors.torch

    if where == "save_file":
        monkeypatch.setattr(safetensors.torch, "save_file", fault)
    elif where == "torch_save":
        monkeypatch.setattr(torch, "save", fault)
    else:
        monkeypatch.setattr(ckpt, where, fault)


@pytest.mark.parametrize("name", list(SAVE_FAULTS))
def test_failed_save_says_what_and_where_and_keeps_the_last_good_checkpoint(saving, monkeypatch, name):
    where, fault, reason = SAVE_FAULTS[name]
    _inject(monkeypatch, where, fault)
    with pytest.raises(ckpt.CheckpointError) as info:
        saving["trainer"].save()
    message = str(info.value)
    assert "step 2" in message and str(saving["out"]) in message and reason in message, message
    assert "resume_from_checkpoint=latest" in message and "free disk space" in message
    assert ckpt.list_checkpoints(saving["out"]) == [saving["good"]]
    assert ckpt.read_trainer_state(saving["good"])["global_step"] == 1


def test_resume_from_the_last_good_checkpoint_after_a_failed_save(saving, tiny_model_dir, shards, monkeypatch):
    monkeypatch.setattr(ckpt, "save_model", _enospc)
    with pytest.raises(ckpt.CheckpointError):
        saving["trainer"].save()
    assert list((saving["out"] / "checkpoints").glob(".tmp-*"))  # the failed save's leftovers
    monkeypatch.undo()
    resumed = make_trainer(
        tiny_model_dir, shards, saving["out"], max_steps=4, save_total_limit=0, resume_from_checkpoint="latest"
    )
    assert resumed.global_step == 1 and same_params(resumed.policy, saving["weights"])
    assert resumed.step()["actor/loss"] == saving["loss_2"]  # continues exactly where the good one ended
    assert resumed.save().name == "step-0000002"
    assert not list((saving["out"] / "checkpoints").glob(".tmp-*"))


def test_unwritable_output_dir_is_a_config_error_before_any_model_loads(
    tiny_model_dir, shards, tmp_path, capsys, no_model_loads
):
    blocker = tmp_path / "a_file"
    blocker.write_text("output_dir cannot be created under a file\n")
    rc = train_cli.main(train_args(tiny_model_dir, shards, blocker / "out"))
    line = one_line(capsys.readouterr().err, "config error:")
    assert rc == 2 and "output_dir" in line and str(blocker / "out") in line


# ------------------------------------------------------------------------------ rewards and non-finite loss


def short_reward(completions, **kwargs):
    """One score too few."""
    return [0.5] * (len(completions) - 1)


def nonfinite_reward(completions, **kwargs):
    """NaN, +inf and -inf for the first completions, finite lengths for the rest."""
    bad = [math.nan, math.inf, -math.inf]
    return [bad[i] if i < len(bad) else float(len(c)) for i, c in enumerate(completions)]


@pytest.mark.parametrize(
    "reward, cause",
    [
        ("tests.rewards_for_tests:raising_reward", "RuntimeError: judge unavailable"),
        ("tests.test_reliability:short_reward", "returned 1 scores for 2 completions"),
    ],
)
def test_a_failing_reward_is_counted_logged_and_stops_the_cli_after_n_in_a_row(
    tiny_model_dir, shards, tmp_path, caplog, capsys, reward, cause
):
    args = train_args(
        tiny_model_dir,
        shards,
        tmp_path / "out",
        max_steps=4,
        reward_funcs=f"[{LENGTH}, {reward}]",
        max_consecutive_reward_errors=2,
    )
    with caplog.at_level(logging.WARNING):
        rc = train_cli.main(args)
    line = one_line(capsys.readouterr().err, "training stopped:")
    assert rc == 1
    assert f"reward {reward!r} failed on 2 consecutive batches" in line and cause in line
    assert "fix it, or remove it from reward_funcs" in line
    assert "(1 in a row, limit 2)" in caplog.text and "(2 in a row, limit 2)" in caplog.text


def test_nan_and_inf_rewards_are_counted_and_training_goes_on(tiny_model_dir, shards, tmp_path):
    reward = "tests.test_reliability:nonfinite_reward"
    trainer = make_trainer(
        tiny_model_dir, shards, tmp_path / "out", per_device_prompts=2, reward_funcs=f"[{LENGTH}, {reward}]"
    )
    before = snapshot(trainer.policy, trainable_only=True)
    metrics = trainer.step()
    assert metrics[f"reward/{reward}/nonfinite"] == 3.0 and metrics[f"reward/{reward}/none_ratio"] == 0.75
    assert math.isfinite(metrics["reward/total"]) and math.isfinite(metrics["actor/loss"])
    assert metrics["actor/skipped_updates"] == 0.0 and not same_params(trainer.policy, before)


def nan_policy_log_probs(monkeypatch, when=lambda: True):
    """The policy pass (the one with gradient and entropy) returns NaN log-probs while `when()` is true."""
    real = trainer_mod.log_probs

    def patched(*args, **kwargs):
        lp, entropy = real(*args, **kwargs)
        if kwargs.get("with_entropy") and when():
            lp = lp + math.nan
        return lp, entropy

    monkeypatch.setattr(trainer_mod, "log_probs", patched)


def test_a_nonfinite_loss_skips_the_update_is_logged_and_training_recovers(
    tiny_model_dir, shards, tmp_path, monkeypatch, caplog
):
    trainer = make_trainer(tiny_model_dir, shards, tmp_path / "out", max_steps=3)
    nan_policy_log_probs(monkeypatch, when=lambda: trainer.global_step == 0)
    before = snapshot(trainer.policy, trainable_only=True)
    optimizer_state = repr(trainer.engine.optimizer.state_dict())
    with caplog.at_level(logging.WARNING, logger="omni_grpo"):
        metrics = trainer.step()
    assert metrics["actor/skipped_updates"] == 1.0 and trainer.nonfinite_in_a_row == 1
    assert same_params(trainer.policy, before) and repr(trainer.engine.optimizer.state_dict()) == optimizer_state
    assert "step 1: non-finite loss or gradient norm, update skipped (1 in a row)" in caplog.text
    metrics = trainer.step()
    assert metrics["actor/skipped_updates"] == 0.0 and trainer.nonfinite_in_a_row == 0
    assert math.isfinite(metrics["actor/loss"]) and not same_params(trainer.policy, before)


def test_nonfinite_loss_n_times_in_a_row_stops_the_cli_with_exit_1(
    tiny_model_dir, shards, tmp_path, monkeypatch, capsys
):
    nan_policy_log_probs(monkeypatch)
    rc = train_cli.main(train_args(tiny_model_dir, shards, tmp_path / "out", max_steps=5, max_consecutive_nonfinite=2))
    line = one_line(capsys.readouterr().err, "training stopped:")
    assert rc == 1 and "2 optimizer steps in a row had a non-finite loss" in line
    assert "resume_from_checkpoint=latest" in line


# -------------------------------------------------------------------------------------------- bad config


@pytest.fixture(scope="module")
def silent_shards(tmp_path_factory) -> Path:
    """Real shards whose only clip has no audio track."""
    root = tmp_path_factory.mktemp("silent")
    synthetic.make_clip(root / "quiet.mp4", seconds=1.0, audio=None)
    (root / "qa.jsonl").write_text(
        json.dumps({"id": "q", "video": "quiet.mp4", "question": "Why?", "options": ["a", "b"], "answer": "A"}) + "\n"
    )
    build(
        BuildOptions(
            source="jsonl", manifest=root / "qa.jsonl", output=root / "shards", workers=0, progress=False, video=VIDEO
        )
    )
    return root / "shards"


BAD_CONFIGS = [
    ({"num_generations": 1}, "num_generations=1: GRPO compares the G completions"),
    ({"per_device_prompts": 1, "micro_batch_size": 3}, "micro_batch_size=3 does not divide the 2 rows"),
    ({"learning_rate": -1e-6}, "learning_rate=-1e-06 must be > 0"),
    ({"learning_rate": 0}, "learning_rate=0.0 must be > 0"),
    ({"lerning_rate": 1e-6}, "unknown config key 'lerning_rate'"),
    ({"reward_funcs": "[format, acuracy]"}, "did you mean 'accuracy'"),
    ({"reward_funcs": "[no_such_package.rewards:fn]"}, "cannot import module 'no_such_package.rewards'"),
    ({"model_name_or_path": "no/such/model"}, "model_name_or_path='no/such/model' not found"),
    ({"data": "[no/such/shards]"}, "data directory 'no/such/shards' not found"),
    ({"data": "SILENT", "use_audio_in_video": "true"}, "has no clip with audio"),
]


@pytest.mark.parametrize(
    "overrides, fragment", BAD_CONFIGS, ids=[next(iter(o)) + str(i) for i, (o, _) in enumerate(BAD_CONFIGS)]
)
def test_bad_config_exits_2_with_one_line_before_any_model_loads(
    tiny_model_dir, shards, silent_shards, tmp_path, capsys, no_model_loads, overrides, fragment
):
    overrides = {k: (f"[{silent_shards}]" if v == "SILENT" else v) for k, v in overrides.items()}
    rc = train_cli.main(train_args(tiny_model_dir, shards, tmp_path / "out", **overrides))
    line = one_line(capsys.readouterr().err, "config error:")
    assert rc == 2 and fragment in line, line
    assert not (tmp_path / "out").exists()  # nothing started


def test_unknown_key_in_a_yaml_file_names_the_file(tiny_model_dir, shards, tmp_path, capsys, no_model_loads):
    config = tmp_path / "run.yaml"
    config.write_text(f"model_name_or_path: {tiny_model_dir}\ndata: [{shards}]\nnum_generation: 4\n")
    rc = train_cli.main(["--config", str(config)])
    line = one_line(capsys.readouterr().err, "config error:")
    assert rc == 2 and "num_generation" in line and str(config) in line and "did you mean" in line


# -------------------------------------------------------------------------------------------- bad media


def _audio_only_mp4(path: Path) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        signal_ = synthetic.chirp(1.0, 16000)
        for start in range(0, len(signal_), 1024):
            chunk = np.zeros((1, 1024), dtype=np.float32)
            part = signal_[start : start + 1024]
            chunk[0, : len(part)] = part
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _zero_frame_video(path: Path) -> None:
    """A Matroska file (named .mp4) that declares an H.264 video stream but holds no video frame."""
    import av
    import numpy as np

    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("libx264", rate=8)
        video.width, video.height, video.pix_fmt = 128, 96, "yuv420p"
        audio = container.add_stream("aac", rate=16000, layout="mono")
        for start in range(0, 4096, 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
        container.mux(video.encode(None))


def _variable_frame_rate_mp4(path: Path) -> None:
    """24 frames whose spacing alternates between 120 ms and 33 ms."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for i in range(24):
            frame = av.VideoFrame.from_ndarray(synthetic.frame_image(i, 8, 3.0, (96, 128)), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += 33 if i % 2 else 120
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_more_media_edge_cases_fail_with_a_reason_or_are_handled(tmp_path):
    """Adds to tests/test_preprocess_failures.py: audio only, 0 frames, 4K resolution, variable frame rate."""
    d = tmp_path / "data"
    d.mkdir()
    synthetic.make_clip(d / "good.mp4", seconds=1.0)
    _audio_only_mp4(d / "audio_only.mp4")
    _zero_frame_video(d / "zero_frames.mp4")
    synthetic.make_clip(d / "huge.mp4", seconds=0.5, fps=8, size=(2160, 3840))
    _variable_frame_rate_mp4(d / "vfr.mp4")
    names = ["good", "audio_only", "zero_frames", "huge", "vfr"]
    (d / "qa.jsonl").write_text(
        "".join(json.dumps({"id": n, "video": f"{n}.mp4", "question": "Why?", "answer": "A"}) + "\n" for n in names)
    )
    summary = build(
        BuildOptions(
            source="jsonl", manifest=d / "qa.jsonl", output=tmp_path / "out", workers=0, progress=False, video=VIDEO
        )
    )
    failures = {f["id"]: f for f in map(json.loads, (tmp_path / "out" / "failures.jsonl").read_text().splitlines())}
    assert sorted(failures) == ["audio_only", "zero_frames"]
    assert failures["audio_only"]["reason"] == "audio_only.mp4 has no video stream"
    assert failures["zero_frames"]["reason"] == "zero_frames.mp4 has a video stream with no frames"
    assert failures["zero_frames"]["path"] == "zero_frames.mp4" and failures["zero_frames"]["line"] == 3
    assert summary["counts"]["written"] == 3 and summary["counts"]["failed"] == 2
    items = {item["id"]: item for item in shard_fmt.load(tmp_path / "out")}
    huge = items["huge"]["frames"]
    assert huge.shape[0] == 4 and huge.shape[1] * huge.shape[2] <= min(VIDEO.max_pixels, qwen_defaults()["max_pixels"])
    vfr = items["vfr"]
    assert vfr["frames"].shape[0] >= 4 and math.isfinite(vfr["fps"]) and vfr["fps"] > 0


def test_a_clip_shorter_than_its_qa_timestamps_is_a_failure_naming_ts(tmp_path):
    root = synthetic.make_siq2_dataset(tmp_path / "siq2", n_clips=1, seconds=1.0)
    qa = root / "qa" / "qa_train.json"
    rows = [json.loads(line) for line in qa.read_text().splitlines()]
    assert all(r["ts"] == "00:00-00:01" for r in rows)  # within the 1-s clip
    with qa.open("a") as f:
        f.write(json.dumps({**rows[0], "qid": "late", "ts": "00:20-00:30"}) + "\n")
    summary = build(
        BuildOptions(source="siq2", root=root, output=tmp_path / "out", workers=0, progress=False, video=VIDEO)
    )
    failures = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failures] == ["late"]
    reason = failures[0]["reason"]
    assert "ts" in reason and "00:20-00:30" in reason and "30" in reason and "1.0 s" in reason, reason
    assert failures[0]["path"] == f"video/{rows[0]['vid_name']}.mp4"
    assert sorted(i["id"] for i in shard_fmt.load(tmp_path / "out")) == sorted(r["qid"] for r in rows)
    assert summary["counts"]["written"] == len(rows) and summary["counts"]["failed"] == 1


def test_a_very_long_question_is_kept_and_training_refuses_it_at_startup(tiny_model_dir, tmp_path, capsys):
    d = tmp_path / "data"
    synthetic.make_clip(d / "clip.mp4", seconds=1.0)
    question = "Why does she smile? " * 2000  # 40 000 characters
    (d / "qa.jsonl").write_text(
        "".join(
            json.dumps({"id": i, "video": "clip.mp4", "question": q, "answer": "A"}) + "\n"
            for i, q in (("long", question), ("short", "Why?"))
        )
    )
    build(
        BuildOptions(
            source="jsonl",
            manifest=d / "qa.jsonl",
            output=tmp_path / "shards",
            workers=0,
            progress=False,
            video=VIDEO,
            max_prompt_tokens=0,
        )
    )  # no budget: the trainer's own check
    items = {item["id"]: item for item in shard_fmt.load(tmp_path / "shards")}
    assert items["long"]["question"] == question  # stored whole: never silently truncated
    rc = train_cli.main(train_args(tiny_model_dir, tmp_path / "shards", tmp_path / "out", max_prompt_length=4096))
    line = one_line(capsys.readouterr().err, "config error:")  # before any model loads
    assert rc == 2 and "1 of 2 samples" in line and "max_prompt_length=4096" in line


def test_fault_driver_compiles():
    """The kill -9 driver is valid Python even when the slow tests are deselected."""
    compile(DRIVER, "driver.py", "exec")
