"""Qwen3-Omni-MoE thinker (30B-A3B): prompts, processor call, tower encoding, embedding splice, deepstack.

Same interface and the same one user flag as Qwen2.5-Omni (:mod:`omni_grpo.models.qwen2_5_omni`, whose
prompts, processor call and splice it inherits; :func:`omni_grpo.models.base.processor_audio_kwargs`
translates ``use_audio_in_video`` for both families). What differs:

* Tokens: ``<|video_pad|>``/``<|audio_pad|>``/``<|image_pad|>`` placeholders between ``<|vision_start|>``/
  ``<|vision_end|>`` and ``<|audio_start|>``/``<|audio_end|>``. With the flag on, the processor turns a video
  into ``<|vision_start|><|audio_start|> … <|audio_end|><|vision_end|>`` with video and audio pads interleaved
  at 13 position ids per second (the thinker's ``position_id_per_seconds``).
* Vision: 16-pixel patches merged 2×2, so frame sides must be multiples of 32. Shards preprocessed on the
  28-pixel grid of qwen-omni-utils are snapped to the nearest multiple of 32 in the processor call, as the
  released processor resizes them too; unlike the released processor, frames are never enlarged to its
  128-tokens-per-frame minimum, so the preprocess budget (``--max-pixels``) still sets the prompt length.
* Deepstack: the vision tower also returns features from intermediate blocks, which the language model adds
  to the hidden states of the image and video positions after its first decoder layers. They are part of the
  encoding: `encode_media` keeps them (``EncodedMedia.image_deepstack`` / ``video_deepstack``), every
  log-prob pass and the token loop hand them to the language model exactly as the Hugging Face forward does
  (`language_model_inputs`, cut to the prompt by `prompt_kwargs`).
* Language model: a sparse mixture of experts. The router's load-balancing loss is not part of the GRPO loss.
"""

from __future__ import annotations

import torch

from omni_grpo.models.base import base_thinker, video_dummy_inputs
from omni_grpo.models.inputs import ModelInputs
from omni_grpo.models.qwen2_5_omni import Qwen25OmniModule

__all__ = ["Qwen3OmniModule", "FRAME_FACTOR"]

FRAME_FACTOR = 32  # patch 16 × spatial merge 2: frame sides the vision tower takes
MAX_TOKENS_PER_FRAME = 768  # the released processor's per-frame cap, in merged vision tokens
PIXEL_GRID = {"shortest_edge": FRAME_FACTOR**2, "longest_edge": MAX_TOKENS_PER_FRAME * FRAME_FACTOR**2}
IMAGE_MAX_PIXELS = 16384 * 28 * 28  # the released processors' image max_pixels (= qwen-omni-utils' image limit)


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
        return {"fps": fps, "do_resize": True, "size": PIXEL_GRID, "cap_pixels_per_frame": True}

    def image_processor_kwargs(self) -> dict:
        """Snap images to this family's 32-pixel grid (never enlarged to the released minimum; images keep the
        released processor's larger pixel limit)."""
        return {"do_resize": True, "size": {"shortest_edge": FRAME_FACTOR**2, "longest_edge": IMAGE_MAX_PIXELS}}

    # --- towers: Qwen2.5-Omni's encode_media, with deepstack features and this family's audio lengths -------
    def _vision_pass(self, inner, pixels: torch.Tensor, grid_thw: torch.Tensor):
        """Each image / video also keeps its deepstack features (`[levels, n_tokens_k, H]`)."""
        out = inner.get_video_features(pixels, grid_thw, return_dict=True)
        feats = list(out.pooler_output)
        return feats, [torch.stack([level[k] for level in out.deepstack_features]) for k in range(len(feats))]

    def _vision_dummy_pass(self, inner, param) -> torch.Tensor:
        out = inner.get_video_features(*video_dummy_inputs(inner, param), return_dict=True)
        return sum(t.sum() for t in out.pooler_output) + sum(t.sum() for level in out.deepstack_features for t in level)

    def _audio_lengths(self, inner, feature_mask: torch.Tensor) -> torch.Tensor:
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

        return _get_feat_extract_output_lengths(feature_mask.sum(-1), inner.audio_tower.config.n_window)

    def language_model_inputs(self, model, inputs: ModelInputs, ids: torch.Tensor, mask: torch.Tensor) -> dict:
        """Embeddings and positions, plus the deepstack features and the mask of the image and video positions
        they are added to (each level's features in the order of those positions, as the Hugging Face thinker
        forward joins them): the arguments it gives its language model."""
        embeds, position_ids, enc = self._embed(model, inputs, ids, mask)
        kwargs = {"inputs_embeds": embeds, "position_ids": position_ids}
        if not (enc.video or enc.image):
            return kwargs
        cfg = base_thinker(model).config
        image_mask, video_mask = ids == cfg.image_token_id, ids == cfg.video_token_id  # [N, L]
        visual = image_mask | video_mask
        levels = (enc.image_deepstack or enc.video_deepstack)[0].shape[0]
        joint = embeds.new_zeros(levels, int(visual.sum()), embeds.shape[-1])
        for mask_k, feats in ((image_mask, enc.image_deepstack), (video_mask, enc.video_deepstack)):
            if feats:
                joint[:, mask_k[visual]] = torch.cat(feats, dim=1).to(embeds.dtype)
        kwargs.update(visual_pos_masks=visual, deepstack_visual_embeds=list(joint))  # [n, H] per level
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
            raise ValueError("a completion contains an image or video token")
        return {"visual_pos_masks": masks[:, :prompt_len], "deepstack_visual_embeds": embeds}
