"""The model-family interface: what the trainer needs to know about one family, and nothing else.

A family adapter (`OmniModule` subclass) builds `ModelInputs` from samples, runs the towers, embeds and
splices media, and names its towers and special tokens. It is stateless: tower-call counts travel with the
batch (`ModelInputs.tower_calls`), and whether a ZeRO-3 sync pass is needed is read from the model
(`towers_must_sync`). The passes over a batch live beside it: `models/logprobs.py` (log-probs, shared
prompt) and `models/sampling.py` (the token loop); the input container in `models/inputs.py`.
"""

from __future__ import annotations

import torch

from omni_grpo.models.inputs import EncodedMedia, ModelInputs

class OmniModule:
    """What the trainer needs to know about one model family. Subclasses fill in the class attributes.

    The trainer never branches on the family: it calls these methods and the passes in `models/logprobs.py`
    and `models/sampling.py`. An adapter holds no state that changes while training.
    """

    family: str = ""
    vision_tower: str = "model.visual"  # dotted path from the thinker
    audio_tower: str = "model.audio_tower"
    language_model: str = "model.language_model"
    media_token_names: tuple[str, ...] = ()  # tokens that must never be generated
    stop_token_names: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")

    def __init__(self, sync_towers: bool | None = None):
        # Under ZeRO-3 with several ranks every rank must run every tower each pass: a tower one rank skips
        # leaves the others waiting in its parameter all-gather. None: read from the model (`towers_must_sync`);
        # True / False force it (tests).
        self.sync_towers = sync_towers

    def must_sync_towers(self, model) -> bool:
        """Whether a batch without a modality still runs that tower (ZeRO-3 over several ranks)."""
        return towers_must_sync(model) if self.sync_towers is None else self.sync_towers

    # --- loading ---------------------------------------------------------------------------------
    def load_model(self, path, dtype=torch.float32, attn_implementation: str = "sdpa"):
        raise NotImplementedError

    def load_processor(self, path):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path)

    # --- prompts ---------------------------------------------------------------------------------
    def build_messages(self, sample: dict, system_prompt: str, use_audio_in_video: bool) -> list[dict]:
        raise NotImplementedError

    def build_inputs(self, processor, samples: list[dict], system_prompt: str, use_audio_in_video: bool,
                     max_prompt_length: int | None = None) -> ModelInputs:
        raise NotImplementedError

    # --- tokens ----------------------------------------------------------------------------------
    def banned_token_ids(self, tokenizer) -> list[int]:
        return [tokenizer.convert_tokens_to_ids(t) for t in self.media_token_names]

    def stop_token_ids(self, tokenizer) -> list[int]:
        return [tokenizer.convert_tokens_to_ids(t) for t in self.stop_token_names]

    def pad_token_id(self, tokenizer) -> int:
        return tokenizer.pad_token_id

    # --- towers ----------------------------------------------------------------------------------
    def tower_modules(self, model) -> dict[str, torch.nn.Module]:
        return {"vision": _getattr_path(model, self.vision_tower), "audio": _getattr_path(model, self.audio_tower)}

    def encode_media(self, model, inputs: ModelInputs) -> EncodedMedia:
        raise NotImplementedError

    def embed(self, model, inputs: ModelInputs, ids: torch.Tensor, mask: torch.Tensor):
        """(inputs_embeds [N, L, H], position_ids) for `ids` = the prompt rows of `inputs` (+ completions)."""
        raise NotImplementedError

    def language_model_inputs(self, model, inputs: ModelInputs, ids: torch.Tensor, mask: torch.Tensor) -> dict:
        """Keyword arguments of the language-model call over `ids`, besides the attention mask.

        Embeddings and positions from :meth:`embed`; a family whose language model takes more (Qwen3-Omni's
        deepstack visual features) overrides this.
        """
        embeds, position_ids = self.embed(model, inputs, ids, mask)
        return {"inputs_embeds": embeds, "position_ids": position_ids}

    def prompt_kwargs(self, extra: dict, prompt_len: int) -> dict:
        """The language-model keyword arguments beyond embeddings and positions (`extra`, from
        :meth:`language_model_inputs` over prompt + completion slots), cut to the prompt positions for a
        forward over the prompt alone. Families whose language model takes more override this."""
        if extra:
            raise NotImplementedError(f"{type(self).__name__} cannot cut {sorted(extra)} to the prompt")
        return {}


def _getattr_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def unwrap(model):
    """The Hugging Face model inside a DeepSpeed engine / DDP / peft wrapper (peft kept: it owns forward)."""
    while hasattr(model, "module") and not hasattr(model, "get_base_model"):
        model = model.module
    return model


def base_thinker(model):
    """The thinker under any wrapper, peft included (for its submodules: towers, language model, lm_head)."""
    model = unwrap(model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model




def towers_must_sync(model) -> bool:
    """True when `model`'s weights are ZeRO-3 partitioned over several ranks: then every rank must call every
    tower in every pass, or the ranks that skip one leave the others waiting in its parameter gather."""
    param = next(iter(model.parameters()), None)
    if param is None or not hasattr(param, "ds_id"):
        return False
    import torch.distributed as dist

    return dist.is_initialized() and dist.get_world_size() > 1
