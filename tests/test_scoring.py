"""What the trainer scores is what the sampler drew from.

`generate` samples from softmax(suppress_media(logits) / T); every log-prob pass must score the same
distribution: divided by the rollout's temperature, media tokens out of the normaliser. Checked per token
against the sampler's own log-probabilities on both families, both `use_audio_in_video` values and three
temperatures, through every head path (no grad, trainable head, frozen head)."""

import math

import pytest
import torch

from omni_grpo.config import DEFAULT_SYSTEM_PROMPT
from omni_grpo.models import generate, log_probs, sampling
from omni_grpo.models.sampling import sampling_processors
from tests.conftest import make_sample


@pytest.fixture
def audio_and_silent():
    """Like real encodes: effective frame rates of 29.97 and 25 fps sources sampled at 2 fps, odd durations,
    the second clip without a sound track."""
    with_audio = make_sample(0, frames=4, seconds=2.07)
    silent = make_sample(1, frames=6, height=84, width=56, seconds=3.47, audio=False)
    with_audio["fps"], silent["fps"] = 1.93, 1.73
    return [with_audio, silent]


def generate_with_log_probs(*args, **kwargs):
    """`generate`'s completions, and the log-probability of each sampled token under the distribution it was
    drawn from (after every logits processor; [N, C], 0 beyond each row's stop): `sampling_processors` is
    wrapped to keep each step's scores."""
    steps = []
    real = sampling.sampling_processors

    def recording(*a, **k):
        processors = real(*a, **k)

        def call(ids, scores):
            steps.append(processors(ids, scores))
            return steps[-1]

        return call

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sampling, "sampling_processors", recording)
        comps = generate(*args, **kwargs)
    lp = torch.log_softmax(torch.stack(steps, dim=1), dim=-1).gather(-1, comps.completion_ids[..., None]).squeeze(-1)
    return comps, lp.masked_fill(~comps.completion_mask.bool(), 0.0)


def sampled(kit, samples, flag, temperature, g=3, n=8, seed=0):
    """(the rows, their completions, the sampler's log-probability of each completion token)."""
    module, model, processor = kit
    inputs = module.build_inputs(processor, samples, DEFAULT_SYSTEM_PROMPT, flag)
    torch.manual_seed(seed)
    with torch.no_grad():
        comps, sampler_lp = generate_with_log_probs(module, model, processor, inputs, g, n, temperature=temperature)
    return inputs.repeat(g), comps, sampler_lp


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
@pytest.mark.parametrize("flag", [True, False])
def test_sampler_log_prob_of_each_token_equals_the_trainers(kit, audio_and_silent, flag, temperature):
    module, model, processor = kit
    rows, comps, sampler_lp = sampled(kit, audio_and_silent, flag, temperature)
    banned = module.banned_token_ids(processor.tokenizer)
    mask = comps.completion_mask.bool()
    args = (module, model, rows, comps.completion_ids, comps.completion_mask)
    with torch.no_grad():
        lp, ent = log_probs(*args, temperature=temperature, banned_token_ids=banned, with_entropy=True)
    assert mask.sum() > 10
    assert (lp - sampler_lp)[mask].abs().max() < 1e-5
    assert torch.isfinite(ent[mask]).all() and (ent[mask] > 0).all()
    # With gradient, through the trainable-head (checkpointed) and the frozen-head (custom backward) paths.
    head = model.lm_head.weight
    for trainable in (True, False):
        head.requires_grad_(trainable)
        try:
            lp_grad, _ = log_probs(*args, temperature=temperature, banned_token_ids=banned, with_entropy=True)
        finally:
            head.requires_grad_(True)
        assert lp_grad.requires_grad
        assert (lp_grad.detach() - sampler_lp)[mask].abs().max() < 1e-5
    # Each half of the fix is needed: scoring at T = 1, or with the media tokens in the normaliser, differs.
    with torch.no_grad():
        with_media, _ = log_probs(*args, temperature=temperature)
        at_one, _ = log_probs(*args, banned_token_ids=banned)
    assert (with_media - sampler_lp)[mask].abs().max() > 1e-3
    if temperature != 1.0:
        assert (at_one - sampler_lp)[mask].abs().max() > 1e-2


def test_banned_tokens_get_no_gradient_and_the_entropy_is_the_sampled_distributions(tiny, monkeypatch):
    """The sliced head's backward with media tokens removed (two of them in the last slice, one in the first)
    equals autograd through the masked softmax, for the hidden states and the weight; the banned rows of the
    weight get exactly zero gradient."""
    from omni_grpo.models import head_logprobs

    monkeypatch.setattr(head_logprobs, "VOCAB_SLICE", 4)
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    keep = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8])
    targets = keep[torch.randint(0, 8, (2, 5))]
    banned = torch.tensor([9, 10, 0])
    g_lp, g_ent = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    lp, ent = head_logprobs.head_log_probs(hidden, weight, targets, 0.7, banned, entropy_grad=True)
    (lp * g_lp + ent * g_ent).sum().backward()
    ours, ours_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None
    logits = (hidden @ weight[keep].t()) / 0.7  # the 8 tokens that can be sampled
    ref_lp = torch.log_softmax(logits, -1).gather(-1, (targets - 1).unsqueeze(-1)).squeeze(-1)
    ref_ent = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    (ref_lp * g_lp + ref_ent * g_ent).sum().backward()
    assert torch.allclose(lp, ref_lp) and torch.allclose(ent, ref_ent)
    assert torch.allclose(ours, hidden.grad, atol=1e-10)
    assert torch.allclose(ours_w, weight.grad, atol=1e-10)
    assert (ours_w[banned] == 0).all()


def test_min_new_tokens_bans_stop_tokens_before_top_k(tiny):
    """Hugging Face's order: the stop tokens are banned first, then the k most likely of the rest are kept.
    Banned after top-k (the old order), a stop token among the top k left only k − 1 candidates."""
    module, _, processor = tiny
    tok = processor.tokenizer
    stop = module.stop_token_ids(tok)[0]
    vocab = len(tok)
    scores = torch.linspace(0, 1, vocab).repeat(2, 1)
    scores[:, stop] = 10.0  # the most likely token is a stop token
    prompt = torch.zeros(2, 7, dtype=torch.long)
    procs = sampling_processors(module, tok, prompt_length=7, top_k=5, min_new_tokens=3)
    out = procs(prompt, scores.clone())
    assert (out > -math.inf).sum(-1).tolist() == [5, 5]
    assert (out[:, stop] == -math.inf).all()
    after = procs(torch.zeros(2, 10, dtype=torch.long), scores.clone())  # 3 new tokens: stop allowed again
    assert (after[:, stop] > -math.inf).all()
