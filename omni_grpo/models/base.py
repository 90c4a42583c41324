"""The model-module interface and the one container that carries a batch's inputs.

Every pass over a batch — generation, policy log-probs, reference log-probs, old-policy log-probs — takes
the same :class:`ModelInputs`, built once per batch by :meth:`OmniModule.build_inputs`. Nothing downstream
re-derives media tensors or the ``use_audio_in_video`` flag (lessons 1, 5, 6 in ``shared/lessons.md``).

Media bookkeeping is per row: ``video_rows[k]`` / ``audio_rows[k]`` say which prompt row the k-th video /
audio belongs to, and ``select(rows)`` copies whole per-video patch blocks, so G copies of a prompt get G
identical inputs (lesson 9: ``repeat_interleave`` on flattened patches scrambles them).

Encode once: when the towers are frozen, :func:`encode_media` runs the vision and audio towers once per
prompt, and the embeddings travel inside the ``ModelInputs`` (``encoded``) to generation and every
log-prob pass, which then splice them into the token embeddings instead of running the towers again.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import Cache, DynamicLayer

MEDIA_FIELDS = (
    "pixel_values_videos",
    "video_grid_thw",
    "video_second_per_grid",
    "input_features",
    "feature_attention_mask",
)


@dataclass
class EncodedMedia:
    """Tower outputs for one batch: one tensor per video / audio, in the order of ``ModelInputs``."""

    video: list[torch.Tensor]  # each [n_video_tokens_k, H]
    audio: list[torch.Tensor]  # each [n_audio_tokens_k, H]
    dummy: torch.Tensor | None = None  # scalar 0 carrying a ZeRO-3 sync pass through an unused tower
    # Per video, vision features the language model adds to early layers (Qwen3-Omni's deepstack); else empty.
    video_deepstack: list[torch.Tensor] = field(default_factory=list)  # each [levels, n_video_tokens_k, H]

    def select(self, video_idx: list[int], audio_idx: list[int]) -> "EncodedMedia":
        deepstack = [self.video_deepstack[i] for i in video_idx] if self.video_deepstack else []
        return EncodedMedia([self.video[i] for i in video_idx], [self.audio[i] for i in audio_idx], self.dummy,
                            deepstack)


@dataclass
class ModelInputs:
    """Prompt ids, every media tensor, and the one ``use_audio_in_video`` value for a batch of prompts.

    Shapes (B prompt rows, P prompt length, V videos, A audios):
      input_ids, attention_mask: [B, P], left-padded.
      pixel_values_videos: [sum_k T_k*H_k*W_k, C*tp*p*p] patches of video 0, then video 1, ...
      video_grid_thw: [V, 3]; video_second_per_grid: [V]; video_rows: [V] (row of each video).
      input_features: [A, mel, F]; feature_attention_mask: [A, F]; audio_rows: [A].
      prompt_index: [B] or None: rows with the same value are copies of one prompt (same ids and media), as
        `repeat` and `select` make them; None means every row is its own prompt.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    use_audio_in_video: bool
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    video_second_per_grid: torch.Tensor | None = None
    input_features: torch.Tensor | None = None
    feature_attention_mask: torch.Tensor | None = None
    video_rows: list[int] = field(default_factory=list)
    audio_rows: list[int] = field(default_factory=list)
    encoded: EncodedMedia | None = None
    prompt_index: list[int] | None = None

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

    def _video_patch_offsets(self) -> list[int]:
        sizes = self.video_grid_thw.prod(-1).tolist() if self.video_grid_thw is not None else []
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + int(s))
        return offsets

    def select(self, rows: list[int]) -> "ModelInputs":
        """The inputs of `rows` (repeats allowed), media copied per whole video/audio in the new row order."""
        rows = list(rows)
        video_idx = [k for r in rows for k, vr in enumerate(self.video_rows) if vr == r]
        video_rows = [i for i, r in enumerate(rows) for vr in self.video_rows if vr == r]
        audio_idx = [k for r in rows for k, ar in enumerate(self.audio_rows) if ar == r]
        audio_rows = [i for i, r in enumerate(rows) for ar in self.audio_rows if ar == r]
        index = torch.tensor(rows, dtype=torch.long, device=self.input_ids.device)
        new = dataclasses.replace(
            self,
            input_ids=self.input_ids[index],
            attention_mask=self.attention_mask[index],
            video_rows=video_rows,
            audio_rows=audio_rows,
            encoded=self.encoded.select(video_idx, audio_idx) if self.encoded is not None else None,
            prompt_index=[self.prompt_index[r] if self.prompt_index is not None else r for r in rows],
        )
        if self.pixel_values_videos is not None:
            off = self._video_patch_offsets()
            blocks = [self.pixel_values_videos[off[k] : off[k + 1]] for k in video_idx]
            new.pixel_values_videos = torch.cat(blocks) if blocks else self.pixel_values_videos[:0]
            new.video_grid_thw = self.video_grid_thw[video_idx]
            new.video_second_per_grid = self.video_second_per_grid[video_idx]
        if self.input_features is not None:
            new.input_features = self.input_features[audio_idx]
            new.feature_attention_mask = self.feature_attention_mask[audio_idx]
        return new

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
        enc = self.encoded
        if enc is not None:
            enc = EncodedMedia([move(v) for v in enc.video], [move(a) for a in enc.audio], move(enc.dummy),
                               [move(d) for d in enc.video_deepstack])
        return dataclasses.replace(self, encoded=enc, **kw)

    def media_kwargs(self) -> dict:
        """The keyword arguments a Hugging Face thinker forward / generate takes for these media."""
        kw = {name: getattr(self, name) for name in MEDIA_FIELDS if getattr(self, name) is not None}
        kw["use_audio_in_video"] = self.use_audio_in_video
        return kw


@dataclass
class Completions:
    """G sampled completions per prompt, right-padded after the first stop token.

    completion_ids, completion_mask: [B*G, C]; row i*G + j is completion j of prompt i.
    truncated: [B*G] bool, True where no stop token was produced within the length budget.
    log_probs: [B*G, C] or None: log-probability of each sampled token under the distribution it was drawn
      from (after every logits processor), when `generate(..., return_log_probs=True)`.
    """

    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    truncated: torch.Tensor
    log_probs: torch.Tensor | None = None


@dataclass
class TowerCounter:
    """Counts tower forward calls (the encode-once saving is visible in `counters/tower_calls`)."""

    vision: int = 0
    audio: int = 0

    @property
    def total(self) -> int:
        return self.vision + self.audio


class OmniModule:
    """What the trainer needs to know about one model family. Subclasses fill in the class attributes.

    The trainer never branches on the family: it calls these methods and the generic functions below.
    """

    family: str = ""
    vision_tower: str = "model.visual"  # dotted path from the thinker
    audio_tower: str = "model.audio_tower"
    language_model: str = "model.language_model"
    media_token_names: tuple[str, ...] = ()  # tokens that must never be generated
    stop_token_names: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")

    def __init__(self, sync_towers: bool = False):
        self.tower_calls = TowerCounter()
        # Under ZeRO-3 with several ranks every rank must run every tower each pass (lesson 10).
        self.sync_towers = sync_towers

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


def forward_hidden(module: OmniModule, model, inputs: ModelInputs, completion_ids: torch.Tensor,
                   completion_mask: torch.Tensor, share_prompt: bool = True) -> torch.Tensor:
    """Last hidden states [N, C, H] that predict each completion token (N = rows of `inputs`).

    With `share_prompt`, rows that are copies of one prompt (`inputs.prompt_index`, set by `repeat`) run the
    prompt through the language model once: its per-layer keys/values are reused by each row's completion
    (:func:`_shared_prompt_hidden`), and its embeddings, media splice and TMRoPE positions are computed once.
    Same result up to float rounding; the prompt costs 1/G of the compute and activation memory, with
    gradient flowing into the shared prompt pass.
    """
    thinker = base_thinker(model)
    lm = _getattr_path(thinker, module.language_model)
    prompt_len = inputs.input_ids.shape[1]
    mask = torch.cat([inputs.attention_mask, completion_mask.to(inputs.attention_mask.dtype)], dim=1)  # [N, P+C]
    if share_prompt and completion_ids.shape[1] > 0:
        first, inverse = inputs.distinct_prompts()
        if len(first) < inputs.batch_size:
            return _shared_prompt_hidden(module, thinker, lm, inputs, completion_ids, mask, first, inverse)
    ids = torch.cat([inputs.input_ids, completion_ids], dim=1)
    lm_inputs = module.language_model_inputs(model, inputs, ids, mask)
    out = lm(**lm_inputs, attention_mask=mask, use_cache=False)
    return out.last_hidden_state[:, prompt_len - 1 : -1]  # position t predicts token t+1


def prompt_model_inputs(module: OmniModule, thinker, prompts: ModelInputs, slots: torch.Tensor) -> tuple:
    """Language-model inputs of `prompts` (one row per distinct prompt) with room for completions.

    `slots` [B, C] are token ids standing in for the completion: a text token's position does not depend on
    which token it is, so the positions of every completion of a prompt are known from one row. Returns
    (prompt embeddings [B, P, H], positions [..., B, P+C], attention mask [B, P+C] with the slots on, the
    prompt part of any further language-model arguments), all from the module's own `language_model_inputs`
    (media spliced, TMRoPE with the flag).
    """
    p = prompts.input_ids.shape[1]
    ids = torch.cat([prompts.input_ids, slots], dim=1)
    mask = torch.cat([prompts.attention_mask, torch.ones_like(slots, dtype=prompts.attention_mask.dtype)], dim=1)
    kw = module.language_model_inputs(thinker, prompts, ids, mask)
    embeds, positions = kw.pop("inputs_embeds"), kw.pop("position_ids")
    prompt_kw = module.prompt_kwargs(kw, p)
    return embeds[:, :p], positions, mask, prompt_kw


class _PromptLayer(DynamicLayer):
    """Prompt pass: keeps the layer's keys/values for the completions. Stores by replacing (not appending),
    so the recompute of a checkpointed layer in backward leaves it as it was."""

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys, self.values, self.is_initialized = key_states, value_states, True
        return key_states, value_states

    def get_seq_length(self) -> int:
        return 0  # nothing before the prompt


class _PrefixLayer(DynamicLayer):
    """Completion pass: the prompt's keys/values (one copy per row) in front of the new ones. Stores nothing,
    so a checkpoint recompute sees the same prefix."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.is_initialized = keys, values, True
        self.dtype, self.device = keys.dtype, keys.device

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


@contextmanager
def _replay_safe_cache(layers):
    """Let checkpointed decoder layers keep the cache argument: transformers drops it under gradient
    checkpointing because a normal cache would grow again on the recompute; ours do not."""
    flagged = [layer for layer in layers if hasattr(layer, "_can_checkpoint_with_cache")]
    for layer in flagged:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer in flagged:
            del layer._can_checkpoint_with_cache  # back to the class attribute


def _shared_prompt_hidden(module: OmniModule, thinker, lm, inputs: ModelInputs, completion_ids: torch.Tensor,
                          mask: torch.Tensor, first: list[int], inverse: torch.Tensor) -> torch.Tensor:
    """`forward_hidden` with each distinct prompt run once: embeddings and positions for the `first` rows only
    (towers and TMRoPE once per prompt), a prompt pass recording every layer's keys/values, then one
    completion pass over all rows attending to their prompt's copy."""
    p = inputs.input_ids.shape[1]
    prompts = inputs.select(first)
    embeds, positions, _, prompt_kw = prompt_model_inputs(module, thinker, prompts, completion_ids[first])
    prompt_cache = Cache(layers=[_PromptLayer() for _ in lm.layers])
    with _replay_safe_cache(lm.layers):
        prompt = lm(inputs_embeds=embeds, position_ids=positions[..., :p], attention_mask=prompts.attention_mask,
                    past_key_values=prompt_cache, use_cache=False, **prompt_kw)
        prefix = Cache(layers=[_PrefixLayer(layer.keys[inverse], layer.values[inverse]) for layer in prompt_cache.layers])
        out = lm(inputs_embeds=thinker.get_input_embeddings()(completion_ids), position_ids=positions[..., inverse, p:],
                 attention_mask=mask, past_key_values=prefix, use_cache=False)
    last_prompt = prompt.last_hidden_state[inverse, p - 1 : p]  # predicts the first completion token
    return torch.cat([last_prompt, out.last_hidden_state[:, :-1]], dim=1)


BANNED_LOGIT = -1e30  # exp() of it is exactly 0 in float32, and 0 * it is 0 (no NaN in the entropy)


def _scored_logits(logits: torch.Tensor, temperature: float, banned: torch.Tensor | None) -> torch.Tensor:
    """The logits of the distribution the sampler draws from: divided by the temperature, media tokens removed.

    `generate` bans the media tokens and then divides by T (Hugging Face's order); the banned entries are
    removed here after the division, so they carry no probability mass, exactly as in sampling.
    """
    logits = logits / temperature
    if banned is not None and banned.numel():
        logits = logits.index_fill(-1, banned, BANNED_LOGIT)
    return logits


def _chunk_logprobs(lm_head, hidden, targets, temperature: float, with_entropy: bool, banned=None):
    logits = _scored_logits(lm_head(hidden).float(), temperature, banned)  # [n, c, V] for one chunk only
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
    if not with_entropy:
        return logp, torch.zeros_like(logp)
    probs = torch.softmax(logits, dim=-1)
    entropy = logz - (probs * logits).sum(-1)
    return logp, entropy


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16 logits lose too much for log-softmax)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _FrozenHeadLogProbs(torch.autograd.Function):
    """Log-probs and entropy of one chunk through a frozen output projection `weight` [V, H].

    Saves only the chunk's hidden states and a reference to the weight, recomputes the logits in backward
    and returns the gradient for the hidden states (the weight gets none). Used when `lm_head` is frozen
    (LoRA): under ZeRO-3 a frozen module is not re-gathered when torch's checkpoint recomputes it, so the
    weight is gathered once by the caller and kept alive by this reference until backward.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, with_entropy, banned):
        logits = _scored_logits(_upcast(hidden @ weight.t()), temperature, banned)  # [n, c, V]
        logz = torch.logsumexp(logits, dim=-1)
        logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
        entropy = logz - (torch.softmax(logits, dim=-1) * logits).sum(-1) if with_entropy else torch.zeros_like(logp)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature, ctx.banned = temperature, banned
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets = ctx.saved_tensors
        logits = _scored_logits(_upcast(hidden @ weight.t()), ctx.temperature, ctx.banned)
        probs = torch.softmax(logits, dim=-1)  # exactly 0 at banned tokens, so they get no gradient
        grad_logp = grad_logp.to(logits.dtype)
        grad_entropy = None if grad_entropy is None else grad_entropy.to(logits.dtype)
        # d logp / d logits = onehot(target) - p
        dlogits = -probs * grad_logp.unsqueeze(-1)
        dlogits.scatter_add_(-1, targets.unsqueeze(-1), grad_logp.unsqueeze(-1))
        if grad_entropy is not None:
            # d entropy / d logit_j = -p_j (logit_j - E_p[logit])
            mean = (probs * logits).sum(-1, keepdim=True)
            dlogits -= probs * (logits - mean) * grad_entropy.unsqueeze(-1)
        grad_hidden = (dlogits / ctx.temperature).to(weight.dtype) @ weight
        return grad_hidden.to(hidden.dtype), None, None, None, None, None


@contextmanager
def _whole_weight(param):
    """The full tensor of `param`, gathered for the block under ZeRO-3 (a plain parameter is already whole)."""
    if hasattr(param, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([param]):
            yield param.data
    else:
        yield param.detach()


def log_probs(module: OmniModule, model, inputs: ModelInputs, completion_ids: torch.Tensor,
              completion_mask: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False,
              chunk_size: int = 256, share_prompt: bool = True, banned_token_ids: list[int] | None = None):
    """Per-token log-probs (and entropies) of the completion tokens: ([N, C], [N, C] or None).

    Scored under the distribution `generate` samples from: logits divided by `temperature` (the rollout's)
    and `banned_token_ids` (the media tokens, `OmniModule.banned_token_ids`) removed from the normaliser.
    With top_k = 0, top_p = 1 and no repetition penalty this is exactly the sampler's log-probability of each
    token (to float rounding), so the policy gradient is the gradient of the policy that sampled. The entropy
    is that distribution's entropy.

    Gradient flows when called under grad mode. The vocabulary projection runs per chunk of `chunk_size`
    positions and is recomputed in backward, so `[N, C, V]` float32 logits never exist at once (Qwen's
    vocabulary is 152k: one 1k-token completion would otherwise cost 0.6 GB per row). A trainable `lm_head`
    is called as a module under activation checkpointing (so ZeRO-3's hooks gather it); a frozen one goes
    through `_FrozenHeadLogProbs`. `share_prompt`: see :func:`forward_hidden`.
    """
    hidden = forward_hidden(module, model, inputs, completion_ids, completion_mask, share_prompt)  # [N, C, H]
    lm_head = base_thinker(model).lm_head
    banned = (torch.tensor(banned_token_ids, dtype=torch.long, device=hidden.device)
              if banned_token_ids else None)
    if getattr(lm_head, "bias", None) is not None:
        raise NotImplementedError("an lm_head with a bias is not supported")
    head_trains = any(p.requires_grad for p in lm_head.parameters())
    grad = torch.is_grad_enabled() and (hidden.requires_grad or head_trains)
    pieces_lp, pieces_ent = [], []
    chunks = [(s, hidden[:, s : s + chunk_size], completion_ids[:, s : s + chunk_size])
              for s in range(0, hidden.shape[1], chunk_size)]
    if grad and head_trains:
        for _, h, t in chunks:
            lp, ent = checkpoint(_chunk_logprobs, lm_head, h, t, temperature, with_entropy, banned,
                                 use_reentrant=False)
            pieces_lp.append(lp)
            pieces_ent.append(ent)
    elif grad:
        with _whole_weight(lm_head.weight) as weight:
            for _, h, t in chunks:
                lp, ent = _FrozenHeadLogProbs.apply(h, weight, t, temperature, with_entropy, banned)
                pieces_lp.append(lp)
                pieces_ent.append(ent)
    else:
        for _, h, t in chunks:
            lp, ent = _chunk_logprobs(lm_head, h, t, temperature, with_entropy, banned)
            pieces_lp.append(lp)
            pieces_ent.append(ent)
    lp = torch.cat(pieces_lp, dim=1)
    ent = torch.cat(pieces_ent, dim=1) if with_entropy else None
    return lp, ent


def sampling_processors(module: OmniModule, tokenizer, prompt_length: int, temperature: float = 1.0,
                        top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0, do_sample: bool = True,
                        min_new_tokens: int = 0):
    """Hugging Face's logits processors for our sampling arguments, in Hugging Face's order.

    `GenerationMixin._get_logits_processor` applies: repetition penalty, min-new-tokens (stop tokens banned),
    suppressed tokens (the media tokens), then the warpers temperature, top-k, top-p. Banning the stop tokens
    before top-k matters: after it, a stop token inside the top k would leave only k − 1 candidates.
    `prompt_length` is the width of the prompt ids the processors see before the first new token.
    """
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        SuppressTokensLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if min_new_tokens > 0:
        processors.append(MinNewTokensLengthLogitsProcessor(prompt_length, min_new_tokens,
                                                            module.stop_token_ids(tokenizer)))
    banned = module.banned_token_ids(tokenizer)
    if banned:
        processors.append(SuppressTokensLogitsProcessor(banned))
    if do_sample:
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_k:
            processors.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p))
    return processors


def generate(module: OmniModule, model, processor, inputs: ModelInputs, num_generations: int,
             max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             repetition_penalty: float = 1.0, do_sample: bool = True, min_new_tokens: int = 0,
             return_log_probs: bool = False) -> Completions:
    """G completions per prompt, sampled as one batch; media tokens banned; each row stops at `<|im_end|>`.

    `inputs` holds the B prompts; rows of the result are grouped: row i*G + j is sample j of prompt i.
    Each prompt is prefilled once (B rows, not B*G) and its keys/values copied to its G rows, and only the
    last position is projected onto the vocabulary. The token loop is ours rather than the thinker's
    `generate`: the thinkers' forward has no `logits_to_keep` (their prefill would compute [B*G, P, V]
    logits) and would prefill every copy. Sampling follows Hugging Face's processors in Hugging Face's order
    (:func:`sampling_processors`); only the arguments given here apply, not the checkpoint's
    generation_config. Positions come from the module (`language_model_inputs` over the prompt plus
    `max_new_tokens` text slots), so TMRoPE and the `use_audio_in_video` flag are the ones every log-prob
    pass uses. `min_new_tokens`: stop tokens are banned before that many tokens (benchmarks).
    `return_log_probs`: also return each sampled token's log-probability under the processed distribution.
    """
    from transformers.cache_utils import DynamicCache

    tokenizer = processor.tokenizer
    thinker = base_thinker(model)
    lm = _getattr_path(thinker, module.language_model)
    stop_ids, pad_id = module.stop_token_ids(tokenizer), module.pad_token_id(tokenizer)
    b, p = inputs.input_ids.shape
    device = inputs.input_ids.device
    if max_new_tokens < 1:
        empty = inputs.input_ids.new_zeros((b * num_generations, 0))
        return finish_completions(empty, stop_ids, pad_id)
    slots = inputs.input_ids.new_full((b, max_new_tokens), pad_id)
    embeds, positions, mask, prompt_kw = prompt_model_inputs(module, thinker, inputs, slots)
    cache = DynamicCache(config=lm.config)
    out = lm(inputs_embeds=embeds, position_ids=positions[..., :p], attention_mask=inputs.attention_mask,
             past_key_values=cache, use_cache=True, **prompt_kw)
    rows = torch.arange(b, device=device).repeat_interleave(num_generations)
    cache.batch_repeat_interleave(num_generations)
    hidden = out.last_hidden_state[rows, -1]  # [N, H]
    positions, mask = positions[..., rows, :], mask[rows]

    processors = sampling_processors(module, tokenizer, p, temperature, top_p, top_k, repetition_penalty,
                                     do_sample, min_new_tokens)
    stops = torch.tensor(stop_ids, device=device)
    seen = inputs.input_ids[rows]  # prompt + tokens so far (the repetition penalty reads them)
    done = torch.zeros(rows.shape[0], dtype=torch.bool, device=device)
    embed_tokens = thinker.get_input_embeddings()
    tokens, token_log_probs = [], []
    for t in range(max_new_tokens):
        scores = processors(seen, thinker.lm_head(hidden).float())
        if do_sample:
            token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            token = scores.argmax(dim=-1)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        if return_log_probs:
            token_log_probs.append(torch.log_softmax(scores, dim=-1).gather(-1, token[:, None]).squeeze(1))
        tokens.append(token)
        done |= torch.isin(token, stops)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        seen = torch.cat([seen, token[:, None]], dim=1)
        step = lm(inputs_embeds=embed_tokens(token[:, None]), position_ids=positions[..., p + t : p + t + 1],
                  attention_mask=mask[:, : p + t + 1], past_key_values=cache, use_cache=True)
        hidden = step.last_hidden_state[:, -1]
    out = finish_completions(torch.stack(tokens, dim=1), stop_ids, pad_id)
    if return_log_probs:
        out.log_probs = torch.stack(token_log_probs, dim=1).masked_fill(~out.completion_mask.bool(), 0.0)
    return out


def finish_completions(completion_ids: torch.Tensor, stop_ids: list[int], pad_id: int) -> Completions:
    """Mask everything after the first stop token (kept), pad it, and flag rows that never stopped.

    `generate` returns fewer than `max_new_tokens` columns only when every row stopped, so a row with no
    stop token is exactly a row that ran out of budget.
    """
    n, c = completion_ids.shape
    is_stop = torch.zeros_like(completion_ids, dtype=torch.bool)
    for s in stop_ids:
        is_stop |= completion_ids == s
    has_stop = is_stop.any(dim=1)
    first_stop = torch.where(has_stop, is_stop.float().argmax(dim=1), torch.full((n,), c, device=is_stop.device))
    positions = torch.arange(c, device=completion_ids.device).unsqueeze(0)
    mask = (positions <= first_stop.unsqueeze(1)).long()  # the stop token itself is scored
    completion_ids = torch.where(mask.bool(), completion_ids, torch.full_like(completion_ids, pad_id))
    return Completions(completion_ids=completion_ids, completion_mask=mask, truncated=~has_stop)
