"""The one container that carries a batch's inputs to every pass, and the tower outputs it may carry.

Every pass over a batch — generation, policy log-probs, reference log-probs, old-policy log-probs — takes
the same :class:`ModelInputs`, built once per batch by :meth:`OmniModule.build_inputs`. Nothing downstream
re-derives media tensors or the ``use_audio_in_video`` flag: a forward that omits the flag silently scores
a different sequence (other TMRoPE positions).

A row carries one sample's media in one of five layouts: a video with its audio interleaved
(``use_audio_in_video`` on for the row), a video followed by its audio as a separate item (flag off), a silent
video, an audio clip alone, or an image. Media bookkeeping is per row: ``video_rows[k]`` / ``audio_rows[k]`` /
``image_rows[k]`` say which prompt row the k-th video / audio / image belongs to, and ``select(rows)`` copies
whole per-video and per-image patch blocks, so G copies of a prompt get G identical inputs
(``repeat_interleave`` on flattened patches would scramble them).

Encode once: when the towers are frozen, ``OmniModule.encode_media`` runs the vision and audio towers once
per prompt, and the embeddings travel inside the ``ModelInputs`` (``encoded``) to generation and every
log-prob pass, which then splice them into the token embeddings instead of running the towers again.
``tower_calls`` counts the images, videos and audios the towers encoded for this batch, in every pass: it is shared
by every selection and copy of the batch (``select``, ``repeat``, ``to``), so the count travels with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass
class TowerCounter:
    """Counts tower forward calls (the encode-once saving is visible in `counters/tower_calls`)."""

    vision: int = 0
    audio: int = 0

    @property
    def total(self) -> int:
        return self.vision + self.audio


MEDIA_FIELDS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "video_second_per_grid",
    "input_features",
    "feature_attention_mask",
)


@dataclass
class EncodedMedia:
    """Tower outputs for one batch: one tensor per video / audio / image, in the order of ``ModelInputs``."""

    video: list[torch.Tensor]  # each [n_video_tokens_k, H]
    audio: list[torch.Tensor]  # each [n_audio_tokens_k, H]
    dummy: torch.Tensor | None = None  # scalar 0 carrying a ZeRO-3 sync pass through an unused tower
    # Per video, vision features the language model adds to early layers (Qwen3-Omni's deepstack); else empty.
    video_deepstack: list[torch.Tensor] = field(default_factory=list)  # each [levels, n_video_tokens_k, H]
    image: list[torch.Tensor] = field(default_factory=list)  # each [n_image_tokens_k, H]
    image_deepstack: list[torch.Tensor] = field(default_factory=list)  # each [levels, n_image_tokens_k, H]

    def select(self, video_idx: list[int], audio_idx: list[int], image_idx: list[int]) -> "EncodedMedia":
        def pick(items, idx):
            return [items[i] for i in idx] if items else []

        return EncodedMedia(
            pick(self.video, video_idx),
            pick(self.audio, audio_idx),
            self.dummy,
            pick(self.video_deepstack, video_idx),
            pick(self.image, image_idx),
            pick(self.image_deepstack, image_idx),
        )

    def to(self, move) -> "EncodedMedia":
        """Every tensor through `move`."""
        return EncodedMedia(
            [move(v) for v in self.video],
            [move(a) for a in self.audio],
            move(self.dummy),
            [move(d) for d in self.video_deepstack],
            [move(i) for i in self.image],
            [move(d) for d in self.image_deepstack],
        )


@dataclass
class ModelInputs:
    """Prompt ids, every media tensor, and the ``use_audio_in_video`` value for a batch of prompts: one for the
    batch, or one per row (``audio_in_video``) when a sample overrides the config's (each row's processor call,
    generation and log-prob passes then use the row's own; positions are computed row by row).

    Shapes (B prompt rows, P prompt length, V videos, A audios, I images; a kind absent from the batch is None):
      input_ids, attention_mask: [B, P], left-padded.
      pixel_values_videos: [sum_k T_k*H_k*W_k, C*tp*p*p] patches of video 0, then video 1, ...
      video_grid_thw: [V, 3]; video_second_per_grid: [V]; video_rows: [V] (row of each video).
      pixel_values: [sum_k H_k*W_k, C*tp*p*p] patches of image 0, then image 1, ...; image_grid_thw: [I, 3]
        (T = 1); image_rows: [I].
      input_features: [A, mel, F]; feature_attention_mask: [A, F]; audio_rows: [A] (an audio interleaved in its
        row's video, or standalone: an audio-only sample, or a video's audio with the row's flag off).
      prompt_index: [B] or None: rows with the same value are copies of one prompt (same ids and media), as
        `repeat` and `select` make them; None means every row is its own prompt.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    use_audio_in_video: bool
    audio_in_video: list[bool] | None = None  # [B] per-row flags when samples override it; None: every row the batch's
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    video_second_per_grid: torch.Tensor | None = None
    input_features: torch.Tensor | None = None
    feature_attention_mask: torch.Tensor | None = None
    video_rows: list[int] = field(default_factory=list)
    audio_rows: list[int] = field(default_factory=list)
    image_rows: list[int] = field(default_factory=list)
    encoded: EncodedMedia | None = None
    prompt_index: list[int] | None = None
    tower_calls: TowerCounter = field(default_factory=TowerCounter)  # shared by selections and copies

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    def distinct_prompts(self) -> tuple[list[int], torch.Tensor]:
        """(first row of each distinct prompt, ascending; [B] index of each row's prompt in that list)."""
        index = self.prompt_index if self.prompt_index is not None else list(range(self.batch_size))
        first: dict[int, int] = {}
        for row, p in enumerate(index):
            first.setdefault(p, row)
        position = {p: k for k, p in enumerate(first)}
        inverse = torch.tensor([position[p] for p in index], dtype=torch.long, device=self.input_ids.device)
        return list(first.values()), inverse

    @staticmethod
    def _patch_offsets(grid_thw: torch.Tensor | None) -> list[int]:
        sizes = grid_thw.prod(-1).tolist() if grid_thw is not None else []
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + int(s))
        return offsets

    def select(self, rows: list[int]) -> "ModelInputs":
        """The inputs of `rows` (repeats allowed), media copied per whole video/audio/image in the new row order;
        a media kind none of `rows` has is None.

        Of an encoded batch (`encoded` set) only the tower outputs, grids and masks are selected: the raw
        patches and audio features are left out (None), since no pass reads them again. At a 3 s clip's
        default frames the patches are ~17 MB a row, and copying them for the G rows and every micro-batch
        was a third of a tiny model's step. `media_kwargs` refuses such a selection."""
        rows = list(rows)

        def picked(owners):  # (indices of the items of `rows`, in row order; the new row of each)
            return (
                [k for r in rows for k, o in enumerate(owners) if o == r],
                [i for i, r in enumerate(rows) for o in owners if o == r],
            )

        video_idx, video_rows = picked(self.video_rows)
        audio_idx, audio_rows = picked(self.audio_rows)
        image_idx, image_rows = picked(self.image_rows)
        index = torch.tensor(rows, dtype=torch.long, device=self.input_ids.device)
        new = dataclasses.replace(
            self,
            input_ids=self.input_ids[index],
            attention_mask=self.attention_mask[index],
            video_rows=video_rows,
            audio_rows=audio_rows,
            image_rows=image_rows,
            encoded=self.encoded.select(video_idx, audio_idx, image_idx) if self.encoded is not None else None,
            prompt_index=[self.prompt_index[r] if self.prompt_index is not None else r for r in rows],
            audio_in_video=[self.audio_in_video[r] for r in rows] if self.audio_in_video is not None else None,
            pixel_values_videos=None,
            video_grid_thw=None,
            video_second_per_grid=None,
            pixel_values=None,
            image_grid_thw=None,
            input_features=None,
            feature_attention_mask=None,
        )
        raw = self.encoded is None  # encoded: the tower outputs replace the raw media, which are not copied
        if video_idx:
            if raw:
                new.pixel_values_videos = self._blocks(self.pixel_values_videos, self.video_grid_thw, video_idx)
            new.video_grid_thw = self.video_grid_thw[video_idx]
            new.video_second_per_grid = self.video_second_per_grid[video_idx]
        if image_idx:
            if raw:
                new.pixel_values = self._blocks(self.pixel_values, self.image_grid_thw, image_idx)
            new.image_grid_thw = self.image_grid_thw[image_idx]
        if audio_idx:
            if raw:
                new.input_features = self.input_features[audio_idx]
            new.feature_attention_mask = self.feature_attention_mask[audio_idx]
        return new

    @classmethod
    def _blocks(cls, patches: torch.Tensor, grid_thw: torch.Tensor, idx: list[int]) -> torch.Tensor:
        """The patch blocks of items `idx` (each item's T*H*W rows), concatenated in that order."""
        off = cls._patch_offsets(grid_thw)
        return torch.cat([patches[off[k] : off[k + 1]] for k in idx])

    def repeat(self, g: int) -> "ModelInputs":
        """G consecutive copies of each row: row i*g + j is a copy of row i."""
        return self.select([r for r in range(self.batch_size) for _ in range(g)])

    def to(self, device=None, dtype=None) -> "ModelInputs":
        """Move every tensor; floating media tensors are cast to `dtype` when given."""

        def move(t):
            if t is None:
                return None
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        kw = {name: move(getattr(self, name)) for name in ("input_ids", "attention_mask", *MEDIA_FIELDS)}
        enc = self.encoded.to(move) if self.encoded is not None else None
        return dataclasses.replace(self, encoded=enc, **kw)

    def media_kwargs(self) -> dict:
        """The keyword arguments a Hugging Face thinker forward / generate takes for these media."""
        raw_media = (
            (self.video_rows, self.pixel_values_videos, "videos"),
            (self.image_rows, self.pixel_values, "images"),
            (self.audio_rows, self.input_features, "audios"),
        )
        for rows, raw, name in raw_media:
            if rows and raw is None:
                raise ValueError(
                    f"these inputs have {name} but not their raw media: they are a selection of an "
                    "encoded batch (select() keeps only the tower outputs). Pass the batch as built, "
                    "before encode_media, to a Hugging Face forward or generate."
                )
        kw = {name: getattr(self, name) for name in MEDIA_FIELDS if getattr(self, name) is not None}
        if self.audio_in_video is not None and len(set(self.audio_in_video)) > 1:
            raise ValueError(
                "rows with different use_audio_in_video values: a Hugging Face forward takes one; "
                "use select() to split them"
            )
        kw["use_audio_in_video"] = self.audio_in_video[0] if self.audio_in_video else self.use_audio_in_video
        return kw
