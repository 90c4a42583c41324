"""The shared-prompt forward: rows that copy one prompt run it once, and nothing changes but the cost.

`forward_hidden(share_prompt=True)` runs each distinct prompt of a micro-batch through the language model
once, keeps every layer's keys/values, and runs the G completions against copies of them. These tests hold
it to the plain path (every row runs prompt + completion) on both families, with and without gradient
checkpointing (whose recompute must not grow the cache), for a whole group and a partial one.
"""

import copy

import pytest
import torch

from omni_grpo.config import DEFAULT_SYSTEM_PROMPT as SYS
from omni_grpo.models import generate, log_probs
from omni_grpo.models.base import _getattr_path
from omni_grpo.models.shared_prompt import forward_hidden


def rollout(kit, samples, g=3):
    module, model, processor = kit
    inputs = module.build_inputs(processor, samples, SYS, True)
    torch.manual_seed(1)
    with torch.no_grad():  # sampled, so the G completions of a prompt differ
        comps = generate(module, model, processor, inputs, num_generations=g, max_new_tokens=6, temperature=2.0)
    return inputs.repeat(g), comps


def run(module, model, inputs, comps, rows, share):
    model.zero_grad(set_to_none=True)
    ids, mask = comps.completion_ids[rows], comps.completion_mask[rows]
    lp, ent = log_probs(module, model, inputs.select(rows), ids, mask, with_entropy=True, share_prompt=share)
    ((lp + 0.1 * ent) * mask).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return lp.detach(), ent.detach(), grads


@pytest.mark.parametrize("checkpointing", [False, True])
def test_shared_prompt_equals_every_row_running_its_prompt(kit, samples, checkpointing):
    module, model, _ = kit
    inputs, comps = rollout(kit, samples)
    assert len({tuple(r) for r in comps.completion_ids[:3].tolist()}) > 1  # the group's rows really differ
    policy = copy.deepcopy(model)
    if checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train(checkpointing)  # transformers checkpoints only in training mode
    rows = [0, 1, 2, 3, 4]  # prompt 0's whole group and two rows of prompt 1's
    lp, ent, grads = run(module, policy, inputs, comps, rows, share=False)
    lp_s, ent_s, grads_s = run(module, policy, inputs, comps, rows, share=True)
    mask = comps.completion_mask[rows].bool()
    torch.testing.assert_close(lp_s[mask], lp[mask], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ent_s[mask], ent[mask], atol=2e-5, rtol=1e-5)
    assert grads.keys() == grads_s.keys() and any("language_model" in n for n in grads)
    scale = max(g.abs().max() for g in grads.values())
    for name, g in grads.items():
        # attention's k_proj bias has a zero true gradient (softmax ignores a shift): compare against the scale
        torch.testing.assert_close(grads_s[name], g, atol=1e-5 * scale, rtol=1e-4, msg=name)


def test_shared_prompt_runs_each_prompt_once(kit, samples):
    """The saving is real: the language model sees U·P + N·C positions instead of N·(P + C)."""
    module, model, _ = kit
    inputs, comps = rollout(kit, samples)
    lm = _getattr_path(model, module.language_model)
    seen = []
    handle = lm.layers[0].mlp.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[:2])))
    try:
        with torch.no_grad():
            for share in (False, True):
                seen.clear()
                forward_hidden(module, model, inputs, comps.completion_ids, comps.completion_mask, share_prompt=share)
                if share:
                    shared = list(seen)
                else:
                    plain = list(seen)
    finally:
        handle.remove()
    n, p, c = inputs.batch_size, inputs.input_ids.shape[1], comps.completion_ids.shape[1]
    assert plain == [(n, p + c)]
    assert shared == [(2, p), (n, c)]


def test_distinct_prompts_follow_repeat_and_select(tiny, samples):
    module, _, processor = tiny
    inputs = module.build_inputs(processor, samples, SYS, True)
    first, inverse = inputs.distinct_prompts()
    assert first == [0, 1] and inverse.tolist() == [0, 1]  # built rows are distinct prompts
    rep = inputs.repeat(3).select([1, 2, 3, 5])  # rows of prompts 0, 0, 1, 1
    first, inverse = rep.distinct_prompts()
    assert first == [0, 2] and inverse.tolist() == [0, 0, 1, 1]
    assert rep.select([3, 0]).distinct_prompts()[1].tolist() == [0, 1]
