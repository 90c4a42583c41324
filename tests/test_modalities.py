"""Per-sample modalities: one batch mixes a video with its audio interleaved
(`use_audio_in_video` on), a video followed by its audio as its own item (the flag off, the sample's own
override), a silent video, an audio clip alone and an image; each row is exactly what its sample gives alone
(ids, TMRoPE positions, log-probs, greedy rollout = Hugging Face `generate`), on both families. The override
travels from the jsonl manifest through the shards into the prompt, and a trainer step on such a batch starts
at KL exactly 0."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from omni_grpo.config import DEFAULT_SYSTEM_PROMPT
from omni_grpo.core_algos import kl_penalty
from omni_grpo.models import generate, log_probs
from omni_grpo.synthetic import chirp, frame_image
from tests.conftest import make_sample
from tests.helpers import real_ids
from tests.test_models import hf_greedy

SYS = DEFAULT_SYSTEM_PROMPT
LAYOUTS = ("video+audio", "video then audio", "silent video", "audio", "image")


def layout_samples() -> list[dict]:
    """One in-memory sample per layout (as `preprocess.shards.load` returns them), the synthetic kit's media."""
    on = make_sample(0, seed=30)
    off = dict(make_sample(1, frames=6, seconds=3.0, seed=30), use_audio_in_video=False)
    silent = make_sample(2, audio=False, seed=30)
    audio = dict(make_sample(3), modality="audio", frames=None, fps=None, audio=chirp(2.7, 16000, seed=3))
    image = dict(
        make_sample(4), modality="image", frames=None, fps=None, image=frame_image(0, 1.0, 1.0, (56, 84), seed=4)
    )
    return [on, off, silent, audio, image]


def test_each_layout_builds_its_own_user_turn(kit):
    """The markers of each row's media, in the family's own tokens (the processor's names for them)."""
    module, _, processor = kit
    inputs = module.build_inputs(processor, layout_samples(), SYS, True)
    p = processor
    vision = f"{p.vision_bos_token}{p.video_token}"
    expected = {  # (must appear, must not appear)
        "video+audio": ([f"{p.vision_bos_token}{p.audio_bos_token}{p.video_token}", p.audio_token], [p.image_token]),
        "video then audio": (
            [vision, f"{p.vision_eos_token}{p.audio_bos_token}{p.audio_token}"],
            [f"{p.vision_bos_token}{p.audio_bos_token}"],
        ),
        "silent video": ([vision], [p.audio_token, p.audio_bos_token]),
        "audio": ([f"{p.audio_bos_token}{p.audio_token}"], [p.vision_bos_token, p.video_token]),
        "image": ([f"{p.vision_bos_token}{p.image_token}"], [p.video_token, p.audio_token]),
    }
    for row, layout in enumerate(LAYOUTS):
        text = processor.tokenizer.decode(real_ids(inputs, row))
        present, absent = expected[layout]
        assert all(t in text for t in present) and not any(t in text for t in absent), (layout, text)
    assert inputs.audio_in_video == [True, False, False, False, False]
    assert (inputs.video_rows, inputs.audio_rows, inputs.image_rows) == ([0, 1, 2], [0, 1, 3], [4])
    assert inputs.image_grid_thw.shape == (1, 3) and inputs.pixel_values.shape[0] == int(inputs.image_grid_thw.prod())


def test_mixed_layouts_batch_equals_one_by_one(kit):
    """The five layouts in one batch, towers run once (encode once) and the prompt shared by its G copies:
    per row the same ids, positions and log-probs as the sample alone, greedy tokens equal to HF `generate` on
    the sample alone, and KL exactly 0 against a reference copy."""
    module, model, processor = kit
    samples = layout_samples()
    batch = module.build_inputs(processor, samples, SYS, True)
    with torch.no_grad():
        batch.encoded = module.encode_media(model, batch)
        assert batch.tower_calls.vision == 4 and batch.tower_calls.audio == 3  # 3 videos + 1 image; 3 audios
        comps = generate(module, model, processor, batch, num_generations=2, max_new_tokens=5, do_sample=False)
        rep = batch.repeat(2)
        lp, _ = log_probs(module, model, rep, comps.completion_ids, comps.completion_mask)  # shared prompt
        ref, _ = log_probs(module, copy.deepcopy(model), rep, comps.completion_ids, comps.completion_mask)
        plain = dataclasses.replace(batch, encoded=None)
        _, positions = module.embed(model, plain, plain.input_ids, plain.attention_mask)
    assert torch.equal(kl_penalty(lp, ref, kind="k3") * comps.completion_mask, torch.zeros_like(lp))
    cfg = model.config
    for row in (0, 1, 2, 4):  # every video and the image sit on a height x width grid, not on a text line
        visual = torch.isin(plain.input_ids[row], torch.tensor([cfg.video_token_id, cfg.image_token_id]))
        assert not torch.equal(positions[1, row, visual], positions[2, row, visual]), LAYOUTS[row]
    for row, sample in enumerate(samples):
        alone = module.build_inputs(processor, [sample], SYS, True)
        assert torch.equal(real_ids(batch, row), real_ids(alone, 0)), LAYOUTS[row]
        hf = hf_greedy(kit, alone, n=5)
        for j in range(2):
            assert torch.equal(comps.completion_ids[2 * row + j, : hf.shape[1]], hf[0]), LAYOUTS[row]
        with torch.no_grad():
            _, pos_alone = module.embed(model, alone, alone.input_ids, alone.attention_mask)
            one = comps.completion_ids[2 * row : 2 * row + 1], comps.completion_mask[2 * row : 2 * row + 1]
            lp_alone, _ = log_probs(module, model, alone, *one)
        assert torch.equal(positions[:, row, batch.attention_mask[row].bool()], pos_alone[:, 0]), LAYOUTS[row]
        n = int(one[1].sum())
        assert torch.allclose(lp[2 * row, :n], lp_alone[0, :n], atol=1e-5), LAYOUTS[row]
    # the image matters: with its features zeroed the image row scores differently
    blank = dataclasses.replace(batch.encoded, image=[torch.zeros_like(f) for f in batch.encoded.image])
    with torch.no_grad():
        lp_blank, _ = log_probs(
            module,
            model,
            dataclasses.replace(batch, encoded=blank).repeat(2),
            comps.completion_ids,
            comps.completion_mask,
        )
    assert not torch.allclose(lp_blank[8], lp[8]) and torch.equal(lp_blank[:8], lp[:8])


def test_copies_of_an_encoded_batch_carry_the_tower_outputs_not_the_raw_media(kit):
    """All five layouts, the first video at 29.97 fps over 2.7 s: G copies of an encoded batch hold the
    encoded media (and the grids, masks and timing positions need), never the raw patches or audio features;
    a Hugging Face forward is refused them with the fix; the batch as built still gives its raw media."""
    module, model, processor = kit
    samples = layout_samples()
    samples[0] = dict(samples[0], fps=29.97, audio=chirp(2.7, 16000, seed=5))
    batch = module.build_inputs(processor, samples, SYS, True)
    raw = batch.repeat(3)
    assert raw.pixel_values_videos.shape[0] == 3 * batch.pixel_values_videos.shape[0]
    assert raw.input_features.shape[0] == 3 * batch.input_features.shape[0]
    assert "pixel_values_videos" in raw.select([0]).media_kwargs()  # one row: one use_audio_in_video value
    with torch.no_grad():
        batch.encoded = module.encode_media(model, batch)
    rep = batch.repeat(3)
    assert rep.pixel_values_videos is None and rep.pixel_values is None and rep.input_features is None
    assert len(rep.encoded.video) == 3 * len(batch.encoded.video) and len(rep.encoded.image) == 3
    assert torch.equal(rep.video_grid_thw, raw.video_grid_thw)
    assert torch.equal(rep.feature_attention_mask, raw.feature_attention_mask)
    assert torch.equal(rep.video_second_per_grid, raw.video_second_per_grid)
    with pytest.raises(ValueError, match="not their raw media"):
        rep.select([0]).media_kwargs()
    with torch.no_grad():  # the copies' positions are the raw copies' (grids and timing survive)
        _, pos_enc = module.embed(model, rep, rep.input_ids, rep.attention_mask)
        _, pos_raw = module.embed(model, raw, raw.input_ids, raw.attention_mask)
    assert torch.equal(pos_enc, pos_raw)


def test_sync_towers_run_the_same_calls_for_an_audio_batch_and_a_video_batch(kit, monkeypatch):
    """Under ZeRO-3 (towers synced) a batch of audio clips and a batch of silent videos both call the vision
    tower once and the audio tower once (dummy passes where they have none), so two ranks holding them do not
    wait on each other; the scores do not change."""
    from omni_grpo.models import get_module

    module, model, processor = kit
    synced = get_module(module.family)
    monkeypatch.setattr(synced, "must_sync_towers", lambda model: True)  # as under ZeRO-3 over several ranks
    audio, silent = layout_samples()[3], layout_samples()[2]
    calls = {}
    for name, sample in (("audio", audio), ("video", silent)):
        inputs = module.build_inputs(processor, [sample], SYS, True)
        seen = []
        hooks = [
            base.register_forward_pre_hook(lambda *_, tag=tag: seen.append(tag))
            for tag, base in (("vision", model.model.visual), ("audio", model.model.audio_tower))
        ]
        try:
            with torch.no_grad():
                enc = synced.encode_media(model, inputs)
        finally:
            for h in hooks:
                h.remove()
        calls[name] = sorted(seen)
        assert enc.dummy is not None
        comps = generate(module, model, processor, inputs, num_generations=1, max_new_tokens=3, do_sample=False)
        with torch.no_grad():
            lp, _ = log_probs(module, model, inputs, comps.completion_ids, comps.completion_mask)
            inputs.encoded = enc
            lp_sync, _ = log_probs(synced, model, inputs, comps.completion_ids, comps.completion_mask)
        assert torch.equal(lp, lp_sync)
    assert calls["audio"] == calls["video"] == ["audio", "vision"]


# --- from the jsonl manifest: the per-sample flag in the shards, and a trainer step --------------------------


@pytest.fixture(scope="module")
def layout_shards(tmp_path_factory):
    """A jsonl manifest with every layout (the second question about the clip with sound overrides
    `use_audio_in_video: false`), preprocessed in this process."""
    from omni_grpo.synthetic import make_audio, make_clip, make_image
    from preprocess.media import VideoOptions
    from tests.helpers import preprocess_here

    root = tmp_path_factory.mktemp("modalities")
    make_clip(root / "talk.mp4", seconds=2.0, audio="tone", seed=1)
    make_clip(root / "quiet.mp4", seconds=2.0, audio=None, seed=2)
    make_audio(root / "voice.wav", seconds=2.5, sample_rate=22050, seed=3)
    make_image(root / "photo.png", size=(84, 112), seed=4)
    qa = {"question": "Is the person happy?", "options": ["yes", "no"], "answer": "A"}
    rows = [
        {"id": "talk", "video": "talk.mp4", **qa},
        {"id": "talk_apart", "video": "talk.mp4", **qa, "question": "Is the person sad?", "use_audio_in_video": False},
        {"id": "quiet", "video": "quiet.mp4", **qa},
        {"id": "voice", "audio": "voice.wav", **qa},
        {"id": "photo", "image": "photo.png", **qa},
    ]
    (root / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    preprocess_here(root / "shards", manifest=root / "qa.jsonl", video=VideoOptions(min_pixels=3136, max_pixels=6272))
    return root / "shards"


def test_manifest_override_reaches_the_prompt(tiny, layout_shards):
    """`use_audio_in_video: false` on one question of a clip with sound: stored, read back, and its prompt puts
    the audio after the video while the other question about the same clip interleaves it."""
    from omni_grpo.data import Collate, PromptDataset

    module, _, processor = tiny
    data = PromptDataset([str(layout_shards)])
    by_id = {data[i]["id"]: data[i] for i in range(len(data))}
    assert by_id["talk_apart"]["use_audio_in_video"] is False and by_id["talk"]["use_audio_in_video"] is None
    batch = Collate(module, processor, SYS, True, 4096)([by_id["talk"], by_id["talk_apart"]])
    assert batch.inputs.audio_in_video == [True, False]
    tok = processor.tokenizer
    text = [tok.decode(real_ids(batch.inputs, r)) for r in range(2)]
    assert "<|vision_bos|><|audio_bos|>" in text[0] and "<|vision_eos|><|audio_bos|>" in text[1]
    assert "<|vision_bos|><|audio_bos|>" not in text[1]
    # the same clip and question without the override: interleaved, as the config says
    plain = Collate(module, processor, SYS, True, 4096)([dict(by_id["talk_apart"], use_audio_in_video=None)])
    assert not torch.equal(real_ids(plain.inputs, 0), real_ids(batch.inputs, 1))


def test_version_2_shards_without_the_flag_still_read(layout_shards, tmp_path):
    """A version-2 folder (samples without `use_audio_in_video`) loads, every sample's flag None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from preprocess import shards

    manifest = json.loads((layout_shards / "manifest.json").read_text())
    out = tmp_path / "v2"
    out.mkdir()
    entries = []
    for entry in manifest["shards"]:
        table = pq.read_table(layout_shards / entry["file"])
        samples = table.column("samples").combine_chunks()
        old = pa.struct([f for f in samples.type.value_type if f.name != "use_audio_in_video"])
        rows = [[{k: v for k, v in s.items() if k != "use_audio_in_video"} for s in row] for row in samples.to_pylist()]
        table = table.set_column(table.schema.get_field_index("samples"), "samples", pa.array(rows, type=pa.list_(old)))
        table = table.replace_schema_metadata({shards.VERSION_KEY: b"2"})
        pq.write_table(table, out / entry["file"], row_group_size=1)
        entries.append({**entry, "sha256": shards.sha256_file(out / entry["file"])})
    manifest.update(format_version=2, shards=entries)
    (out / "manifest.json").write_text(json.dumps(manifest))
    data = shards.load(out)
    assert len(data) == 5 and all(data[i]["use_audio_in_video"] is None for i in range(5))
    assert sorted(data[i]["modality"] for i in range(5)) == ["audio", "image", "video", "video", "video"]


def test_trainer_step_on_a_mixed_batch_starts_at_kl_zero(tiny_model_dir, layout_shards, tmp_path):
    """One micro-step holds all five layouts: KL is exactly 0 at step 0 and moves after an update."""
    from omni_grpo.trainer import GRPOTrainer
    from tests.helpers import LENGTH, TINY_RUN, tiny_config

    cfg = tiny_config(
        tiny_model_dir,
        layout_shards,
        tmp_path / "run",
        TINY_RUN,
        per_device_prompts=5,
        max_completion_length=6,
        max_steps=2,
        save_steps=0,
        logging_steps=1,
        dataset_order="sequential",
        reward_funcs=["format", LENGTH],
    )
    trainer = GRPOTrainer(cfg)
    first, second = trainer.step(), trainer.step()
    assert first["actor/kl"] == 0.0 and second["actor/kl"] > 0.0
    assert np.isfinite([first["actor/loss"], second["actor/loss"]]).all()
