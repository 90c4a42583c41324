"""The model-family interface, and the family-neutral helpers every family builds on.

A family adapter (`OmniModule` subclass) builds `ModelInputs` from samples, runs the towers, embeds and
splices media, and names its towers and special tokens. It is stateless: tower-call counts travel with the
batch (`ModelInputs.tower_calls`), and whether a ZeRO-3 sync pass is needed is read from the model
(`towers_must_sync`). The helpers below the interface know no family: a sample's question text, modality
and audio flag (`format_question`, `sample_modality`, `row_audio_in_video`), the processor's audio keywords,
merging per-sample processor outputs, the loading check, the towers' ZeRO-3 sync passes, and
`PromptTooLongError` — modules outside `models/` import them from here, never from a family module. The
passes over a batch live beside it: `models/logprobs.py` (log-probs), `models/shared_prompt.py` (the forward
with the prompt shared), `models/head_logprobs.py` (the vocabulary head) and `models/sampling.py` (the token
loop); the input container in `models/inputs.py`.
"""

from __future__ import annotations

import string

import torch

from omni_grpo.engine import partitioned_over_ranks
from omni_grpo.models.inputs import EncodedMedia, ModelInputs


class OmniModule:
    """What the trainer needs to know about one model family. Subclasses fill in the class attributes.

    The trainer never branches on the family: it calls these methods and the passes in `models/logprobs.py`,
    `models/shared_prompt.py` and `models/sampling.py`. An adapter holds no state that changes while training.
    """

    family: str = ""
    vision_tower: str = "model.visual"  # dotted path from the thinker
    audio_tower: str = "model.audio_tower"
    language_model: str = "model.language_model"
    media_token_names: tuple[str, ...] = ()  # tokens that must never be generated
    stop_token_names: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")

    def must_sync_towers(self, model) -> bool:
        """Whether a batch without a modality still runs that tower: under ZeRO-3 with several ranks every rank
        must run every tower each pass, or a tower one rank skips leaves the others waiting in its parameter
        all-gather (`towers_must_sync`)."""
        return towers_must_sync(model)

    # --- loading ---------------------------------------------------------------------------------
    def load_model(self, path, dtype=torch.float32, attn_implementation: str = "sdpa"):
        raise NotImplementedError

    def load_processor(self, path):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path)

    # --- prompts ---------------------------------------------------------------------------------
    def build_messages(self, sample: dict, system_prompt: str, use_audio_in_video: bool) -> list[dict]:
        raise NotImplementedError

    def build_inputs(
        self,
        processor,
        samples: list[dict],
        system_prompt: str,
        use_audio_in_video: bool,
        max_prompt_length: int | None = None,
    ) -> ModelInputs:
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
    return partitioned_over_ranks(model)


# ------------------------------------------------------------------------ family-neutral helpers
class PromptTooLongError(ValueError):
    """A prompt (media tokens included) is longer than `max_prompt_length`."""


def processor_audio_kwargs(use_audio_in_video: bool, audio_from_video_indices: list[int]) -> dict:
    """Translate the one user flag to the processor API of transformers >= 5.23 (the only such place)."""
    if not use_audio_in_video:
        return {"load_audio_from_video": False}
    return {"load_audio_from_video": True, "audio_from_video_indices": audio_from_video_indices}


def check_loading_info(path, info: dict) -> None:
    """Refuse a checkpoint whose weights do not all land in the thinker (transformers would silently
    initialise the rest at random). The talker / token2wav weights of a full Omni checkpoint are expected."""
    missing = list(info.get("missing_keys") or [])
    unexpected = [
        k for k in info.get("unexpected_keys") or [] if not k.startswith(("talker.", "token2wav.", "code2wav."))
    ]
    if missing or unexpected or info.get("mismatched_keys"):
        raise ValueError(
            f"{path}: the weights do not match the thinker (missing {sorted(missing)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}); transformers would initialise them at random. Is this a "
            "checkpoint of the same model family and size?"
        )


def format_question(sample: dict) -> str:
    """The question, then lettered options one per line when the sample has options, then on its own line the
    answer instruction of its problem type: the sample's `instruction` (`data.Collate` sets it from the config's
    `answer_instructions`), else the default of `rewards.instructions`; none when that is empty."""
    from omni_grpo.rewards.instructions import instruction

    text = str(sample["question"]).strip()
    options = sample.get("options") or []
    if options:
        letters = string.ascii_uppercase
        text += "\nOptions:\n" + "\n".join(f"{letters[i]}. {opt}" for i, opt in enumerate(options))
    said = sample["instruction"] if sample.get("instruction") is not None else instruction(sample)
    return f"{text}\n{said}" if said else text


def video_dummy_inputs(inner, param) -> tuple[torch.Tensor, torch.Tensor]:
    """(patches, grid) of one 4×4-patch blank frame: the vision tower's input for the ZeRO-3 sync pass."""
    p = inner.visual.patch_embed
    dim = p.in_channels * p.temporal_patch_size * p.patch_size**2
    return (
        torch.zeros(16, dim, device=param.device, dtype=param.dtype),
        torch.tensor([[1, 4, 4]], device=param.device),
    )


def audio_dummy_pass(inner, param) -> torch.Tensor:
    """The audio tower over 2 s of silence, summed: the pass a rank without audio makes under ZeRO-3
    (every rank must call every tower, or the others wait in its parameter gather)."""
    n_mel = inner.audio_tower.config.num_mel_bins
    feats = torch.zeros(1, n_mel, 200, device=param.device, dtype=param.dtype)
    mask = torch.ones(1, 200, dtype=torch.long, device=param.device)
    return inner.get_audio_features(feats, mask, return_dict=True).last_hidden_state.sum()


def sample_audio_in_video(sample: dict, default: bool) -> bool:
    """A sample's own `use_audio_in_video`: its `use_audio_in_video` field when set, else `default`."""
    own = sample.get("use_audio_in_video")
    return bool(default if own is None else own)


MODALITIES = ("video", "audio", "image", "text")  # text: no media at all (evaluate's --ablate text)


def sample_modality(sample: dict) -> str:
    """`video`, `audio` (an audio clip alone) or `image`: the sample's `modality` field (shards), else what it
    carries (`frames`, then `image`, then a `video` path as in a manifest row, then `audio`)."""
    modality = sample.get("modality")
    if modality is None:
        for key, kind in (("frames", "video"), ("image", "image"), ("video", "video"), ("audio", "audio")):
            if sample.get(key) is not None:
                return kind
    if modality not in MODALITIES:
        raise ValueError(
            f"sample {sample.get('id')!r}: modality {modality!r} is not one of {MODALITIES}; it needs "
            "`frames` (a video), `image` or `audio`"
        )
    return modality


def row_audio_in_video(sample: dict, default: bool) -> bool:
    """Whether the sample's audio rides inside its video (TMRoPE interleave): a video with audio whose own flag
    (:func:`sample_audio_in_video`) is on. A silent video, an audio clip or an image has nothing to interleave,
    and its positions are the flag-off ones whatever the config says (with the flag on, `get_rope_index` would
    place a silent video as text)."""
    return (
        sample_modality(sample) == "video"
        and sample.get("audio") is not None
        and sample_audio_in_video(sample, default)
    )


def merge_processor_outputs(parts: list, pad_token_id: int) -> dict:
    """One batch from per-sample processor outputs, as one left-padded processor call would give it: ids and
    masks left-padded to the longest prompt, images, videos and audio features stacked in row order (audio
    features right-padded to the widest, masked out beyond each clip)."""
    width = max(p["input_ids"].shape[1] for p in parts)

    def left_pad(t, value):
        return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)

    out = {
        "input_ids": torch.cat([left_pad(p["input_ids"], pad_token_id) for p in parts]),
        "attention_mask": torch.cat([left_pad(p["attention_mask"], 0) for p in parts]),
        "video_second_per_grid": [s for p in parts for s in p.get("video_second_per_grid", [])],
    }
    for key in (
        "pixel_values",
        "image_grid_thw",
        "pixel_values_videos",
        "video_grid_thw",
        "input_features",
        "feature_attention_mask",
    ):
        found = [p[key] for p in parts if p.get(key) is not None]
        if key in ("input_features", "feature_attention_mask") and found:  # a processor may pad to its call's longest
            frames = max(t.shape[-1] for t in found)
            found = [torch.nn.functional.pad(t, (0, frames - t.shape[-1])) for t in found]
        if found:
            out[key] = torch.cat(found)
    return out
