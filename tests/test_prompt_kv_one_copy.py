"""One copy of the prompt's keys/values: the completions attend to it, and nothing changes but the memory.

`models/prefix_attention.py` splits each completion query's attention into its prompt part (one copy per
distinct prompt) and its own part and merges them by log-sum-exp. These tests hold it to the per-row copy
(`_PrefixLayer`, forced by `_one_copy(monkeypatch, False)`) and to the plain unshared forward, in
values and every trainable parameter's gradient (LoRA and full, with and without gradient checkpointing,
both families, prompts of different lengths left-padded, ragged completions and groups); generation gives
the same tokens as with copies (and, in test_models, as Hugging Face's `generate`); and no tensor of one row's width
with the prompt's length is ever made (the claim itself: the prompt's keys/values are not copied per row).
"""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from omni_grpo.config import DEFAULT_SYSTEM_PROMPT as SYS
from omni_grpo.models import generate, log_probs, prefix_attention
from omni_grpo.models.base import _getattr_path, base_thinker
from tests.test_perf_exactness import _rollout
from tests.test_scoring import generate_with_log_probs


def _one_copy(monkeypatch, on: bool) -> None:
    """`on` False: the passes attend to per-row copies of the prompt's keys/values (`_PrefixLayer`), as where
    the attention implementation is not wrapped."""
    from omni_grpo.models import sampling, shared_prompt

    ready = prefix_attention.one_copy_ready if on else (lambda config: False)
    for module in (shared_prompt, sampling):
        monkeypatch.setattr(module, "one_copy_ready", ready)


def _ragged(mask: torch.Tensor) -> torch.Tensor:
    """Right-padded completion masks of different lengths (row i keeps at most C - i % 3 tokens)."""
    c = mask.shape[1]
    keep = torch.arange(c).view(1, -1) < (c - torch.arange(mask.shape[0]) % 3).view(-1, 1)
    return mask * keep


def _with_lora(module, model):
    from omni_grpo.checkpoint import add_lora
    from omni_grpo.config.schema import LoraConfig

    lora = add_lora(module, copy.deepcopy(model), LoraConfig(enabled=True, r=4, alpha=8))
    torch.manual_seed(5)
    for name, p in lora.named_parameters():
        if "lora_B" in name:  # nonzero, so the A matrices get a gradient too
            p.data.normal_(0, 0.1)
    return lora


def _pass(module, model, inputs, ids, mask, share, one_copy, monkeypatch):
    _one_copy(monkeypatch, one_copy)
    model.zero_grad(set_to_none=True)
    lp, ent = log_probs(module, model, inputs, ids, mask, with_entropy=True, share_prompt=share)
    ((lp + 0.1 * ent) * mask).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return lp.detach(), grads


@pytest.mark.parametrize("train,checkpointing", [("full", False), ("lora", True)])
def test_one_copy_equals_per_row_copies_and_the_plain_forward(kit, samples, train, checkpointing, monkeypatch):
    module, model, _ = kit
    repeated, comps = _rollout(kit, samples, g=3, new_tokens=6)
    rows = [0, 3, 1, 4, 2]  # prompt 0 three times, prompt 1 twice, interleaved
    inputs = repeated.select(rows)
    assert inputs.attention_mask[:2, 0].tolist().count(0) == 1  # two prompt lengths, left-padded
    ids, mask = comps.completion_ids[rows], _ragged(comps.completion_mask[rows])
    assert len(set(mask.sum(1).tolist())) > 1
    policy = _with_lora(module, model) if train == "lora" else copy.deepcopy(model)
    if checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train(checkpointing)  # transformers checkpoints only in training mode
    one = _pass(module, policy, inputs, ids, mask, True, True, monkeypatch)
    copies = _pass(module, policy, inputs, ids, mask, True, False, monkeypatch)
    plain = _pass(module, policy, inputs, ids, mask, False, True, monkeypatch)
    on = mask.bool()
    lm_params = {n for n, p in policy.named_parameters() if p.requires_grad and "language_model" in n}
    for lp, grads in (copies, plain):
        torch.testing.assert_close(one[0][on], lp[on], atol=2e-5, rtol=1e-5)
        assert one[1].keys() == grads.keys() and lm_params <= grads.keys()
        scale = max(g.abs().max() for g in grads.values())
        for name, g in grads.items():
            # k_proj's bias has a zero true gradient (softmax ignores a shift): compare against the scale
            torch.testing.assert_close(one[1][name], g, atol=1e-5 * scale, rtol=1e-4, msg=name)


def test_generation_with_one_copy_gives_the_same_tokens(kit, samples, monkeypatch):
    module, model, processor = kit
    inputs = module.build_inputs(processor, samples, SYS, True)
    out = {}
    for one_copy in (True, False):
        _one_copy(monkeypatch, one_copy)
        with torch.no_grad():
            greedy = generate(module, model, processor, inputs, num_generations=2, max_new_tokens=6, do_sample=False)
            torch.manual_seed(3)
            sampled = generate_with_log_probs(
                module, model, processor, inputs, num_generations=3, max_new_tokens=6, temperature=1.5
            )
        out[one_copy] = greedy, sampled
    (greedy, (sampled, lp)), (greedy_c, (sampled_c, lp_c)) = out[True], out[False]
    assert torch.equal(greedy.completion_ids, greedy_c.completion_ids)
    assert torch.equal(sampled.completion_ids, sampled_c.completion_ids)
    torch.testing.assert_close(lp, lp_c, atol=1e-5, rtol=1e-5)
    assert len({tuple(r) for r in sampled.completion_ids.tolist()}) > 1


class _RowWideKeys(TorchDispatchMode):
    """Records every tensor made that has `n` rows, the prompt's length (or more) and the head width:
    the shape of a per-row copy of the prompt's keys/values, [n, heads, >= prompt length, head_dim]."""

    def __init__(self, n: int, prompt_len: int, head_dim: int):
        super().__init__()
        self.n, self.prompt_len, self.head_dim, self.seen = n, prompt_len, head_dim, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if (
                isinstance(t, torch.Tensor)
                and t.dim() == 4
                and t.shape[0] == self.n
                and t.shape[2] >= self.prompt_len
                and t.shape[3] == self.head_dim
            ):
                self.seen.append(tuple(t.shape))
        return out


def _head_dim(module, model):
    cfg = _getattr_path(base_thinker(model), module.language_model).config
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


@pytest.mark.parametrize("one_copy", [True, False])
def test_the_prompt_keys_values_are_not_copied_per_row(tiny, samples, one_copy, monkeypatch):
    """Update pass (forward and backward) and generation; with the switch off (copies), the probe fires —
    and the autograd-saved bytes with the prompt's length do not grow with G."""
    module, model, processor = tiny
    _one_copy(monkeypatch, one_copy)
    prompts = module.build_inputs(processor, samples, SYS, True)
    _, comps = _rollout(tiny, samples, g=3, new_tokens=6)
    n, p = comps.completion_ids.shape[0], prompts.input_ids.shape[1]
    probe = _RowWideKeys(n, p, _head_dim(module, model))
    with probe, torch.no_grad():
        generate(module, model, processor, prompts, num_generations=3, max_new_tokens=4, do_sample=False)
    generation = list(probe.seen)
    probe.seen.clear()
    policy = copy.deepcopy(model)
    with probe:
        lp, _ = log_probs(module, policy, prompts.repeat(3), comps.completion_ids, comps.completion_mask)
        (lp * comps.completion_mask).sum().backward()
    update = list(probe.seen)
    saved = {}
    for g in (2, 3):
        storages, rows = {}, [i * 3 + j for i in range(2) for j in range(g)]

        def pack(t, _storages=storages):
            if max(t.shape, default=0) >= p:
                _storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            log_probs(module, policy, prompts.repeat(g), comps.completion_ids[rows], comps.completion_mask[rows])
        saved[g] = sum(storages.values())
    if one_copy:
        assert generation == [] and update == []
        assert saved[3] == saved[2]
    else:
        assert generation and update and saved[3] > saved[2]
