"""Model families behind one interface: `detect_family(checkpoint)` names it, `get_module(family)` builds its
adapter. Re-exports the input container (`models.inputs`) and the two passes every caller uses: `generate`
(`models.sampling`) and `log_probs` (`models.logprobs`: the forward of `models.shared_prompt`, then the
vocabulary head of `models.head_logprobs`)."""

from __future__ import annotations

import json
from pathlib import Path

from omni_grpo.models.base import OmniModule
from omni_grpo.models.inputs import EncodedMedia, ModelInputs
from omni_grpo.models.logprobs import log_probs
from omni_grpo.models.sampling import Completions, generate

_MODEL_TYPES = {
    "qwen2_5_omni": "qwen2_5_omni",
    "qwen2_5_omni_thinker": "qwen2_5_omni",
    "qwen3_omni_moe": "qwen3_omni",
    "qwen3_omni_moe_thinker": "qwen3_omni",
}
FAMILIES = ("qwen2_5_omni", "qwen3_omni")


def detect_family(model_dir) -> str:
    """The family of a checkpoint directory, from its config.json `model_type`."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config} not found: model_name_or_path must be a checkpoint directory")
    model_type = json.loads(config.read_text()).get("model_type", "")
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"{model_dir}: model_type {model_type!r} is not supported; supported: {sorted(_MODEL_TYPES)}")
    return _MODEL_TYPES[model_type]


def get_module(family: str) -> OmniModule:
    """The model module for `family` ("qwen2_5_omni" or "qwen3_omni")."""
    if family == "qwen2_5_omni":
        from omni_grpo.models.qwen2_5_omni import Qwen25OmniModule

        return Qwen25OmniModule()
    if family == "qwen3_omni":
        from omni_grpo.models.qwen3_omni import Qwen3OmniModule

        return Qwen3OmniModule()
    raise ValueError(f"unknown model family {family!r}; choose one of {FAMILIES}")


__all__ = [
    "Completions",
    "EncodedMedia",
    "ModelInputs",
    "OmniModule",
    "detect_family",
    "get_module",
    "generate",
    "log_probs",
    "FAMILIES",
]
