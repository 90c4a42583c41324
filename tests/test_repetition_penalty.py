"""The repetition penalty reads each row's own tokens, never the left padding of a batch: a sample generates the same
alone and in a batch with a longer prompt. The pad token is `<|endoftext|>`, a stop token; penalising it in the
padded rows only made one sample stop alone and run on in a batch."""

import torch

from omni_grpo.models import generate
from tests.conftest import make_sample

SYS = "You are a helpful assistant."


def test_a_sample_generates_the_same_alone_and_in_a_padded_batch(tiny):
    module, model, processor = tiny
    short, long = make_sample(0), make_sample(3, frames=6, height=84, width=56, seconds=3.0)
    pad = module.pad_token_id(processor.tokenizer)

    def pad_just_ahead(_, __, logits):  # the pad token leads by a little: a penalty on it changes the pick
        return logits.index_fill(-1, torch.tensor([pad]), 0).index_put(
            (torch.arange(logits.shape[0]), torch.full((logits.shape[0],), pad)), logits.max(-1).values + 0.05
        )

    hook = model.lm_head.register_forward_hook(pad_just_ahead)
    try:
        with torch.no_grad():
            batch = module.build_inputs(processor, [short, long], SYS, True)
            assert not batch.attention_mask[0].all()  # the short prompt is left-padded in the batch
            alone = generate(
                module,
                model,
                processor,
                module.build_inputs(processor, [short], SYS, True),
                1,
                6,
                do_sample=False,
                repetition_penalty=1.3,
            )
            batched = generate(module, model, processor, batch, 1, 6, do_sample=False, repetition_penalty=1.3)
    finally:
        hook.remove()
    assert alone.completion_ids[0, 0].item() == pad  # alone it stops at once
    n = alone.completion_ids.shape[1]
    assert torch.equal(batched.completion_ids[0, :n], alone.completion_ids[0])
    assert torch.equal(batched.completion_mask[0, :n], alone.completion_mask[0])


def test_the_token_loop_raises_no_deprecation_warning(tiny):
    """transformers deprecates `past_key_values=` for `cache=`; the warning leaked into evaluate's output."""
    import warnings

    module, model, processor = tiny
    inputs = module.build_inputs(processor, [make_sample(0)], SYS, True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error", FutureWarning)
        generate(module, model, processor, inputs, 2, 3, do_sample=False)
