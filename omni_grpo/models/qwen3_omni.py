"""Qwen3-Omni-MoE thinker (30B-A3B): prompts, processor call, tower encoding, embedding splice, deepstack.

Same interface and the same one user flag as Qwen2.5-Omni (:mod:`omni_grpo.models.qwen2_5_omni`, whose
:func:`processor_audio_kwargs` translates ``use_audio_in_video`` for both families). What differs:

* Tokens: ``<|video_pad|>``/``<|audio_pad|>``/``<|image_pad|>`` placeholders between ``<|vision_start|>``/
  ``<|vision_end|>`` and ``<|audio_start|>``/``<|audio_end|>``. With the flag on, the processor turns a video
  into ``<|vision_start|><|audio_start|> … <|audio_end|><|vision_end|>`` with video and audio pads interleaved
  at 13 position ids per second (the thinker's ``position_id_per_seconds``).
* Vision: 16-pixel patches merged 2×2, so frame sides must be multiples of 32. Shards preprocessed on the
  28-pixel grid of qwen-omni-utils are snapped to the nearest multiple of 32 in the processor call, as the
  released processor resizes them too; unlike the released processor, frames are never enlarged to its
  128-tokens-per-frame minimum, so the preprocess budget (``--max-pixels``) still sets the prompt length.
* Deepstack: the vision tower also returns features from intermediate blocks, which the language model adds
  to the hidden states of the video positions after its first decoder layers. They are part of the video's
  encoding: :meth:`Qwen3OmniModule.encode_media` keeps them (``EncodedMedia.video_deepstack``), every
  log-prob pass and the token loop hand them to the language model exactly as the Hugging Face forward does
  (`language_model_inputs`, cut to the prompt by `prompt_kwargs`).
* Language model: a sparse mixture of experts. The router's load-balancing loss is not part of the GRPO loss.
"""

from __future__ import annotations

import torch

from omni_grpo.models.base import base_thinker
from omni_grpo.models.inputs import EncodedMedia, ModelInputs
from omni_grpo.models.qwen2_5_omni import Qwen25OmniModule, audio_dummy_pass, video_dummy_inputs

__all__ = ["Qwen3OmniModule", "FRAME_FACTOR"]

FRAME_FACTOR = 32  # patch 16 × spatial merge 2: frame sides the vision tower takes
MAX_TOKENS_PER_FRAME = 768  # the released processor's per-frame cap, in merged vision tokens


class Qwen3OmniModule(Qwen25OmniModule):
    family = "qwen3_omni"
    media_token_names = (
        "<|video_pad|>",
        "<|audio_pad|>",
        "<|image_pad|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|audio_start|>",
        "<|audio_end|>",
        "<|vision_pad|>",
    )

    # --- loading and prompts: Qwen2.5-Omni's, with this family's thinker class and frame grid ---------
    def thinker_class(self):
        from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

        return Qwen3OmniMoeThinkerForConditionalGeneration

    def video_processor_kwargs(self, fps: float) -> dict:
        """Snap frames to this family's 32-pixel grid (shards hold Qwen2.5's 28-pixel sizes)."""
        grid = {"shortest_edge": FRAME_FACTOR**2, "longest_edge": MAX_TOKENS_PER_FRAME * FRAME_FACTOR**2}
        return {"fps": fps, "do_resize": True, "size": grid, "cap_pixels_per_frame": True}

    # --- towers ----------------------------------------------------------------------------------
    def encode_media(self, model, inputs: ModelInputs) -> EncodedMedia:
        """Run the vision and audio towers over the batch's media; one tensor per video / audio.

        Each video also keeps its deepstack features (`video_deepstack[k]`: [levels, n_tokens_k, H]). With
        `must_sync_towers` (ZeRO-3, several ranks) a batch without a modality runs a dummy pass through that
        tower (so no rank waits in its parameter gather), carried as a scalar 0 in `EncodedMedia.dummy` that `embed` adds.
        """
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

        inner = base_thinker(model).model
        video, deepstack, audio, dummies = [], [], [], []
        param = next(inner.visual.parameters())
        sync = self.must_sync_towers(inner)
        if inputs.pixel_values_videos is not None and len(inputs.video_rows):
            out = inner.get_video_features(inputs.pixel_values_videos, inputs.video_grid_thw, return_dict=True)
            video = list(out.pooler_output)
            deepstack = [torch.stack([level[k] for level in out.deepstack_features]) for k in range(len(video))]
            inputs.tower_calls.vision += len(video)
        elif sync:
            out = inner.get_video_features(*video_dummy_inputs(inner, param), return_dict=True)
            dummies.append(sum(t.sum() for t in out.pooler_output)
                           + sum(t.sum() for level in out.deepstack_features for t in level))
        if inputs.input_features is not None and len(inputs.audio_rows):
            fam = inputs.feature_attention_mask
            out = inner.get_audio_features(inputs.input_features, fam, return_dict=True)
            lengths = _get_feat_extract_output_lengths(fam.sum(-1), inner.audio_tower.config.n_window)
            audio = list(torch.split(out.last_hidden_state, lengths.tolist()))
            inputs.tower_calls.audio += len(audio)
        elif sync:
            dummies.append(audio_dummy_pass(inner, param))
        dummy = sum(dummies) * 0.0 if dummies else None
        return EncodedMedia(video=video, audio=audio, dummy=dummy, video_deepstack=deepstack)

    def language_model_inputs(self, model, inputs: ModelInputs, ids: torch.Tensor, mask: torch.Tensor) -> dict:
        """Embeddings and positions, plus the deepstack features and the mask of the video positions they
        are added to: the arguments the Hugging Face thinker forward gives its language model."""
        embeds, position_ids, enc = self._embed(model, inputs, ids, mask)
        kwargs = {"inputs_embeds": embeds, "position_ids": position_ids}
        if enc.video:
            kwargs.update(
                visual_pos_masks=ids == base_thinker(model).config.video_token_id,  # [N, L]
                deepstack_visual_embeds=list(torch.cat(enc.video_deepstack, dim=1).to(embeds.dtype)),  # [n, H] each
            )
        return kwargs

    def prompt_kwargs(self, extra: dict, prompt_len: int) -> dict:
        """Deepstack features belong to video positions, which are all in the prompt: the prompt forward takes
        the mask cut to the prompt and every feature."""
        extra = dict(extra)
        masks, embeds = extra.pop("visual_pos_masks", None), extra.pop("deepstack_visual_embeds", None)
        if extra:
            raise NotImplementedError(f"{type(self).__name__} cannot cut {sorted(extra)} to the prompt")
        if masks is None:
            return {}
        if masks[:, prompt_len:].any():
            raise ValueError("a completion contains a video token")
        return {"visual_pos_masks": masks[:, :prompt_len], "deepstack_visual_embeds": embeds}
