"""The prompt token budget: how many tokens a sample's prompt takes, and the frame plan that fits a budget.

Token counts are the ones the family's processor emits (transformers' ``Qwen2_5OmniProcessor`` /
``Qwen3OmniMoeProcessor``, the chat templates of the released checkpoints; measured equal on the tiny model
kits, see ``tests/test_preprocess_budget.py``). ``family`` picks the pixel grid (``PIXEL_GRID``: 28 for
Qwen2.5-Omni, patch 14 x merge 2; 32 for Qwen3-Omni, patch 16 x merge 2) and the audio tower's rate:

* video: ``ceil(T / 2) * (H / g) * (W / g)`` tokens for ``T`` frames of ``H x W`` on the grid ``g`` (2x2 merge,
  2 frames per temporal patch);
* audio: Whisper frames ``L = ceil(samples / 160)`` (16 kHz, at most 300 s), then Qwen2.5-Omni's two stride-2
  stages: ``((L - 1) // 2 + 1 - 2) // 2 + 1`` tokens, 25 per second; Qwen3-Omni: 13 tokens per 100 frames
  plus three stride-2 stages over the rest. The audio sits between ``<|audio_bos|>`` and ``<|audio_eos|>``
  (2 more tokens), inside the video block with ``use_audio_in_video``, after it without;
* image: ``(H / g) * (W / g)`` tokens (one temporal patch);
* text: the system prompt, the question (with its lettered options) and the chat template's words
  (``TEMPLATE_TEXT``) tokenized separately (special tokens separate them in the template), plus its
  ``TEMPLATE_SPECIAL_TOKENS`` markers; 15 tokens of template with the Qwen2 BPE.

Without a tokenizer the text is estimated from its characters (``estimate_text_tokens``): an upper bound of
the Qwen2 BPE count on the texts we measured, about 1.6x the real count on English (264 vs 166 tokens for
the default system prompt and a Social-IQ question).

Fitting a video (``fit_video``): qwen-omni-utils' own choice of frames and size is kept when it fits. Else
frames are kept first (up to that choice) at no fewer than ``min_frame_tokens`` tokens per frame pair, then
the frame size grows into what is left; when even the fewest frames (``n_min``) do not fit at that size, the
frames shrink below it down to one 28x28 cell. Frames always span the whole clip (the caller samples them
uniformly) and the audio is never cut, so a clip whose audio and text alone exceed the budget cannot fit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

GRID = 28  # frame sides are multiples of this (Qwen2.5-Omni: patch 14 x merge 2)
PIXEL_GRID = {"qwen2_5_omni": GRID, "qwen3_omni": 32}  # per family (Qwen3-Omni: patch 16 x merge 2)
DEFAULT_FAMILY = "qwen2_5_omni"
FRAMES_PER_GRID = 2  # frames per temporal patch
# <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|vision_bos|>{media}<|vision_eos|>{question}<|im_end|>\n
# <|im_start|>assistant\n : 7 special tokens, and these words between them
TEMPLATE_SPECIAL_TOKENS = 7
TEMPLATE_TEXT = ("system\n", "\n", "user\n", "\n", "assistant\n")
AUDIO_IN_VIDEO_TOKENS = 2  # <|audio_bos|> <|audio_eos|> around a video's audio (inside or after its block)
DEFAULT_MAX_PROMPT_TOKENS = 2048  # = max_prompt_length of configs/stage4.yaml
MIN_FRAME_TOKENS = 32  # under a budget, frames keep at least this many tokens per pair (~112x224)
HOP = 160  # Whisper feature hop at 16 kHz
MAX_FEATURE_FRAMES = 30000  # 300 s


class BudgetError(ValueError):
    """A sample that cannot fit the budget; the message says by how much and what to change."""


@dataclass(frozen=True)
class PromptBudget:
    """The most prompt tokens a sample may take, and the text tokens its longest question takes."""

    max_tokens: int
    text_tokens: int
    min_frame_tokens: int = MIN_FRAME_TOKENS
    family: str = DEFAULT_FAMILY


def pixel_grid(family: str = DEFAULT_FAMILY) -> int:
    """The side, in pixels, that frame and image sides of ``family`` are multiples of (one merged token)."""
    if family not in PIXEL_GRID:
        raise ValueError(f"unknown model family {family!r}; choose one of {sorted(PIXEL_GRID)}")
    return PIXEL_GRID[family]


def audio_tokens(n_samples: int | None, family: str = DEFAULT_FAMILY) -> int:
    """Audio placeholder tokens for ``n_samples`` of 16 kHz audio (0 for none)."""
    if not n_samples:
        return 0
    frames = min(math.ceil(n_samples / HOP), MAX_FEATURE_FRAMES)
    pixel_grid(family)  # a known family
    if family == "qwen3_omni":  # 100-frame windows of 13 tokens, then three stride-2 stages over the rest
        rest = frames % 100
        tail = (((rest - 1) // 2 + 1 - 1) // 2 + 1 - 1) // 2 + 1 if rest else 0
        return tail + frames // 100 * 13
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


def grid_tokens(height: int, width: int, family: str = DEFAULT_FAMILY) -> int:
    """Tokens of one temporal patch (two frames, or one image) of ``height x width``."""
    grid = pixel_grid(family)
    return (height // grid) * (width // grid)


def video_tokens(n_frames: int, height: int, width: int, family: str = DEFAULT_FAMILY) -> int:
    return math.ceil(n_frames / FRAMES_PER_GRID) * grid_tokens(height, width, family)


def media_tokens(
    modality: str,
    n_frames: int = 0,
    height: int = 0,
    width: int = 0,
    audio_samples: int | None = None,
    family: str = DEFAULT_FAMILY,
) -> int:
    """Prompt tokens of a sample's media (``modality`` video / audio / image), audio counted when present."""
    if modality == "image":
        return grid_tokens(height, width, family)
    audio = audio_tokens(audio_samples, family)
    if modality == "audio":
        return audio
    return video_tokens(n_frames, height, width, family) + (audio + AUDIO_IN_VIDEO_TOKENS if audio else 0)


_PIECE = re.compile(r"[A-Za-z]+|\d|\s+|[\x21-\x7e]|[^\x00-\x7f]")


def estimate_text_tokens(text: str) -> int:
    """A character-based upper estimate of the Qwen2 BPE token count of ``text``.

    ASCII letter runs: one token per 3 letters (rounded up); digits: one each (Qwen2 splits digits);
    other ASCII symbols: one each; a single space before a word is free, other whitespace runs one token;
    every other character: its UTF-8 byte count (a byte-level BPE never needs more).
    """
    total = 0
    for m in _PIECE.finditer(text):
        piece = m.group(0)
        if piece[0].isascii() and piece[0].isalpha():
            total += -(-len(piece) // 3)
        elif piece.isspace():
            total += 0 if piece == " " else 1
        elif piece.isascii():
            total += 1
        else:
            total += len(piece.encode("utf-8"))
    return total


class TextCounter:
    """Text tokens of a prompt (system prompt + question + template), exactly with ``tokenizer_dir``
    (a local model or processor folder) or by ``estimate_text_tokens``."""

    def __init__(self, system_prompt: str, tokenizer_dir=None):
        self._tokenizer = None
        if tokenizer_dir is not None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        self.exact = self._tokenizer is not None
        self.fixed_tokens = (
            TEMPLATE_SPECIAL_TOKENS + sum(self._count(t) for t in TEMPLATE_TEXT) + self._count(system_prompt)
        )

    def _count(self, text: str) -> int:
        if self._tokenizer is None:
            return estimate_text_tokens(text)
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def count(self, question_text: str) -> int:
        """Text tokens of a prompt whose user turn holds ``question_text`` (options already formatted)."""
        return self.fixed_tokens + self._count(question_text)


def fit_video(
    n_planned: int,
    size_planned: tuple[int, int],
    source_size: tuple[int, int],
    fixed_tokens: int,
    budget: PromptBudget,
    n_min: int,
    resize,
) -> tuple[int, tuple[int, int]]:
    """Frame count and ``(H, W)`` whose video tokens fit ``budget.max_tokens - fixed_tokens``.

    ``(n_planned, size_planned)`` is qwen-omni-utils' choice (on the family's grid), kept when it fits; ``n_min``
    the fewest frames (even); ``resize(h, w, max_pixels)`` the grid-aligned, aspect-keeping size of a
    ``source_size`` frame under ``max_pixels`` (``smart_resize``). Raises ``BudgetError`` when even ``n_min``
    frames of one cell do not fit.
    """
    family, cell = budget.family, pixel_grid(budget.family) ** 2
    room = budget.max_tokens - fixed_tokens
    if video_tokens(n_planned, *size_planned, family) <= room:
        return n_planned, size_planned
    pairs_min = math.ceil(n_min / FRAMES_PER_GRID)
    smallest = resize(*source_size, cell)
    least = pairs_min * grid_tokens(*smallest, family)
    if room < least:
        raise BudgetError(
            f"needs at least {fixed_tokens + least} tokens ({least} for {n_min} frames of {smallest[1]}x{smallest[0]})"
        )
    pairs_max = math.ceil(n_planned / FRAMES_PER_GRID)
    pairs = max(pairs_min, min(pairs_max, room // budget.min_frame_tokens))
    per_pair = min(room // pairs, grid_tokens(*size_planned, family))
    size = resize(*source_size, per_pair * cell)
    if grid_tokens(*size, family) > per_pair:  # a very thin frame: each side is at least one cell
        size = smallest
    pairs = min(pairs_max, room // grid_tokens(*size, family))
    return min(n_planned, pairs * FRAMES_PER_GRID), size
