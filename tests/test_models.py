"""The model module: one ModelInputs through generation and every log-prob pass.

Tests that take `kit` run on every family (Qwen2.5-Omni and Qwen3-Omni-MoE, deepstack included); those that
take `tiny` are Qwen2.5-only. The Qwen3-only extras are in test_models_qwen3.py."""

import copy
import functools

import pytest
import torch

from omni_grpo.config import DEFAULT_SYSTEM_PROMPT
from omni_grpo.core_algos import kl_penalty
from omni_grpo.models import OmniModule, detect_family, generate, get_module, head_logprobs, log_probs
from tests.conftest import KITS, make_sample

SYS = DEFAULT_SYSTEM_PROMPT


def build(kit, samples, flag=True):
    module, _, processor = kit
    return module.build_inputs(processor, samples, SYS, flag)


def greedy(kit, inputs, g=1, n=6):
    module, model, processor = kit
    with torch.no_grad():
        return generate(module, model, processor, inputs, num_generations=g, max_new_tokens=n, do_sample=False)


def hf_generate(kit, inputs, n=6, **kwargs):
    """A plain `model.generate` on the processor output, as a user would write it."""
    module, model, processor = kit
    tok = processor.tokenizer
    with torch.no_grad():
        return model.generate(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            **inputs.media_kwargs(),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=module.stop_token_ids(tok),
            pad_token_id=tok.pad_token_id,
            **kwargs,
        )


def hf_greedy(kit, inputs, n=6, **kwargs):
    """`hf_generate` with the media tokens banned: the completions only."""
    module, _, processor = kit
    out = hf_generate(kit, inputs, n, suppress_tokens=module.banned_token_ids(processor.tokenizer), **kwargs)
    return out[:, inputs.input_ids.shape[1] :]


def test_processor_output_holds_media_and_token_counts_match_features(tiny, samples):
    """The prompt carries the video pixels and audio features, one placeholder per feature row."""
    module, model, processor = tiny
    inputs = build(tiny, samples)
    assert inputs.pixel_values_videos is not None and inputs.pixel_values_videos.abs().sum() > 0
    assert inputs.input_features is not None and inputs.input_features.abs().sum() > 0
    with torch.no_grad():
        enc = module.encode_media(model, inputs)
    cfg = model.config
    for row in range(2):
        ids = inputs.input_ids[row]
        assert int((ids == cfg.video_token_id).sum()) == enc.video[row].shape[0]
        assert int((ids == cfg.audio_token_id).sum()) == enc.audio[row].shape[0]
    # interleaved block: <|vision_bos|><|audio_bos|> ... <|audio_eos|><|vision_eos|>
    text = processor.tokenizer.decode(inputs.input_ids[0])
    assert "<|vision_bos|><|audio_bos|>" in text and "<|audio_eos|><|vision_eos|>" in text


def test_batch_of_two_keeps_both_prompts_with_their_own_media(kit, samples):
    """No `[0]` — each row's prompt and media are its own sample's."""
    both = build(kit, samples)
    assert both.batch_size == 2
    assert not torch.equal(both.input_ids[0], both.input_ids[1])
    for row, sample in enumerate(samples):
        alone = build(kit, [sample])
        picked = both.select([row])
        assert torch.equal(picked.pixel_values_videos, alone.pixel_values_videos)
        assert torch.equal(picked.video_grid_thw, alone.video_grid_thw)
        n = int(alone.feature_attention_mask.sum())  # the valid frames; the padded tail is masked
        # Qwen3's released processor pads audio to the batch's longest clip, so the STFT window of a shorter
        # clip's last frame sees padding zeros instead of a reflection: only that frame may differ.
        m = n - 1 if kit[0].family == "qwen3_omni" else n
        assert torch.equal(picked.input_features[..., :m], alone.input_features[..., :m])
        assert int(picked.feature_attention_mask.sum()) == n
        ids = picked.input_ids[0][picked.attention_mask[0].bool()]
        assert torch.equal(ids, alone.input_ids[0][alone.attention_mask[0].bool()])


def test_greedy_rollout_equals_plain_generate_and_batched_equals_one_by_one(kit, samples):
    """Our rollout is plain inference; left-padded batching changes nothing."""
    batched = greedy(kit, build(kit, samples), g=2)
    for row, sample in enumerate(samples):
        alone = build(kit, [sample])
        plain = hf_greedy(kit, alone)
        ours = greedy(kit, alone).completion_ids
        n = plain.shape[1]
        assert torch.equal(ours[0, :n], plain[0])
        for j in range(2):
            assert torch.equal(batched.completion_ids[row * 2 + j, :n], plain[0])
    assert not torch.equal(batched.completion_ids[0], batched.completion_ids[2]), "samples must differ"


def test_right_padding_would_change_the_rollout(tiny, samples):
    """The test can fail: the same batch right-padded generates different tokens."""
    module, model, processor = tiny
    inputs = build(tiny, samples)
    plain_short = hf_greedy(tiny, build(tiny, [samples[0]]))
    mask = inputs.attention_mask
    shift = [int((m == 0).sum()) for m in mask]
    right_ids = torch.stack([torch.roll(ids, -s) for ids, s in zip(inputs.input_ids, shift)])
    right_mask = torch.stack([torch.roll(m, -s) for m, s in zip(mask, shift)])
    row = max(range(2), key=lambda r: shift[r])
    assert shift[row] > 0 and row == 0
    right = copyinputs(inputs, right_ids, right_mask)
    got = hf_greedy(tiny, right)
    assert not torch.equal(got[row, : plain_short.shape[1]], plain_short[0])


def copyinputs(inputs, ids, mask):
    new = copy.copy(inputs)
    new.input_ids, new.attention_mask = ids, mask
    return new


class Spy:
    """Records the `use_audio_in_video` flag and media tensors that reach each model entry point."""

    def __init__(self, monkeypatch, processor, models: dict):
        self.calls = []
        cls = type(processor)
        monkeypatch.setattr(cls, "__call__", self._wrap("processor", cls.__call__))
        self.hooks = []
        for tag, model in models.items():
            inner = model.model
            for name, obj, attr in (("rope", inner, "get_rope_index"),):
                monkeypatch.setattr(obj, attr, self._wrap(f"{tag}:{name}", getattr(obj, attr)))
            self.hooks += [
                inner.visual.register_forward_pre_hook(self._hook(f"{tag}:video"), with_kwargs=True),
                inner.audio_tower.register_forward_pre_hook(self._hook(f"{tag}:audio"), with_kwargs=True),
            ]

    def _wrap(self, name, fn):
        def spy(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return fn(*args, **kwargs)

        return spy

    def _hook(self, name):
        def hook(mod, args, kwargs):
            self.calls.append((name, args, kwargs))

        return hook

    def remove(self):
        for h in self.hooks:
            h.remove()

    def of(self, name):
        return [c for c in self.calls if c[0] == name]


@pytest.mark.parametrize("flag", [True, False])
def test_one_flag_and_all_media_reach_every_pass(kit, samples, monkeypatch, flag):
    """Processor, generate, policy and reference passes all get the same flag and media (with the flag off the
    audio is its own item after the video: still fed, not interleaved)."""
    module, model, processor = kit
    policy, reference = copy.deepcopy(model), copy.deepcopy(model)
    spy = Spy(monkeypatch, processor, {"policy": policy, "ref": reference})
    try:
        inputs = module.build_inputs(processor, samples, SYS, flag)
        for call in spy.of("processor"):  # one call per sample
            assert call[2]["load_audio_from_video"] is flag
            assert call[2]["audio"] is not None
        with torch.no_grad():
            comps = generate(module, policy, processor, inputs, num_generations=2, max_new_tokens=3, do_sample=False)
        expanded = inputs.repeat(2)
        # generation: the B prompts' media and the flag, once per prompt (its G rows share the prefill)
        (rope,) = spy.of("policy:rope")
        assert rope[1][4] is flag and torch.equal(rope[1][2], inputs.video_grid_thw)
        (video,) = spy.of("policy:video")
        assert torch.equal(video[1][0], inputs.pixel_values_videos)
        assert len(spy.of("policy:audio")) == 1
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
        assert torch.equal(video[2]["grid_thw"], inputs.video_grid_thw)
        assert len(spy.of(f"{tag}:audio")) == 1


def test_flag_changes_the_sequence(tiny, samples):
    """Why the flag must reach every pass: with and without audio-in-video the model scores different sequences
    (the audio interleaved in the video block, or after it as its own item)."""
    on, off = build(tiny, samples, True), build(tiny, samples, False)
    assert on.input_ids.shape != off.input_ids.shape or not torch.equal(on.input_ids, off.input_ids)
    text = tiny[2].tokenizer.decode(off.input_ids[0])
    assert "<|vision_eos|><|audio_bos|>" in text and "<|vision_bos|><|audio_bos|>" not in text
    assert torch.equal(off.input_features, on.input_features)


def test_kl_is_exactly_zero_at_step_zero_and_not_without_media(kit, samples):
    """Reference = policy at step 0 gives KL exactly 0 on a video+audio batch."""
    module, model, processor = kit
    inputs = build(kit, samples).repeat(2)
    comps = greedy(kit, build(kit, samples), g=2, n=8)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        lp, _ = log_probs(module, model, inputs, comps.completion_ids, comps.completion_mask)
        ref, _ = log_probs(module, reference, inputs, comps.completion_ids, comps.completion_mask)
        kl = kl_penalty(lp, ref, kind="k3")
        assert torch.equal(kl * comps.completion_mask, torch.zeros_like(kl))
        # The bug: a reference fed input_ids only sees placeholder embeddings instead of the media.
        ids = torch.cat([inputs.input_ids, comps.completion_ids], 1)
        mask = torch.cat([inputs.attention_mask, comps.completion_mask], 1)
        logits = reference(input_ids=ids, attention_mask=mask).logits[:, inputs.input_ids.shape[1] - 1 : -1]
        bad_ref = torch.log_softmax(logits.float(), -1).gather(-1, comps.completion_ids.unsqueeze(-1)).squeeze(-1)
        bad_kl = kl_penalty(lp, bad_ref, kind="k3")
    assert (bad_kl * comps.completion_mask).sum() > 1e-3


def test_g_copies_give_identical_rows_and_scrambled_patches_do_not(kit, samples):
    """`repeat` copies whole patch blocks; repeat_interleave on flat patches would scramble them."""
    module, model, processor = kit
    g = 3
    inputs = build(kit, samples)
    comps = greedy(kit, inputs, g=1, n=6)
    same = comps.completion_ids[[0, 0, 0]], comps.completion_mask[[0, 0, 0]]
    rep = inputs.select([0]).repeat(g)
    with torch.no_grad():
        lp, _ = log_probs(module, model, rep, *same, share_prompt=False)  # every row runs its own media
    assert torch.equal(lp[0], lp[1]) and torch.equal(lp[1], lp[2])
    bad = copy.copy(rep)
    bad.pixel_values_videos = inputs.select([0]).pixel_values_videos.repeat_interleave(g, dim=0)
    with torch.no_grad():
        lp_bad, _ = log_probs(module, model, bad, *same, share_prompt=False)
    assert not torch.allclose(lp_bad[1], lp[1])


def test_log_probs_equal_generation_logits(kit, samples, monkeypatch):
    """`log_probs` scores exactly what `generate` sampled from (float32, 1e-5); for Qwen3, without the deepstack
    features (the language-model call Qwen2.5 makes) they would not."""
    module, model, processor = kit
    inputs = build(kit, samples)
    out = hf_generate(kit, inputs, output_logits=True, return_dict_in_generate=True)
    comp = out.sequences[:, inputs.input_ids.shape[1] :]
    step_logits = torch.stack(out.logits, dim=1).float()  # [B, C, V]
    expected = torch.log_softmax(step_logits, -1).gather(-1, comp.unsqueeze(-1)).squeeze(-1)
    mask = torch.ones_like(comp)
    monkeypatch.setattr(head_logprobs, "HEAD_CHUNK", 4)
    with torch.no_grad():
        lp, _ = log_probs(module, model, inputs, comp, mask)
    assert torch.allclose(lp, expected, atol=1e-5)
    if module.family == "qwen3_omni":
        monkeypatch.setattr(type(module), "language_model_inputs", OmniModule.language_model_inputs)
        with torch.no_grad():
            lp_flat, _ = log_probs(module, model, inputs, comp, mask)
        assert (lp_flat - expected).abs().max() > 1e-3


def test_log_probs_have_gradient(kit, samples, monkeypatch):
    """Log-probs come from a forward with gradient, not from `generate` scores; for Qwen3 with a
    trainable vision tower the deepstack mergers get gradient too (their features reach the loss)."""
    module, model, processor = kit
    policy = copy.deepcopy(model)
    inputs = build(kit, samples)
    comps = greedy(kit, inputs, n=4)
    monkeypatch.setattr(head_logprobs, "HEAD_CHUNK", 2)
    lp, _ = log_probs(module, policy, inputs, comps.completion_ids, comps.completion_mask)
    assert lp.requires_grad
    lp.sum().backward()
    parts = ["language_model.layers.0"] + (["visual.merger_list"] if module.family == "qwen3_omni" else [])
    for part in parts:
        grads = [p.grad for n, p in policy.named_parameters() if part in n]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), part


def test_banned_media_tokens_are_never_generated(kit, samples):
    """A sampled video token crashes the next forward: generation must never produce a media token."""
    module, model, processor = kit
    biased = copy.deepcopy(model)
    vid = biased.config.video_token_id
    with torch.no_grad():
        biased.lm_head.weight[vid] = biased.lm_head.weight.abs().max() * 50
    inputs = build(kit, samples)
    with torch.no_grad():
        comps = generate(module, biased, processor, inputs, num_generations=2, max_new_tokens=5, do_sample=True)
        unbanned = biased.generate(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            **inputs.media_kwargs(),
            max_new_tokens=3,
            do_sample=False,
        )
    banned = set(module.banned_token_ids(processor.tokenizer))
    assert vid in banned
    if module.family == "qwen3_omni":
        tok = processor.tokenizer
        named = [
            tok.video_token,
            tok.audio_token,
            tok.image_token,
            tok.vision_bos_token,
            tok.vision_eos_token,
            tok.audio_bos_token,
            tok.audio_eos_token,
            "<|vision_pad|>",
        ]
        assert banned == set(tok.convert_tokens_to_ids(named))
    assert not any(int(t) in banned for t in comps.completion_ids.flatten())
    assert (unbanned[:, inputs.input_ids.shape[1] :] == vid).any(), "the bias must make the bug reachable"


def test_encode_once_equals_plain_path_and_cuts_tower_calls(kit, samples):
    """Towers run once per prompt per step instead of once per completion per pass (deepstack features
    included), with the same results."""
    module, model, processor = kit
    g, passes = 4, 3
    inputs = build(kit, samples)
    comps = greedy(kit, inputs, g=g, n=5)
    expanded = inputs.repeat(g)
    inputs.tower_calls.vision = inputs.tower_calls.audio = 0
    with torch.no_grad():
        plain = [
            log_probs(module, model, expanded, comps.completion_ids, comps.completion_mask, share_prompt=False)[0]
            for _ in range(passes)
        ]
    assert inputs.tower_calls.vision == passes * g * len(samples)  # every row of every pass
    inputs.tower_calls.vision = inputs.tower_calls.audio = 0
    with torch.no_grad():
        shared = [
            log_probs(module, model, expanded, comps.completion_ids, comps.completion_mask)[0] for _ in range(passes)
        ]
    assert inputs.tower_calls.vision == passes * len(samples)  # shared prompt: once per prompt per pass
    inputs.tower_calls.vision = inputs.tower_calls.audio = 0
    with torch.no_grad():
        inputs.encoded = module.encode_media(model, inputs)
        enc_expanded = inputs.repeat(g)
        once = [
            log_probs(module, model, enc_expanded, comps.completion_ids, comps.completion_mask)[0]
            for _ in range(passes)
        ]
        comps_enc = generate(module, model, processor, inputs, num_generations=g, max_new_tokens=5, do_sample=False)
    assert inputs.tower_calls.vision == len(samples) and inputs.tower_calls.audio == len(samples)
    for a, b, c in zip(plain, shared, once):
        assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)
    assert torch.equal(comps_enc.completion_ids, comps.completion_ids)


def test_sync_towers_dummy_pass_keeps_results(kit, monkeypatch):
    """A batch without audio still runs the audio tower (ZeRO-3), and scores do not change."""
    module, model, processor = kit
    inputs = build(kit, [make_sample(0, audio=False), make_sample(1, frames=6, audio=False)])
    comps = greedy(kit, inputs, n=4)
    synced = get_module(module.family)
    monkeypatch.setattr(synced, "must_sync_towers", lambda model: True)  # as under ZeRO-3 over several ranks
    with torch.no_grad():
        lp, _ = log_probs(module, model, inputs, comps.completion_ids, comps.completion_mask)
        lp_sync, _ = log_probs(synced, model, inputs, comps.completion_ids, comps.completion_mask)
        inputs.encoded = synced.encode_media(model, inputs)
        comps_sync = generate(synced, model, processor, inputs, num_generations=1, max_new_tokens=4, do_sample=False)
    assert inputs.encoded.dummy is not None
    assert torch.equal(lp, lp_sync)
    assert torch.equal(comps_sync.completion_ids, comps.completion_ids)


def test_completions_stop_at_im_end_and_track_truncation():
    from omni_grpo.models.sampling import finish_completions

    ids = torch.tensor([[5, 6, 9, 7], [5, 6, 7, 8]])
    c = finish_completions(ids, stop_ids=[9], pad_id=0)
    assert c.completion_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert c.completion_ids.tolist() == [[5, 6, 9, 0], [5, 6, 7, 8]]
    assert c.truncated.tolist() == [False, True]


def test_lora_with_gradient_checkpointing_gets_gradients(tiny, samples):
    """Frozen embeddings + checkpointing must still give LoRA adapters non-zero gradients."""
    from peft import LoraConfig, get_peft_model

    module, model, processor = tiny
    inputs = build(tiny, samples)
    comps = greedy(tiny, inputs, n=4)
    base = copy.deepcopy(model)
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    base.train()
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)")
    )
    lp, _ = log_probs(module, peft_model, inputs, comps.completion_ids, comps.completion_mask)
    lp.sum().backward()
    lora = [(n, p) for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora
    # lora_B starts at zero, so its gradient is the informative one
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in lora)


FULL_OMNI = {
    "qwen2_5_omni": ("qwen2_5_omni", "Qwen2_5OmniForConditionalGeneration"),
    "qwen3_omni": ("qwen3_omni_moe", "Qwen3OmniMoeForConditionalGeneration"),
}  # model_type, class


def test_full_omni_checkpoint_loads_its_thinker(kit, tmp_path, request):
    """model_name_or_path may be a full Omni directory (thinker weights under `thinker.`, plus a talker)."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    module, model, processor = kit
    full = tmp_path / "full"
    shutil.copytree(request.getfixturevalue(KITS[module.family][1]), full)
    cfg = json.loads((full / "config.json").read_text())
    thinker_cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")}
    model_type, arch = FULL_OMNI[module.family]
    (full / "config.json").write_text(
        json.dumps(
            {
                "model_type": model_type,
                "architectures": [arch],
                "thinker_config": thinker_cfg,
                "enable_audio_output": False,
            }
        )
    )
    weights = load_file(str(full / "model.safetensors"))
    weights = {f"thinker.{k}": v for k, v in weights.items()}
    weights["talker.codec_head.weight"] = torch.zeros(2, 2)
    save_file(weights, str(full / "model.safetensors"), metadata={"format": "pt"})
    assert detect_family(full) == module.family
    loaded = module.load_model(full)
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_prompt_longer_than_limit_is_refused_with_a_clear_message(kit, samples):
    from omni_grpo.models.base import PromptTooLongError

    module, _, processor = kit
    with pytest.raises(PromptTooLongError, match="max_prompt_length=10"):
        module.build_inputs(processor, samples, SYS, True, max_prompt_length=10)


def test_sample_without_audio_in_an_audio_batch(kit):
    """A clip with no audio track mixes with clips that have one (plain video tokens and flag-off positions for
    that row); we still score what generate sampled for each row."""
    module, model, processor = kit
    mixed = [make_sample(0), make_sample(1, audio=False)]
    inputs = build(kit, mixed)
    assert inputs.audio_rows == [0] and inputs.audio_in_video == [True, False]
    comps = greedy(kit, inputs, g=2, n=4)
    with torch.no_grad():
        lp, _ = log_probs(module, model, inputs.repeat(2), comps.completion_ids, comps.completion_mask)
    assert torch.isfinite(lp).all()
    for row in range(2):
        alone = inputs.select([row])
        out = hf_generate(kit, alone, n=4, output_logits=True, return_dict_in_generate=True)
        comp = out.sequences[:, alone.input_ids.shape[1] :]
        expected = torch.log_softmax(torch.stack(out.logits, 1).float(), -1).gather(-1, comp.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            lp_hf, _ = log_probs(module, model, alone, comp, torch.ones_like(comp))
        assert torch.allclose(lp_hf, expected, atol=1e-5)


@pytest.mark.parametrize("weight_trains", [False, True])
def test_sliced_head_log_probs_and_gradients_match_autograd(monkeypatch, weight_trains):
    """The vocabulary-sliced log-probs (online log-sum-exp over slices of 4 tokens, blocks of 3 positions) and
    their analytic backward equal autograd through one plain log_softmax: log-probs, entropy, and the
    gradients of the hidden states and, when it trains, of the weight."""

    monkeypatch.setattr(head_logprobs, "VOCAB_SLICE", 4)
    monkeypatch.setattr(head_logprobs, "POSITION_BLOCK", 3)
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 8, dtype=torch.float64, requires_grad=weight_trains)
    targets = torch.randint(0, 11, (2, 5))
    g_lp, g_ent = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    lp, ent = head_logprobs.head_log_probs(hidden, weight, targets, 0.7, None, entropy_grad=True)
    (lp * g_lp + ent * g_ent).sum().backward()
    ours = hidden.grad.clone()
    ours_w = weight.grad.clone() if weight_trains else None
    hidden.grad, weight.grad = None, None
    logits = (hidden @ weight.t()) / 0.7
    ref_lp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    p = torch.softmax(logits, -1)
    ref_ent = -(p * torch.log_softmax(logits, -1)).sum(-1)
    (ref_lp * g_lp + ref_ent * g_ent).sum().backward()
    assert torch.allclose(lp, ref_lp) and torch.allclose(ent, ref_ent)
    assert torch.allclose(ours, hidden.grad, atol=1e-10)
    if weight_trains:
        assert torch.allclose(ours_w, weight.grad, atol=1e-10)


def test_sliced_head_weight_gradient_of_no_positions_is_zero():
    """The weight's gradient is written by the first block of positions rather than zeroed first: with no
    positions at all it must still be zero, not an uninitialised buffer."""
    weight = torch.full((11, 8), float("nan")).requires_grad_()  # a reused NaN page would show through
    hidden = torch.randn(0, 8, requires_grad=True)
    lp, _ = head_logprobs.head_log_probs(hidden, weight, torch.zeros(0, dtype=torch.long))
    lp.sum().backward()
    assert torch.equal(weight.grad, torch.zeros(11, 8))


def test_audio_features_padded_to_the_clip_equal_the_300_s_features(tiny, samples, monkeypatch):
    """build_inputs pads Whisper features to the longest clip, not to 300 s: every kept frame must equal
    the processor's default (300 s) features — including a silent clip and one that ends loud (Whisper's
    log-mel clamp uses the maximum over the padded window)."""
    _, _, processor = tiny
    loud_end = make_sample(2, seconds=1.5)
    loud_end["audio"][-800:] = 0.9
    silent = make_sample(3, seconds=0.7)
    silent["audio"][:] = 0.0
    batch = [*samples, loud_end, silent]
    fe = processor.feature_extractor
    asked, extract = [], type(fe).__call__
    monkeypatch.setattr(
        type(fe), "__call__", lambda self, *a, **k: (asked.append(k.get("max_length")), extract(self, *a, **k))[1]
    )
    inputs = build(tiny, batch)
    monkeypatch.undo()
    assert asked and all(n is not None and n < 16000 * 4 for n in asked)  # extraction covers ~the clip, not 300 s
    full = fe(
        [s["audio"] for s in batch],
        sampling_rate=16000,
        padding="max_length",
        return_attention_mask=True,
        return_tensors="pt",
    )
    assert full["input_features"].shape[-1] == fe.n_samples // fe.hop_length == 30000  # the default: 300 s
    used = inputs.input_features.shape[-1]
    assert used == int(full["attention_mask"].sum(-1).max()) < 1000
    assert torch.equal(inputs.feature_attention_mask, full["attention_mask"][:, :used])
    keep = inputs.feature_attention_mask.bool()
    assert torch.equal(
        inputs.input_features.transpose(1, 2)[keep], full["input_features"][:, :, :used].transpose(1, 2)[keep]
    )


def test_generate_prefills_each_prompt_once_and_projects_one_position_per_row(tiny, samples):
    """The rollout's cost: the prompt runs through the language model once per prompt (B rows, not B*G), each
    step after it one token per row, and the vocabulary projection sees one position per row (the thinkers'
    forward has no `logits_to_keep`; Hugging Face's generate would project [B*G, P, V] in the prefill). The
    tokens themselves equal plain `model.generate` (test_greedy_rollout_equals_plain_generate...)."""
    from omni_grpo.models.base import _getattr_path

    module, model, _ = tiny
    inputs = build(tiny, samples)
    b, p = inputs.input_ids.shape
    g, n = 3, 4
    layer_in, head_out = [], []
    hooks = [
        _getattr_path(model, module.language_model)
        .layers[0]
        .mlp.register_forward_pre_hook(lambda m, args: layer_in.append(tuple(args[0].shape[:2]))),
        model.lm_head.register_forward_hook(lambda m, args, out: head_out.append(tuple(out.shape[:-1]))),
    ]
    try:
        comps = greedy(tiny, inputs, g=g, n=n)
    finally:
        for h in hooks:
            h.remove()
    steps = comps.completion_ids.shape[1]
    assert layer_in == [(b, p)] + [(b * g, 1)] * (steps - 1)
    assert head_out == [(b * g,)] * steps


def test_sampling_options_follow_hugging_face(tiny, samples, monkeypatch):
    """Our token loop against the thinker's own `generate`: the repetition penalty gives the same greedy tokens,
    top-k = 1 sampling is greedy, and `min_new_tokens` bans the stop tokens until then."""
    module, model, processor = tiny
    inputs = build(tiny, samples)
    with torch.no_grad():
        ours = generate(module, model, processor, inputs, 1, 6, do_sample=False, repetition_penalty=1.3)
        theirs = hf_greedy(tiny, inputs, 6, repetition_penalty=1.3)
        assert torch.equal(ours.completion_ids[:, : theirs.shape[1]], theirs)
        assert not torch.equal(ours.completion_ids, greedy(tiny, inputs, n=6).completion_ids)  # the penalty acted
        torch.manual_seed(0)
        top1 = generate(module, model, processor, inputs, 2, 6, do_sample=True, temperature=1.5, top_k=1, top_p=0.9)
        assert torch.equal(top1.completion_ids, greedy(tiny, inputs, g=2, n=6).completion_ids)
        from omni_grpo.models import sampling

        monkeypatch.setattr(
            sampling, "sampling_processors", functools.partial(sampling.sampling_processors, min_new_tokens=5)
        )  # as the benchmarks
        forced = generate(module, model, processor, inputs, 2, 5, do_sample=True, temperature=3.0)
    assert forced.completion_ids.shape[1] == 5 and bool(forced.completion_mask.all())


def test_no_module_outside_models_imports_a_family():
    """The family modules are reached through `get_module` only: the package outside `models/`, preprocess and
    the benchmarks import the family-neutral `models.base` (PromptTooLongError, format_question, ...)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    family = re.compile(r"^\s*(from|import)\s+omni_grpo\.models\.(qwen\w+)", re.M)
    files = [
        p
        for d in ("omni_grpo", "preprocess", "bench")
        for p in (root / d).rglob("*.py")
        if "models" not in p.relative_to(root).parts
    ]
    assert files
    assert [str(p.relative_to(root)) for p in files if family.search(p.read_text())] == []
