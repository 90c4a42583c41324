"""The CPU token loop draws each token's sampling noise while the model runs the previous token: the same
tokens as `torch.multinomial`, and the generator left where it would leave it."""

import pytest
import torch

from omni_grpo.config import DEFAULT_SYSTEM_PROMPT as SYS
from omni_grpo.models import generate, sampling


def _sample(kit, inputs, seed: int):
    module, model, processor = kit
    torch.manual_seed(seed)
    with torch.no_grad():
        comps = generate(module, model, processor, inputs, num_generations=3, max_new_tokens=7, temperature=1.4)
    return comps.completion_ids, torch.get_rng_state()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_drawn_ahead_gives_multinomials_tokens_and_generator_state(kit, samples, monkeypatch, seed):
    module, model, processor = kit
    inputs = module.build_inputs(processor, samples, SYS, True)
    drawn = []
    noise = sampling.exponential_noise
    monkeypatch.setattr(sampling, "exponential_noise", lambda *a: (drawn.append(a), noise(*a))[1])
    ahead = _sample(kit, inputs, seed)
    assert drawn, "the noise was never drawn ahead"
    monkeypatch.setattr(sampling, "draws_ahead", lambda *a: False)  # every token through torch.multinomial
    plain = _sample(kit, inputs, seed)
    assert torch.equal(ahead[0], plain[0])
    assert torch.equal(ahead[1], plain[1])  # no draw for a token that was never sampled
    assert len({tuple(r) for r in ahead[0].tolist()}) > 1


def test_no_noise_drawn_ahead_while_a_module_trains(kit):
    """A module in training mode may draw from the generator in its forward (dropout): the draws would
    interleave, so the loop samples each token with torch.multinomial."""
    _, model, _ = kit
    cpu = torch.device("cpu")
    assert sampling.draws_ahead(model, cpu)
    model.train()
    try:
        assert not sampling.draws_ahead(model, cpu)
    finally:
        model.eval()
    assert not sampling.draws_ahead(model, torch.device("cuda"))


@pytest.mark.parametrize(
    "row, message",
    [
        ([0.5, float("nan"), 0.5], "`inf`, `nan` or element < 0"),
        ([1.1, -0.1, 0.0], "`inf`, `nan` or element < 0"),
        ([0.0, 0.0, 0.0], "sum of probabilities <= 0"),
    ],
)
def test_draw_refuses_what_multinomial_refuses(row, message):
    probs = torch.tensor([[0.2, 0.3, 0.5], row])
    with pytest.raises(RuntimeError, match=message):
        torch.multinomial(probs, 1)
    with pytest.raises(RuntimeError, match=message):
        sampling.draw(probs, torch.ones(2, 3))
