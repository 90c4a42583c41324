"""Work saved in the update changes nothing but the cost: each saving is held to the path without it.

- Entropy: without an entropy term, `log_probs(entropy_stride=k)` computes the entropy metric at every
  k-th completion position only; those values equal the full computation's, and the log-probs and their
  gradients are bit-identical to a pass that computes the entropy everywhere. With stride 1 (entropy_coef ≠ 0)
  the entropy is everywhere and carries gradient.
- Vocabulary slices: `log_probs` through `HeadLogProbs` (the default) gives the log-probs, entropies and every
  parameter's gradient of the checkpointed `lm_head` module (`sliced=False`) to float rounding, and no
  operation in its forward or backward makes a tensor of the [N, C, V] logits' size (the module path does).
- Prompt once per group: the update runs each prompt once for its G rows and embeds all their completions
  once (leaves over the micro-batches, one backward folded into the last); every gradient is the
  per-micro-batch path's, and the embedding table's gradient is made twice per step instead of per micro-batch.
"""

import copy

import pytest
import torch

from omni_grpo.config import DEFAULT_SYSTEM_PROMPT as SYS
from omni_grpo.models import generate, log_probs
from omni_grpo.models.base import base_thinker


@pytest.fixture(autouse=True)
def _head_chunks(monkeypatch):
    """The unsliced head path in chunks of 4 positions, so that the tiny completions span several."""
    from omni_grpo.models import head_logprobs

    monkeypatch.setattr(head_logprobs, "HEAD_CHUNK", 4)


def _rollout(kit, samples, g=3, new_tokens=7):
    module, model, processor = kit
    inputs = module.build_inputs(processor, samples, SYS, True)
    torch.manual_seed(1)
    with torch.no_grad():
        comps = generate(
            module, model, processor, inputs, num_generations=g, max_new_tokens=new_tokens, temperature=2.0
        )
    return inputs.repeat(g), comps


def _pass(module, model, inputs, comps, **kw):
    model.zero_grad(set_to_none=True)
    lp, ent = log_probs(
        module, model, inputs, comps.completion_ids, comps.completion_mask, with_entropy=True, temperature=1.3, **kw
    )
    (lp * comps.completion_mask).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return lp.detach(), ent, grads


def _policy_and_rollout(kit, samples, head: str):
    """(module, a copy of the kit's model with its lm_head trainable or frozen, rows, their completions)."""
    module, model, _ = kit
    inputs, comps = _rollout(kit, samples)
    policy = copy.deepcopy(model)
    if head == "frozen":
        for p in base_thinker(policy).lm_head.parameters():
            p.requires_grad_(False)
    return module, policy, inputs, comps


@pytest.mark.parametrize("head", ["trainable", "frozen"])
def test_entropy_subsample_is_exact_and_leaves_the_gradient_alone(kit, samples, head):
    module, policy, inputs, comps = _policy_and_rollout(kit, samples, head)
    lp, ent, grads = _pass(module, policy, inputs, comps, entropy_stride=1)
    lp_k, ent_k, grads_k = _pass(module, policy, inputs, comps, entropy_stride=3)
    c = comps.completion_ids.shape[1]
    assert ent.shape[1] == c and ent.requires_grad  # the bonus gets every position, differentiable
    assert ent_k.shape[1] == -(-c // 3) and not ent_k.requires_grad  # the metric: positions 0, 3, 6, ...
    torch.testing.assert_close(ent_k, ent.detach()[:, ::3], atol=0, rtol=0)
    torch.testing.assert_close(lp_k, lp, atol=0, rtol=0)
    assert grads.keys() == grads_k.keys() and grads
    for name, g in grads.items():
        torch.testing.assert_close(grads_k[name], g, atol=0, rtol=0, msg=name)


def test_entropy_subsample_without_gradient(kit, samples):
    module, model, _ = kit
    inputs, comps = _rollout(kit, samples)
    with torch.no_grad():
        args = (module, model, inputs, comps.completion_ids, comps.completion_mask)
        _, ent = log_probs(*args, with_entropy=True)
        _, ent_k = log_probs(*args, with_entropy=True, entropy_stride=3)
    torch.testing.assert_close(ent_k, ent[:, ::3], atol=0, rtol=0)
    with pytest.raises(ValueError, match="entropy_stride"):
        log_probs(*args, with_entropy=True, entropy_stride=0)


def test_skipping_zero_advantage_rows_keeps_every_gradient(tiny_model_dir, tiny_shards, tmp_path):
    """β = 0, no entropy bonus: a group whose advantages are all 0 is left out of the update, and every
    trainable parameter's gradient is the one of the full update (global normalisers count all rows)."""
    from omni_grpo.trainer import GRPOTrainer
    from tests.helpers import TINY_RUN, tiny_config

    cfg = tiny_config(
        tiny_model_dir,
        tiny_shards,
        tmp_path,
        dict(
            TINY_RUN,
            per_device_prompts=2,
            num_generations=3,
            micro_batch_size=2,
            max_completion_length=8,
            save_steps=0,
            beta=0.0,
            reward_funcs=["format"],
        ),
    )
    trainer = GRPOTrainer(cfg)
    rollout = trainer.rollout(trainer._next_batch(), 1.0)
    trainer.score(rollout)
    rollout.advantages = torch.tensor([0.0, 0.0, 0.0, 0.7, -1.1, 0.4], device=rollout.advantages.device)
    policy = trainer.policy
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    step, micro = trainer.engine.step, trainer._micro_loss
    runs = {}
    for skip in (False, True):
        policy.load_state_dict(start)
        trainer.cfg.skip_zero_advantage_rows = skip
        seen, grads = [], {}

        def counting(part, *a, _micro=micro, _seen=seen):
            _seen.append(part.num_rows)
            return _micro(part, *a)

        def capture(_grads=grads):
            _grads.update({n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None})
            return step()

        trainer._micro_loss, trainer.engine.step = counting, capture
        metrics = trainer.update([rollout], beta=0.0)
        runs[skip] = (seen, grads, metrics)
    (seen, grads, m), (seen_s, grads_s, m_s) = runs[False], runs[True]
    assert seen == [2, 2, 2] and seen_s == [2, 1, 1]  # the same backward count; a one-row dummy fills in
    assert m["actor/skipped_rows"] == 0 and m_s["actor/skipped_rows"] == 3
    assert grads.keys() == grads_s.keys() and grads
    assert any(g.abs().max() > 0 for g in grads.values())
    for name, g in grads.items():
        torch.testing.assert_close(grads_s[name], g, atol=1e-6, rtol=0, msg=name)
    assert m_s["actor/loss"] * 2 == pytest.approx(m["actor/loss"] * 3, abs=1e-6)  # the same total over micro-batches
    assert not trainer._zero_rows(rollout, beta=0.1).any()  # with β > 0 their KL term trains: they run
    trainer.cfg.entropy_coef = 0.01
    assert not trainer._zero_rows(rollout, beta=0.0).any()  # so does an entropy bonus


@pytest.mark.parametrize("train", ["full", "lora"])
def test_prompt_once_per_group_keeps_every_gradient(tiny_model_dir, tiny_shards, tmp_path, train):
    """update_micro_batch_size < G: each prompt's forward runs once for its group (its keys/values detached
    as leaves over the micro-batches, one prompt backward folded into the last one), with gradient
    checkpointing; every trainable parameter's gradient over one optimizer step's backward calls is the
    per-micro-batch path's, with the same number of backward calls."""
    from omni_grpo import trainer as trainer_module
    from omni_grpo.models.base import _getattr_path
    from omni_grpo.models.shared_prompt import PerBatchPrompt
    from omni_grpo.trainer import GRPOTrainer
    from tests.helpers import TINY_RUN, tiny_config

    lora = {"lora.enabled": True, "lora.r": 4, "lora.alpha": 8} if train == "lora" else {}
    cfg = tiny_config(
        tiny_model_dir,
        tiny_shards,
        tmp_path,
        dict(
            TINY_RUN,
            per_device_prompts=2,
            num_generations=3,
            micro_batch_size=2,
            max_completion_length=8,
            save_steps=0,
            beta=0.0,
            gradient_checkpointing=True,
            reward_funcs=["format"],
        ),
        **lora,
    )
    trainer = GRPOTrainer(cfg)
    rollout = trainer.rollout(trainer._next_batch(), 1.0)
    trainer.score(rollout)
    rollout.advantages = torch.tensor([0.5, -0.2, 0.9, 0.7, -1.1, 0.4], device=rollout.advantages.device)
    policy = trainer.policy
    torch.manual_seed(7)
    for name, p in policy.named_parameters():
        if "lora_B" in name:  # nonzero, so the A matrices and the prompt carry gradient
            p.data.normal_(0, 0.1)
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    lm = _getattr_path(base_thinker(policy), trainer.family.language_model)
    p_len = rollout.inputs.input_ids.shape[1]
    step, backward = trainer.engine.step, trainer.engine.backward
    runs = {}
    for once in (False, True):
        policy.load_state_dict(start)
        grads, calls, prompts = {}, [], []

        def capture(_grads=grads):
            _grads.update({n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None})
            return step()

        def counting(loss, _calls=calls):
            _calls.append(1)
            return backward(loss)

        hook = lm.layers[0].mlp.register_forward_pre_hook(
            lambda m, args, _prompts=prompts: _prompts.append(1) if args[0].shape[1] == p_len else None
        )
        trainer.engine.step, trainer.engine.backward = capture, counting
        try:
            with (
                pytest.MonkeyPatch.context() as mp,
                _CountOps(torch.ops.aten.embedding_dense_backward.default) as table_grads,
            ):
                if not once:  # each micro-batch runs its own prompts
                    mp.setattr(trainer_module, "group_prompt", lambda *a, **k: PerBatchPrompt())
                metrics = trainer.update([rollout], beta=0.0)
        finally:
            hook.remove()
            trainer.engine.step, trainer.engine.backward = step, backward
        runs[once] = grads, len(calls), len(prompts), metrics, table_grads.count
    (grads, calls, prompts, m, tables), (grads_1, calls_1, prompts_1, m_1, tables_1) = runs[False], runs[True]
    assert calls == calls_1 == 3  # the engine's backward count per optimizer step
    assert prompts_1 == 2 < prompts  # forward + checkpoint recompute: once, vs in the micro-batches
    if train == "full":  # the embedding table's [V, H] gradient: once for the prompts, once for the completions
        assert tables_1 == 2 < tables, (tables_1, tables)
    else:
        assert tables_1 == tables == 0  # LoRA: the table is frozen
    assert grads.keys() == grads_1.keys() and any("language_model" in n for n in grads)
    scale = max(g.abs().max() for g in grads.values())
    for name, g in grads.items():
        torch.testing.assert_close(grads_1[name], g, atol=1e-5 * scale, rtol=1e-4, msg=name)
    assert m_1["actor/loss"] == pytest.approx(m["actor/loss"], abs=1e-6)


class _CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the calls of one aten operation while active."""

    def __init__(self, op):
        super().__init__()
        self.op, self.count = op, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is self.op
        return func(*args, **(kwargs or {}))


class _WholeVocabularyRows(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the operation outputs whose last dimension spans the whole vocabulary (logits-like tensors)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.count = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab:
                self.count += 1
        return out


@pytest.mark.parametrize("head", ["trainable", "frozen"])
def test_sliced_head_equals_the_module_path_and_never_holds_the_logits(kit, samples, head, monkeypatch):
    from omni_grpo.models import head_logprobs

    module, policy, inputs, comps = _policy_and_rollout(kit, samples, head)
    vocab = base_thinker(policy).lm_head.weight.shape[0]
    monkeypatch.setattr(head_logprobs, "VOCAB_SLICE", vocab // 4)  # the tiny vocabulary in 4+ slices
    runs = {}
    for sliced in (True, False):
        if head == "frozen" and not sliced:
            continue  # a frozen head under grad is always sliced
        with _WholeVocabularyRows(vocab) as probe:
            runs[sliced] = (*_pass(module, policy, inputs, comps, entropy_stride=1, sliced=sliced), probe.count)
    lp, ent, grads, whole = runs[True]
    assert whole == 0, f"the sliced path made {whole} tensors spanning the whole vocabulary"
    if head == "trainable":
        lp_m, ent_m, grads_m, whole_m = runs[False]
        assert whole_m > 0  # the probe sees the module path's logits
        torch.testing.assert_close(lp, lp_m, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ent, ent_m, atol=1e-5, rtol=1e-5)
        assert grads.keys() == grads_m.keys() and any(n.endswith("lm_head.weight") for n in grads)
        for name, g in grads.items():
            torch.testing.assert_close(g, grads_m[name], atol=1e-5, rtol=1e-4, msg=name)
