"""llmrl: a JAX research framework from language models to RLHF-trained chat assistants."""

__version__ = "0.1.0"
