"""llmrl: a JAX research framework from language models to RLHF chat assistants."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "tensorflow-datasets>=4.9.10,<4.10",
    "array-record>=0.8.6,<0.9",
    "sentencepiece>=0.2.3,<0.3",
    "absl-py>=2.5,<3",
    "ml-collections>=1.1,<2",
    "grain>=0.2.18,<0.3",
    "numpy>=2.4,<3",
    "matplotlib>=3.11,<4",
    "tensorboardX>=2.6.5,<3",
    "safetensors>=0.8,<0.9",
    "importlib_resources>=6",  # tfds needs it to prepare registered TFDS datasets
    "gymnax>=1.0.1,<2",  # any gymnax environment by name in RL configs
]

EXTRAS = {
    # Parity references (CPU torch from the local wheel, never a CUDA build) and tools.
    "test": [
        "pytest>=9,<10",
        "torch==2.13.0",
        "transformers>=5.23,<6",
        "ruff>=0.17,<0.18",
        "peft>=0.21,<0.22",  # LoRA adapter parity reference
    ],
}

setup(
    name="llmrl",
    version="0.1.0",
    description="JAX research framework: transformers, scaling laws, MoE, PEFT, RL and RLHF.",
    packages=find_packages(include=["llmrl", "llmrl.*", "experiments"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
