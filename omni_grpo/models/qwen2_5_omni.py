"""Qwen2.5-Omni thinker (3B / 7B): prompts, processor call, tower encoding and embedding splice.

The user-facing flag is ``use_audio_in_video``. transformers 5.23 renamed the processor's switch to
``load_audio_from_video`` (the model forward still calls it ``use_audio_in_video``);
:func:`omni_grpo.models.base.processor_audio_kwargs` is the one place that translates it. With the flag on,
each video's own audio is passed to the processor with ``audio_from_video_indices`` and the processor
interleaves 2-second video and audio chunks inside one ``<|vision_bos|><|audio_bos|> … <|audio_eos|><|vision_eos|>``
block; the forward then needs the same flag for its TMRoPE positions (without it a forward silently scores
other positions). The config sets the flag; a sample may carry its own (`use_audio_in_video` key,
:func:`omni_grpo.models.base.sample_audio_in_video`), kept per row in ``ModelInputs.audio_in_video`` and used
row by row for the positions of every pass. The family-neutral helpers it uses live in `models/base.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from omni_grpo.models.base import (
    OmniModule,
    PromptTooLongError,
    audio_dummy_pass,
    base_thinker,
    check_loading_info,
    format_question,
    merge_processor_outputs,
    processor_audio_kwargs,
    row_audio_in_video,
    sample_modality,
    video_dummy_inputs,
)
from omni_grpo.models.inputs import EncodedMedia, ModelInputs


class Qwen25OmniModule(OmniModule):
    family = "qwen2_5_omni"
    media_token_names = (
        "<|VIDEO|>",
        "<|AUDIO|>",
        "<|IMAGE|>",
        "<|vision_bos|>",
        "<|vision_eos|>",
        "<|audio_bos|>",
        "<|audio_eos|>",
        "<|vision_pad|>",
    )

    # --- loading ---------------------------------------------------------------------------------
    def thinker_class(self):
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration

        return Qwen2_5OmniThinkerForConditionalGeneration

    def load_model(self, path, dtype=torch.float32, attn_implementation: str = "sdpa"):
        """Load the thinker from a thinker-only directory or a full Omni checkpoint (thinker + talker)."""
        cls = self.thinker_class()
        cfg = json.loads((Path(path) / "config.json").read_text())
        kwargs = dict(dtype=dtype, attn_implementation=attn_implementation)
        if "thinker_config" in cfg:  # full Omni checkpoint: weights live under `thinker.`; talker is skipped
            from transformers import AutoConfig

            thinker_config = AutoConfig.from_pretrained(path).thinker_config
            model, info = cls.from_pretrained(
                path, config=thinker_config, key_mapping={r"^thinker\.": ""}, output_loading_info=True, **kwargs
            )
        else:
            model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
        check_loading_info(path, info)
        return model

    # --- prompts ---------------------------------------------------------------------------------
    def build_messages(self, sample: dict, system_prompt: str, use_audio_in_video: bool) -> list[dict]:
        """System turn, then a user turn with the sample's media and its question. A video's audio rides
        inside it when `use_audio_in_video` is on, else follows it as its own audio item; an audio clip alone
        or an image is the turn's one media item; a `text` sample (modality "text") has none."""
        modality = sample_modality(sample)
        name = sample.get("id", modality)
        media = [] if modality == "text" else [{"type": modality, modality: name}]
        if modality == "video" and sample.get("audio") is not None and not use_audio_in_video:
            media.append({"type": "audio", "audio": name})
        return [
            {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
            {"role": "user", "content": [*media, {"type": "text", "text": format_question(sample)}]},
        ]

    def video_processor_kwargs(self, fps: float) -> dict:
        """Frames from the shards are already at the size qwen-omni-utils picks (multiples of 28): keep them."""
        return {"fps": fps, "do_resize": False, "cap_pixels_per_frame": True}

    def image_processor_kwargs(self) -> dict:
        """Images from the shards are already on the 28-pixel grid (preprocess sizes them as qwen-omni-utils'
        `fetch_image`): keep them."""
        return {"do_resize": False}

    def build_inputs(
        self,
        processor,
        samples: list[dict],
        system_prompt: str,
        use_audio_in_video: bool,
        max_prompt_length: int | None = None,
    ) -> ModelInputs:
        """The processor output for a batch of samples, each row exactly what its sample gives alone.

        A sample is a video (``frames``, ``fps``; ``audio`` when it has a sound track), an audio clip alone
        (``modality: audio``) or an image (``image``: ``[H, W, 3]``); see :meth:`build_messages` for its user
        turn. Each sample is one processor call (its own frame rate sets its video's TMRoPE timing and, with
        audio in the video, how its chunks interleave; its own flag, :func:`row_audio_in_video`, how its audio
        enters), merged by :func:`merge_processor_outputs`. The per-row flags are kept in
        `ModelInputs.audio_in_video` when they differ, else the common one in `use_audio_in_video`.
        """
        flags = [row_audio_in_video(s, use_audio_in_video) for s in samples]
        parts, video_rows, audio_rows, image_rows = [], [], [], []
        heard = [np.asarray(s["audio"], dtype=np.float32) if s.get("audio") is not None else None for s in samples]
        audio_kwargs = {}
        if any(a is not None for a in heard):
            # The processor pads Whisper features to 300 s ("max_length" only). Pad to the longest clip plus a few
            # frames instead: the same features for every real frame (the tail is dropped below anyway), and
            # 10-30x less feature extraction for short clips. One length for the whole batch, so that per-sample
            # calls give features of one width.
            fe = processor.feature_extractor
            frames = max(len(a) for a in heard if a is not None) // fe.hop_length + 4
            audio_kwargs = {"max_length": min(frames * fe.hop_length, fe.n_samples)}
        for row, sample in enumerate(samples):
            modality = sample_modality(sample)
            messages = self.build_messages(sample, system_prompt, flags[row])
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            kwargs = dict(
                text=[text],
                padding=True,
                padding_side="left",
                return_tensors="pt",
                **processor_audio_kwargs(flags[row], [0]),
            )
            if modality == "video":
                frames = np.asarray(sample["frames"])
                if frames.ndim != 4 or frames.shape[-1] != 3:
                    raise ValueError(f"sample {sample.get('id')}: frames must be [T, H, W, 3], got {frames.shape}")
                kwargs.update(videos=[frames], videos_kwargs=self.video_processor_kwargs(float(sample["fps"])))
                video_rows.append(row)
            elif modality == "image":
                image = np.asarray(sample["image"])
                if image.ndim != 3 or image.shape[-1] != 3:
                    raise ValueError(f"sample {sample.get('id')}: image must be [H, W, 3], got {image.shape}")
                kwargs.update(images=[image], images_kwargs=self.image_processor_kwargs())
                image_rows.append(row)
            if heard[row] is not None and modality != "image":
                kwargs.update(audio=[heard[row]], audio_kwargs=audio_kwargs)
                audio_rows.append(row)
            elif modality == "audio":
                raise ValueError(f"sample {sample.get('id')}: an audio sample without audio")
            parts.append(processor(**kwargs))
        batch = merge_processor_outputs(parts, processor.tokenizer.pad_token_id)
        uniform = len(set(flags)) == 1
        inputs = ModelInputs(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            use_audio_in_video=flags[0] if uniform else use_audio_in_video,
            audio_in_video=None if uniform else flags,
            pixel_values=batch.get("pixel_values"),
            image_grid_thw=batch.get("image_grid_thw"),
            pixel_values_videos=batch.get("pixel_values_videos"),
            video_grid_thw=batch.get("video_grid_thw"),
            video_second_per_grid=(
                torch.as_tensor(batch["video_second_per_grid"], dtype=torch.float32) if video_rows else None
            ),
            video_rows=video_rows,
            audio_rows=audio_rows,
            image_rows=image_rows,
        )
        if audio_rows:
            fam = batch["feature_attention_mask"]
            used = int(fam.sum(-1).max())  # Whisper pads to 300 s; the tail is masked out, drop it
            inputs.input_features = batch["input_features"][:, :, :used]
            inputs.feature_attention_mask = fam[:, :used]
        if max_prompt_length is not None:
            lengths = inputs.attention_mask.sum(-1).tolist()
            for sample, n in zip(samples, lengths):
                if n > max_prompt_length:
                    raise PromptTooLongError(
                        f"sample {sample.get('id')!r}: prompt is {n} tokens (its media included), over "
                        f"max_prompt_length={max_prompt_length}. Raise max_prompt_length, or preprocess with "
                        "--max-prompt-tokens N (or a lower --fps / --max-pixels / --max-frames)."
                    )
        return inputs

    # --- towers ----------------------------------------------------------------------------------
    def encode_media(self, model, inputs: ModelInputs) -> EncodedMedia:
        """Run the vision and audio towers over the batch's media; one tensor per image / video / audio.

        The vision tower runs once per pass over the batch's images and videos together (images first), and the
        audio tower once over its audios (in a video or alone). When the towers must sync (`must_sync_towers`:
        ZeRO-3, several ranks) every rank calls every tower each pass, so a rank's batch of audio clips and
        another's of videos make the same calls (a skipped tower leaves the other ranks waiting in its parameter
        gather): a batch without images and videos, or without audio, runs a dummy pass through that tower,
        carried as a scalar 0 in `EncodedMedia.dummy` that `embed` adds, so the parameters still gather and
        gradients still sync.
        """
        inner = base_thinker(model).model
        enc, dummies = EncodedMedia(video=[], audio=[]), []
        param = next(inner.visual.parameters())
        sync = self.must_sync_towers(inner)
        pixels = [t for t in (inputs.pixel_values, inputs.pixel_values_videos) if t is not None]
        if pixels:
            grids = [g for g in (inputs.image_grid_thw, inputs.video_grid_thw) if g is not None]
            both = len(pixels) > 1  # a lone tensor goes in as it is (a copy of a 3 s clip's patches is ~17 MB)
            feats, deepstack = self._vision_pass(
                inner, torch.cat(pixels) if both else pixels[0], torch.cat(grids) if both else grids[0]
            )
            n_images = len(inputs.image_rows)
            enc.image, enc.video = feats[:n_images], feats[n_images:]
            if deepstack:
                enc.image_deepstack, enc.video_deepstack = deepstack[:n_images], deepstack[n_images:]
            inputs.tower_calls.vision += len(feats)
        elif sync:
            dummies.append(self._vision_dummy_pass(inner, param))
        if inputs.input_features is not None and len(inputs.audio_rows):
            fam = inputs.feature_attention_mask
            out = inner.get_audio_features(inputs.input_features, fam, return_dict=True)
            enc.audio = list(torch.split(out.last_hidden_state, self._audio_lengths(inner, fam).tolist()))
            inputs.tower_calls.audio += len(enc.audio)
        elif sync:
            dummies.append(audio_dummy_pass(inner, param))
        enc.dummy = sum(dummies) * 0.0 if dummies else None
        return enc

    def _vision_pass(self, inner, pixels: torch.Tensor, grid_thw: torch.Tensor):
        """(one feature tensor per image / video of `grid_thw`, their deepstack features or []) of one call."""
        return list(inner.get_video_features(pixels, grid_thw, return_dict=True).pooler_output), []

    def _vision_dummy_pass(self, inner, param) -> torch.Tensor:
        """The vision tower over one blank frame, summed: the ZeRO-3 sync pass of a batch without images or videos."""
        return inner.get_video_features(*video_dummy_inputs(inner, param), return_dict=True).last_hidden_state.sum()

    def _audio_lengths(self, inner, feature_mask: torch.Tensor) -> torch.Tensor:
        """Audio tokens per clip for these feature masks."""
        return inner.audio_tower._get_feat_extract_output_lengths(feature_mask.sum(-1))[1]

    def embed(self, model, inputs: ModelInputs, ids: torch.Tensor, mask: torch.Tensor):
        """Token embeddings of `ids` with the image / video / audio embeddings spliced in, and TMRoPE positions.

        Uses `inputs.encoded` when present (encode once), else runs the towers now (with gradient if they
        are trainable). Positions come from the thinker's own `get_rope_index` with the batch's flag (row by
        row when the rows' flags differ).
        """
        embeds, position_ids, _ = self._embed(model, inputs, ids, mask)
        return embeds, position_ids

    def _embed(self, model, inputs: ModelInputs, ids: torch.Tensor, mask: torch.Tensor):
        """(embeddings, positions, encoded media) for `ids`."""
        thinker = base_thinker(model)
        cfg = thinker.config
        embeds = thinker.get_input_embeddings()(ids)  # [N, L, H]
        enc = inputs.encoded if inputs.encoded is not None else self.encode_media(thinker, inputs)
        for token_id, feats, name in (
            (cfg.image_token_id, enc.image, "image"),
            (cfg.video_token_id, enc.video, "video"),
            (cfg.audio_token_id, enc.audio, "audio"),
        ):
            slots = ids == token_id
            n_slots = int(slots.sum())
            n_feats = sum(f.shape[0] for f in feats)
            if n_slots != n_feats:
                raise ValueError(
                    f"{name} tokens and {name} features do not match: {n_slots} placeholder tokens, {n_feats} "
                    "feature rows. The inputs were not built by build_inputs, or a completion contains a media token."
                )
            if n_slots:
                values = torch.cat(feats).to(embeds.dtype)
                embeds = embeds.masked_scatter(slots.unsqueeze(-1), values)
        if enc.dummy is not None:
            embeds = embeds + enc.dummy.to(embeds.dtype)
        if inputs.audio_in_video is not None and len(set(inputs.audio_in_video)) > 1:  # each row its own flag
            rows = [
                self._positions(thinker, inputs.select([r]), ids[r : r + 1], mask[r : r + 1])
                for r in range(ids.shape[0])
            ]
            return embeds, torch.cat(rows, dim=-2), enc
        return embeds, self._positions(thinker, inputs, ids, mask), enc

    def _positions(self, thinker, inputs: ModelInputs, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """TMRoPE positions [3, N, L] of `ids` from the thinker's own `get_rope_index`, with the rows' flag."""
        flag = inputs.audio_in_video[0] if inputs.audio_in_video else inputs.use_audio_in_video
        audio_seqlens = inputs.feature_attention_mask.sum(-1) if inputs.feature_attention_mask is not None else None
        position_ids, _ = thinker.model.get_rope_index(
            ids,
            inputs.image_grid_thw,
            inputs.video_grid_thw,
            mask,
            flag,
            audio_seqlens,
            inputs.video_second_per_grid,
        )
        return position_ids
